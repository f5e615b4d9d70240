"""The processes of ``intentra bench``: servers, load generators, baselines.

Run as ``python -m intentra.bench.roles ROLE 'JSON-ARGS'``; each role answers
commands on stdin with one JSON line on stdout (see :mod:`intentra.bench.proto`).

Every message the generators send is ``size`` bytes: an 8-byte CLOCK_MONOTONIC
timestamp (nanoseconds, shared by all processes of the machine), an 8-byte
per-peer sequence number, then padding. Receivers count messages, count those
that arrive in order per peer, and, when asked, record one-way latency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from intentra.aio.datapath import SOL_UDP, UDP_SEGMENT, plan_sends, probe_gso
from intentra.bench.measure import (
    STAMP,
    Counter,
    commands,
    counting_server,
    cpu_seconds,
    machine_busy,
    payload,
    rss_kib,
    run_async,
    wait_seconds,
)
from intentra.bench.proto import Json, reply

RAW_BUFFER = 65536
READERS = ("receive", "receive_many", "sink")
"""How the intentra server's application reads: ``receive()`` per message,
``receive_many()`` per batch, or no application at all (``serve --sink``)."""
BATCH = 1024
"""Messages per receive_many() call of the receive_many reader."""
SEGMENTS = 16
"""Datagrams per GSO send of a generator's throughput steps (one peer's in a row)."""
PACE = 0.001
"""Seconds a generator sleeps between bursts of what is due (uvloop's timers count
whole milliseconds: a shorter sleep rounds to none, and the generator would spin)."""
Send = tuple[Callable[..., int], list[bytes], list[tuple[int, int, bytes]], Any]
"""One presealed send: (sock.sendmsg, datagrams, control messages, address)."""
REFUSALS = ("packets_dropped_malformed", "packets_dropped_unknown", "packets_dropped_rate_limit",
            "packets_dropped_crypto", "replay_rejections")
"""Server counters of datagrams refused by the receive path (docs/protocol.md section 11)."""
_SEGMENT = struct.Struct("=H")  # UDP_SEGMENT's control message: a native uint16


def source_ip(index: int, target_host: str) -> str:
    """A loopback source address per peer: 127.0.0.2 ... 127.0.0.201 (IPv4 loopback)."""
    if target_host.startswith("127."):
        return f"127.0.0.{2 + index % 200}"
    return target_host


# ---------------------------------------------------------------- intentra server

def intentra_server(args: Json) -> None:
    from intentra import PrivateKey, Transport  # noqa: PLC0415
    from intentra.config import EndpointConfig  # noqa: PLC0415

    async def main() -> None:
        key = PrivateKey.from_base64(args["key"]) if "key" in args else PrivateKey.generate()
        config = EndpointConfig(**args.get("config", {}))
        sink = bool(args.get("sink", False))
        master = args.get("cookie_master")
        options: dict[str, Any] = {"sink": True} if sink else {}
        if "fd" in args:
            options["sock"] = socket.socket(fileno=int(args["fd"]))
            options["conn_id_class"] = tuple(args["conn_id_class"])
        transport = await Transport.bind(
            args.get("bind", "127.0.0.1:0"), key, config=config, receive_queue_size=1 << 20,
            cookie_master=None if master is None else base64.b64decode(master),
            reuse_port=bool(args.get("reuse_port", False)), **options)
        counter = Counter()
        reader = str(args.get("reader", "sink" if sink else "receive"))

        async def consume() -> None:
            """The application of the fan-in scenario: receive() and count each message."""
            receive_nowait = transport.receive_nowait
            see = counter.see
            clock = time.monotonic_ns
            while True:
                msg = await transport.receive()
                now = clock()
                see(msg.peer, msg.data, now)
                while (msg := receive_nowait()) is not None:  # type: ignore[assignment]
                    see(msg.peer, msg.data, now)

        async def consume_batches() -> None:
            """The same application reading with receive_many(): one await per batch."""
            receive_many = transport.receive_many
            see = counter.see
            clock = time.monotonic_ns
            while True:
                batch = await receive_many(BATCH)
                now = clock()
                for msg in batch:
                    see(msg.peer, msg.data, now)

        if reader not in READERS or (reader == "sink") != sink:
            raise ValueError(f"reader {reader!r} with sink={sink}: expected one of {READERS}")
        task = None if sink else asyncio.ensure_future(
            consume_batches() if reader == "receive_many" else consume())
        reply(ready=True, port=transport.local_address[1], key=key.public_key.to_base64(),
              rss_kib=rss_kib())

        def reset_sink() -> None:
            transport.sink_messages = 0

        def extra(stats: Json) -> None:
            if sink:
                stats["messages"] = stats["in_order"] = transport.sink_messages
            stats["sessions"] = len(transport.peers)
            counts = transport.endpoint.stats
            stats["handshakes"] = counts.handshakes_completed
            # What the receive path refused: a generator whose presealed packets
            # did not authenticate, or repeated a packet number, shows up here.
            stats["refused"] = {name: getattr(counts, name) for name in REFUSALS}
            stats["datapath"] = transport.datapath

        await commands(counting_server(counter, reset_sink, extra))
        if task is not None:
            task.cancel()
        transport.abort()

    run_async(main)


# ---------------------------------------------------------------- raw UDP server

def raw_server(args: Json) -> None:
    """The baseline: a plain, blocking Python loop that counts datagrams."""
    host, port = args.get("bind", "127.0.0.1:0").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    sock.bind((host, int(port)))
    sock.setblocking(False)
    counter = Counter()
    handle = counting_server(counter)
    reply(ready=True, port=sock.getsockname()[1], key="", rss_kib=rss_kib())
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    buffer = bytearray(RAW_BUFFER)
    view = memoryview(buffer)
    recv = sock.recvfrom_into
    clock = time.monotonic_ns
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                see = counter.see
                while True:
                    try:
                        n, addr = recv(buffer)
                    except (BlockingIOError, InterruptedError):
                        break
                    see(addr, view[:n], clock())
                continue
            line = sys.stdin.readline()
            if not line:
                return
            if not handle(json.loads(line)):
                return


# ---------------------------------------------------------------- intentra generator

def intentra_generator(args: Json) -> None:
    """P intentra peers, each its own socket and key, in one process."""
    from intentra import Intent, PrivateKey, PublicKey, Transport  # noqa: PLC0415
    from intentra.config import EndpointConfig  # noqa: PLC0415

    async def main() -> None:
        host, port = args["target"].rsplit(":", 1)
        target = (host, int(port))
        server_key = PublicKey.from_base64(args["server_key"])
        count = int(args.get("peers", 1))
        size = int(args.get("size", 128))
        # The generators seal ahead and replay open-loop (or pace themselves): no
        # congestion controller can govern that, and it is the server under test.
        # The stream scenario's one peer is a real client and asks for it back.
        # And a generator does not judge the server's liveness: a server driven past
        # its capacity answers late (its timers wait behind its socket), and a
        # generator closing its sessions at PEER_TIMEOUT would end the sweep.
        config = EndpointConfig(**{"congestion_control": False, "peer_timeout": 60.0,
                                   **args.get("config", {})})
        gate = asyncio.Semaphore(64)
        transports: list[Any] = [None] * count
        started = time.monotonic()

        async def open_peer(index: int) -> Any:
            async with gate:
                t = await Transport.bind((source_ip(index, host), 0), PrivateKey.generate(),
                                         config=config)
                transports[index] = t
                return await t.connect(target, server_key=server_key)

        peers = await asyncio.gather(*(open_peer(i) for i in range(count)))
        reply(ready=True, connect_seconds=time.monotonic() - started, rss_kib=rss_kib())
        seqs = [0] * count
        buf = payload(size)
        pack_into = STAMP.pack_into
        clock = time.monotonic_ns

        segments = max(1, int(args.get("segments", SEGMENTS)))
        # One GSO send carries up to `segments` datagrams of one peer; where a
        # socket refuses UDP_SEGMENT, that peer's datagrams go one per sendto.
        gso = [probe_gso(t._sock) for t in transports]

        def preseal(total: int, rate: float, intent: Intent) -> list[Send]:
            """Seal ``total`` messages, ``segments`` per peer in turn, before the clock starts.

            Each is a genuine packet of its session, sealed by the session itself
            (its keys, its next packet number): the server does all its work on
            it. Sealing ahead keeps the generator's own cost (about 11 us a
            message, as much as the server's) out of the measurement, and GSO
            sends (one ``sendmsg`` for a peer's run of datagrams) keep the
            sending to a fraction of a microsecond a datagram, where one
            ``sendto`` each costs 2 to 3 us. A plan is sent once and then
            dropped, its unsent tail too: no packet number is ever sent twice
            under one key (the server would count a replay). Message k carries
            its scheduled send time, k / rate after the start, as its stamp
            (``start_ns`` in the reply is the start).
            """
            now = time.monotonic()  # the core's clock, as the Transport's
            code = int(intent)
            plan: list[Send] = []
            n = 0
            i = 0
            while n < total:
                t = transports[i]
                endpoint = t.endpoint
                conn_id = peers[i].conn_id
                out: list[tuple[bytes, Any]] = []
                for _ in range(min(segments, total - n)):
                    seq = seqs[i]
                    seqs[i] = seq + 1
                    pack_into(buf, 0, int(n * 1e9 / rate), seq)
                    endpoint.send(conn_id, bytes(buf), code, 0, now)
                    out += endpoint.datagrams_to_send(now)
                    n += 1
                sendmsg = t._sock.sendmsg
                for parts, size, addr in plan_sends(out, segments if gso[i] else 1):
                    control = [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(size))] \
                        if len(parts) > 1 else []
                    plan.append((sendmsg, parts, control, addr))
                i += 1
                if i == count:
                    i = 0
            return plan

        async def replay_plan(rate: float, duration: float, intent: Intent) -> Json:
            plan = preseal(int(rate * duration) + 1, rate, intent)
            cpu0 = cpu_seconds()
            wait0 = wait_seconds()
            busy0 = machine_busy()
            start = time.monotonic()
            start_ns = clock()
            sent = dropped = calls = 0
            index = 0
            while index < len(plan):
                elapsed = time.monotonic() - start
                if elapsed >= duration:
                    break
                due = int(elapsed * rate)
                while sent < due and index < len(plan):
                    sendmsg, parts, control, addr = plan[index]
                    index += 1
                    try:
                        sendmsg(parts, control, 0, addr)
                    except OSError:
                        dropped += len(parts)
                    sent += len(parts)
                    calls += 1
                # Sleep rather than spin between bursts (at most about a millisecond's
                # worth of datagrams each): the generator's CPU share then shows how
                # much of a core the load costs, next to the server's.
                await asyncio.sleep(PACE)
            return {"sent": sent, "dropped": dropped, "seconds": time.monotonic() - start,
                    "cpu": cpu_seconds() - cpu0, "wait": wait_seconds() - wait0,
                    "machine": machine_busy() - busy0, "start_ns": start_ns, "sends": calls,
                    "segments": segments, "gso_peers": sum(gso)}

        async def paced(rate: float, duration: float, intent: Intent) -> Json:
            loop = asyncio.get_running_loop()
            cpu0 = cpu_seconds()
            wait0 = wait_seconds()
            busy0 = machine_busy()
            start = loop.time()
            sent = dropped = 0
            i = 0
            # The generator drives each peer's sans-I/O endpoint and socket itself
            # (the same seal and send a Transport does) rather than through 1000
            # asyncio flush callbacks: the load generator must not be what limits
            # the measurement. Replies (keepalives) still arrive via the loop.
            lanes = [(t.endpoint, t._sock.sendto, p.conn_id)
                     for t, p in zip(transports, peers, strict=True)]
            code = int(intent)
            while True:
                now = loop.time()
                elapsed = now - start
                if elapsed >= duration:
                    break
                due = min(int(elapsed * rate) - sent, 512)
                for _ in range(due):
                    endpoint, sendto, conn_id = lanes[i]
                    seq = seqs[i]
                    seqs[i] = seq + 1
                    pack_into(buf, 0, clock(), seq)
                    if not endpoint.send(conn_id, bytes(buf), code, 0, now):
                        dropped += 1
                    for data, addr in endpoint.datagrams_to_send(now):
                        try:
                            sendto(data, addr)
                        except OSError:
                            dropped += 1
                    i += 1
                    if i == count:
                        i = 0
                sent += max(due, 0)
                # Spin (one loop turn, no timer): arrivals as smooth as one core
                # can pace them. Timers of 1 ms would send bursts of rate/1000
                # messages, and latency would measure the bursts, not intentra.
                await asyncio.sleep(0)
            seconds = loop.time() - start
            return {"sent": sent, "dropped": dropped, "seconds": seconds,
                    "cpu": cpu_seconds() - cpu0, "wait": wait_seconds() - wait0,
                    "machine": machine_busy() - busy0}

        async def blast(duration: float, intent: Intent) -> Json:
            """One peer (the first) as fast as it can."""
            loop = asyncio.get_running_loop()
            peer = peers[0]
            cpu0 = cpu_seconds()
            start = loop.time()
            sent = dropped = 0
            seq = seqs[0]
            if intent == Intent.RELIABLE:
                while loop.time() - start < duration:
                    chunk = []
                    for _ in range(128):
                        pack_into(buf, 0, clock(), seq)
                        seq += 1
                        chunk.append(bytes(buf))
                    await peer.send_many(chunk, Intent.RELIABLE)  # waits for window room
                    sent += 128
                owner = transports[0]
                while owner.unacked_reliable(peer) > 0:  # delivered means acknowledged
                    await asyncio.sleep(0.001)
            else:
                while loop.time() - start < duration:
                    for _ in range(256):
                        pack_into(buf, 0, clock(), seq)
                        seq += 1
                        if not peer.send_nowait(bytes(buf), Intent.REALTIME):
                            dropped += 1
                    sent += 256
                    await asyncio.sleep(0)
            seqs[0] = seq
            return {"sent": sent, "dropped": dropped, "seconds": loop.time() - start,
                    "cpu": cpu_seconds() - cpu0}

        async def bulk(duration: float) -> Json:
            """One peer sends ``size``-byte RELIABLE messages on lane 1 for ``duration``
            seconds (each waits for window room), then waits until all are acknowledged."""
            loop = asyncio.get_running_loop()
            peer = peers[0]
            cpu0 = cpu_seconds()
            start = loop.time()
            sent = 0
            seq = seqs[0]
            while loop.time() - start < duration:
                pack_into(buf, 0, clock(), seq)
                seq += 1
                await peer.send(bytes(buf), Intent.RELIABLE, lane=1)
                sent += 1
            owner = transports[0]
            while owner.unacked_reliable(peer) > 0:
                await asyncio.sleep(0.001)
            seqs[0] = seq
            return {"sent": sent, "dropped": 0, "seconds": loop.time() - start,
                    "cpu": cpu_seconds() - cpu0}

        async def handle(command: Json) -> bool:
            cmd = command["cmd"]
            if cmd == "quit":
                return False
            if cmd == "bulk":
                reply(**await bulk(float(command["duration"])))
                return True
            intent = Intent[command.get("intent", "realtime").upper()]
            if cmd == "go":
                run = replay_plan if command.get("presealed") else paced
                reply(**await run(float(command["rate"]), float(command["duration"]), intent))
            elif cmd == "blast":
                reply(**await blast(float(command["duration"]), intent))
            else:
                reply(error=f"unknown command {cmd!r}")
            return True

        await commands(handle)
        for t in transports:
            t.abort()

    run_async(main)


# ---------------------------------------------------------------- raw UDP generator

def raw_generator(args: Json) -> None:
    """The baseline sender: P plain sockets, no encryption, no protocol.

    Throughput steps (``presealed``, as the intentra generator's) and the
    stream's ``blast`` send each peer's datagrams ``segments`` at a time with
    one GSO ``sendmsg`` (a timestamp and sequence number written into each,
    nothing else to do), so the baseline measures its receiver, as the intentra
    scenarios do; latency steps send one datagram per ``sendto``, stamped just
    before.
    """
    host, port = args["target"].rsplit(":", 1)
    target = (host, int(port))
    count = int(args.get("peers", 1))
    size = int(args.get("size", 128))
    segments = max(1, int(args.get("segments", SEGMENTS)))
    socks = []
    for index in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source_ip(index, host), 0))
        socks.append(sock)
    gso = [probe_gso(sock) for sock in socks]
    reply(ready=True, connect_seconds=0.0, rss_kib=rss_kib())
    seqs = [0] * count
    size = len(payload(size))
    buf = bytearray(size * segments)
    view = memoryview(buf)
    pack_into = STAMP.pack_into
    clock = time.monotonic_ns
    sendtos = [s.sendto for s in socks]
    sendmsgs = [s.sendmsg for s in socks]
    control = [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(size))]
    for line in sys.stdin:
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "quit":
            return
        duration = float(command["duration"])
        rate = float(command["rate"]) if cmd == "go" else float("inf")
        batched = bool(command.get("presealed")) or cmd != "go"
        cpu0 = cpu_seconds()
        wait0 = wait_seconds()
        busy0 = machine_busy()
        start = time.monotonic()
        sent = errors = calls = 0
        i = 0
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= duration:
                break
            if cmd == "go":
                due = min(int(elapsed * rate) - sent, 1 << 14)
                if due <= 0:
                    time.sleep(PACE if batched else PACE / 2)
                    continue
            else:
                due = 256
            while due > 0:
                n = min(segments, due) if batched and gso[i] else 1
                now = clock()
                seq = seqs[i]
                for k in range(n):
                    pack_into(buf, k * size, now, seq + k)
                seqs[i] = seq + n
                try:
                    if n > 1:
                        sendmsgs[i]([view[:n * size]], control, 0, target)
                    else:
                        sendtos[i](view[:size], target)
                except OSError:
                    errors += n
                calls += 1
                sent += n
                due -= n
                i += 1
                if i == count:
                    i = 0
            if batched and cmd == "go":
                # Sleep after each burst: bursts of about PACE's worth keep the
                # batches whole (a loop that went on would send what fell due
                # meanwhile, a datagram or two at a time).
                time.sleep(PACE)
        reply(sent=sent, dropped=errors, seconds=time.monotonic() - start,
              cpu=cpu_seconds() - cpu0, wait=wait_seconds() - wait0,
              machine=machine_busy() - busy0, sends=calls,
              segments=segments if batched else 1)


# ---------------------------------------------------------------- handshakes

def intentra_handshaker(args: Json) -> None:
    """Complete handshakes against a server as fast as possible, then close each."""
    from intentra import PrivateKey, PublicKey, Transport  # noqa: PLC0415

    async def main() -> None:
        host, port = args["target"].rsplit(":", 1)
        target = (host, int(port))
        server_key = PublicKey.from_base64(args["server_key"])
        sockets = int(args.get("sockets", 64))
        transports = [await Transport.bind((source_ip(i, host), 0), PrivateKey.generate())
                      for i in range(sockets)]
        reply(ready=True, connect_seconds=0.0, rss_kib=rss_kib())

        async def run(duration: float) -> Json:
            loop = asyncio.get_running_loop()
            cpu0 = cpu_seconds()
            start = loop.time()
            done = failed = 0

            async def worker(t: Any) -> None:
                nonlocal done, failed
                while loop.time() - start < duration:
                    try:
                        peer = await t.connect(target, server_key=server_key)
                    except Exception:
                        failed += 1
                        continue
                    done += 1
                    await peer.close(flush_timeout=0)

            await asyncio.gather(*(worker(t) for t in transports))
            return {"handshakes": done, "failed": failed, "seconds": loop.time() - start,
                    "cpu": cpu_seconds() - cpu0}

        async def handle(command: Json) -> bool:
            if command["cmd"] == "quit":
                return False
            reply(**await run(float(command["duration"])))
            return True

        await commands(handle)
        for t in transports:
            t.abort()

    run_async(main)


ROLES: dict[str, Callable[[Json], None]] = {
    "intentra-server": intentra_server,
    "raw-server": raw_server,
    "intentra-generator": intentra_generator,
    "raw-generator": raw_generator,
    "intentra-handshaker": intentra_handshaker,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    role = argv[0]
    args: Json = json.loads(argv[1]) if len(argv) > 1 else {}
    if role.startswith("quic-"):
        from intentra.bench import quic  # noqa: PLC0415 - aioquic is an optional extra

        quic.ROLES[role](args)
        return
    runner = ROLES.get(role)
    if role.startswith("cluster-"):  # profiled too: the bus's cost is what to look at
        from intentra.bench import cluster  # noqa: PLC0415 - nats-py is an optional extra

        runner = cluster.ROLES[role]
    if runner is None:
        reply(error=f"unknown role {role!r}")
        raise SystemExit(1)
    profile_dir = os.environ.get("INTENTRA_BENCH_PROFILE")
    try:
        if profile_dir:
            # cProfile of this role, written at exit: INTENTRA_BENCH_PROFILE=DIR
            # intentra bench ... leaves DIR/ROLE-PID.prof for pstats or snakeviz.
            import cProfile  # noqa: PLC0415

            profiler = cProfile.Profile()
            try:
                profiler.runcall(runner, args)
            finally:
                profiler.dump_stats(os.path.join(profile_dir, f"{role}-{os.getpid()}.prof"))
        else:
            runner(args)
    except Exception as exc:
        reply(error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
