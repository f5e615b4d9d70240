"""The ``intentra`` command line: keygen, pubkey, serve, send, demo.

Bad arguments, missing or malformed key files and unusable addresses exit
with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

import intentra.native
from intentra import __version__
from intentra.aio.args import parse_address
from intentra.aio.peer import Peer
from intentra.aio.transport import Transport
from intentra.config import EndpointConfig
from intentra.constants import MAX_LANE, Intent
from intentra.errors import (
    AuthenticationError,
    IntentraError,
    KeyFileError,
    KeyFormatError,
    TransportClosedError,
)
from intentra.keys import PrivateKey, PublicKey

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem the user must fix; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"intentra: error: {message} (see --help)\n")


_LOOP = "auto"


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when installed (``--loop auto``, the default), else asyncio's loop."""
    if _LOOP != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional extra
        except ImportError:
            if _LOOP == "uvloop":
                coro.close()
                raise UsageError("--loop uvloop needs uvloop: pip install 'intentra[fast]'") \
                    from None
        else:
            result: int = uvloop.run(coro)
            return result
    return asyncio.run(coro)


def _load_key(path: str) -> PrivateKey:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        key = PrivateKey.load(path)
    for w in caught:
        print(f"intentra: warning: {w.message}", file=sys.stderr)
    return key


def _load_allow(path: str) -> list[PublicKey]:
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read allow-list {path!r}: {exc}") from exc
    keys = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            keys.append(PublicKey.from_base64(text))
        except KeyFormatError as exc:
            raise KeyFileError(f"allow-list {path!r} line {number}: {exc}") from exc
    return keys


def _intent(text: str) -> Intent:
    try:
        return Intent[text.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid intent {text!r}: choose reliable or realtime") from None


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 7:
        raise argparse.ArgumentTypeError(f"invalid priority {text!r}: an integer 0..7")
    return value


def _lane(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_LANE:
        raise argparse.ArgumentTypeError(f"invalid lane {text!r}: an integer 0..{MAX_LANE}")
    return value


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
        return value
    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _large_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    limit = EndpointConfig().max_message_size
    if value != 0 and not 16 <= value <= limit:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: 0 (none) or 16..{limit} bytes")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1]")
    return value


def _duration(text: str) -> float:
    from intentra.testing.faultproxy import parse_duration  # noqa: PLC0415

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (a long-running command's clean exit)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# ------------------------------------------------------------------ commands

def cmd_keygen(args: argparse.Namespace) -> int:
    key = PrivateKey.generate()
    key.save(args.file)
    print(key.public_key.to_base64())
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    print(_load_key(args.file).public_key.to_base64())
    return 0


def _say(text: str) -> None:
    """One line in one write: workers share the supervisor's stdout, so lines must not mix."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _mode(args: argparse.Namespace) -> str:
    return "sink" if args.sink else "echo" if args.echo else "hub"


def _conn_id_class(text: str) -> tuple[int, int]:
    index_text, sep, count_text = text.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index, count = -1, 0
    if not sep or not 0 <= index < count <= 256:
        raise argparse.ArgumentTypeError(
            f"expected I/N with 0 <= I < N <= 256 (hub I of N behind a balancer), got {text!r}")
    return index, count


def _bus_servers(text: str) -> list[str]:
    from intentra.bus import _servers  # noqa: PLC0415

    try:
        return _servers(text)
    except IntentraError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bus_subject(text: str) -> str:
    from intentra.bus import BusConfig  # noqa: PLC0415

    try:
        return BusConfig(subject=text).subject
    except IntentraError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _serve(args: argparse.Namespace) -> int:
    key = _load_key(args.key)
    allowed = _load_allow(args.allow) if args.allow else None
    worker = args.worker_fd is not None
    metrics = args.metrics
    extra: dict[str, Any] = {}
    if worker:
        # A worker of serve --workers: its socket, cookie master and conn_id class
        # come from the supervisor (the master on stdin, never on the command line).
        from intentra.workers import die_with_parent  # noqa: PLC0415

        die_with_parent()
        master = bytes.fromhex(sys.stdin.readline().strip())
        hub, hubs = args.conn_id_class or (0, 1)
        # Hub I of N, worker i of W: conn_ids = I*W + i modulo N*W, so conn_id % W
        # is still the worker (the port's steering) and (conn_id % NW) // W the hub.
        extra = {"sock": socket.socket(fileno=args.worker_fd), "cookie_master": master,
                 "conn_id_class": (hub * args.workers + args.worker_index,
                                   hubs * args.workers)}
        if metrics is not None:
            metrics = (metrics[0], metrics[1] + args.worker_index if metrics[1] else 0)
    elif args.conn_id_class is not None:
        extra = {"conn_id_class": args.conn_id_class}
    try:
        transport = await Transport.bind(args.bind, key, allowed, metrics_address=metrics,
                                         sink=args.sink, **extra)
    except OSError as exc:
        where = exc.filename or _shown(*args.bind)
        raise UsageError(f"cannot bind {where}: {exc.strerror or exc}; choose another "
                         "address or stop what uses it") from None
    bridge = None
    if args.bus:  # joined before the announcement: a hub that cannot join does not serve
        from intentra.bus import Bridge, BusConfig  # noqa: PLC0415

        bridge = Bridge(transport, args.bus, config=BusConfig(subject=args.bus_subject),
                        envelope=args.envelope)
        try:
            await bridge.start()
        except BaseException:
            await transport.close(flush_timeout=0)
            raise
    # Handlers before the announcement: a supervisor may signal as soon as it reads it.
    stop = _stop_on_signals()
    shown = _shown(*transport.local_address)
    prefix = f"worker {args.worker_index}: " if worker else ""
    if not worker:
        print(f"intentra serving on {shown}", flush=True)
        print(f"public key: {key.public_key.to_base64()}", flush=True)
        print(f"mode: {_mode(args)}", flush=True)
        if args.envelope:
            print("relayed messages carry an origin envelope (intentra.envelope.unwrap)",
                  flush=True)
    if transport._metrics_server is not None:
        mport = transport._metrics_server.server_port
        _say(f"{prefix}metrics: http://{parse_address(args.metrics)[0]}:{mport}/metrics")
    if args.sink:
        await stop.wait()
        peers = len(transport.peers)
        await transport.close()
        _say(f"{prefix}closed {peers} session(s); messages counted: {transport.sink_messages}")
        return 0

    from intentra.hub import RelayStats, relay  # noqa: PLC0415

    if bridge is not None:
        _say(f"{prefix}bus: hub {bridge.hub_id} joined {','.join(bridge.servers)} "
             f"(subject {bridge.config.subject}, stream {bridge.config.stream})")
    stats = RelayStats()
    task = asyncio.create_task(relay(transport, echo=args.echo, envelope=args.envelope,
                                     stats=stats, bus=bridge))
    await stop.wait()
    peers = len(transport.peers)
    lost = await bridge.close() if bridge is not None else 0
    await transport.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    too_large = f"; too large for an envelope: {stats.dropped_too_large}" if args.envelope else ""
    _say(f"{prefix}closed {peers} session(s); relay drops on full queues: "
         f"{stats.dropped_queue_full}{too_large}")
    if bridge is not None:
        bs = bridge.stats
        dropped = sum(bs.dropped.values())
        _say(f"{prefix}bus: published {bs.published[0]} reliable, {bs.published[1]} realtime; "
             f"received {bs.received[0]} reliable, {bs.received[1]} realtime; dropped "
             f"{dropped}{_causes(bs.dropped)}; never stored at exit: {lost}")
    return 0


def _causes(dropped: dict[tuple[str, str], int]) -> str:
    shown = ", ".join(f"{count} {intent} {cause}" for (intent, cause), count
                      in sorted(dropped.items()) if count)
    return f" ({shown})" if shown else ""


def cmd_serve(args: argparse.Namespace) -> int:
    if args.echo and args.sink:
        raise UsageError("choose one of --echo and --sink")
    if args.envelope and args.sink:
        raise UsageError("--envelope wraps relayed messages; --sink relays nothing")
    if args.bus and (args.echo or args.sink):
        raise UsageError("--bus joins hubs; it cannot be used with --echo or --sink")
    if args.bus_subject != "intentra" and not args.bus:
        raise UsageError("--bus-subject needs --bus")
    if args.workers > 1 and args.worker_fd is None:
        return _supervise(args)
    return _run(_serve(args))


def _supervise(args: argparse.Namespace) -> int:
    """serve --workers N: N processes on one port, conn_id steering, one cookie master."""
    from intentra.workers import reuseport_sockets  # noqa: PLC0415

    if not (args.echo or args.sink or args.bus):
        raise UsageError("--workers needs --echo, --sink or --bus: a hub relays between its "
                         "own peers, and with several workers each sees only some of them "
                         "unless they are joined through a bus (--bus nats://HOST:PORT)")
    key = _load_key(args.key)  # fail here, once, on a bad key file
    if args.allow:
        _load_allow(args.allow)
    host, port = args.bind
    try:
        sockets, steered = reuseport_sockets(host, port, args.workers)
    except OSError as exc:
        raise UsageError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    master = os.urandom(32).hex()
    forwarded = list(sys.argv[1:] if args.argv is None else args.argv)
    children: list[subprocess.Popen[bytes]] = []
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index, sock in enumerate(sockets):
            cmd = [sys.executable, "-m", "intentra", *forwarded,
                   "--worker-fd", str(sock.fileno()), "--worker-index", str(index)]
            child = subprocess.Popen(cmd, stdin=subprocess.PIPE,  # noqa: S603 - ourselves
                                     pass_fds=(sock.fileno(),))
            assert child.stdin is not None
            child.stdin.write(master.encode() + b"\n")
            child.stdin.close()
            children.append(child)
        print(f"intentra serving on {_shown(*sockets[0].getsockname()[:2])}", flush=True)
        print(f"public key: {key.public_key.to_base64()}", flush=True)
        print(f"mode: {_mode(args)}, {args.workers} workers, sessions steered by conn_id: "
              f"{'yes' if steered else 'no (kernel hash only; roaming may lose a session)'}",
              flush=True)
        # Watch all of them: whichever worker dies on its own, the port's steering
        # order is gone, so the others are stopped too.
        while True:
            running = [child.poll() is None for child in children]  # poll (reap) every one
            if all(running):
                time.sleep(0.1)
                continue
            if not any(running):
                break
            if not stop:
                on_signal(signal.SIGTERM, None)
            time.sleep(0.1)
        codes = [child.returncode for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in sockets:
            sock.close()
    return 0 if all(code == 0 for code in codes) else 1


async def _stdin_lines() -> AsyncIterator[bytes]:
    """Non-blank lines of stdin, each as soon as it is complete (pipes, terminals, files).

    A thread does the blocking ``os.read`` (no buffered-reader lock, so an exit
    before EOF is clean) and hands each chunk to the loop; the loop's own
    readers cannot take a regular file and would make a shared terminal
    non-blocking.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    def pump() -> None:
        while True:
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except RuntimeError:  # the loop is closed: send ended before stdin did
                return
            if not chunk:
                return

    threading.Thread(target=pump, name="intentra-stdin", daemon=True).start()
    pending = b""
    while True:
        chunk = await chunks.get()
        pending += chunk
        *lines, pending = pending.split(b"\n") if chunk else [*pending.split(b"\n"), b""]
        for line in lines:
            if line.strip():
                yield line
        if not chunk:
            return


def _read_files(paths: list[str], limit: int) -> list[bytes]:
    """The contents of ``--file`` paths, one message each, checked before anything is sent."""
    contents: list[bytes] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"--file {path}: {exc.strerror or exc}") from None
        if not data:
            raise UsageError(f"--file {path} is empty; a message is at least 1 byte")
        if len(data) > limit:
            raise UsageError(f"--file {path} is {len(data):,} bytes; the largest message is "
                             f"{limit:,} bytes (max_message_size)")
        contents.append(data)
    return contents


async def _messages(args: argparse.Namespace, files: list[bytes]) -> AsyncIterator[bytes]:
    if args.message or files:
        for text in args.message:
            yield text.encode()
        for data in files:
            yield data
    else:
        async for line in _stdin_lines():
            yield line


async def _print_replies(transport: Transport) -> None:
    while True:
        try:
            msg = await transport.receive()
        except TransportClosedError:
            return
        sys.stdout.write(msg.data.decode("utf-8", "backslashreplace") + "\n")
        sys.stdout.flush()


KNOWN_HOSTS_ENV = "INTENTRA_KNOWN_HOSTS"


def known_hosts_path(flag: str | None) -> Path:
    """``--known-hosts``, else ``$INTENTRA_KNOWN_HOSTS``, else ~/.config/intentra/known_hosts."""
    if flag:
        return Path(flag)
    if env := os.environ.get(KNOWN_HOSTS_ENV):
        return Path(env)
    return Path.home() / ".config" / "intentra" / "known_hosts"


def _known_key(path: Path, address: str) -> tuple[PublicKey, int] | None:
    """The key recorded for ``address`` in a known-hosts file, with its line number."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read known-hosts file {str(path)!r}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if len(fields) == 2 and fields[0] == address:
            try:
                return PublicKey.from_base64(fields[1]), number
            except IntentraError as exc:
                raise KeyFileError(f"known-hosts file {str(path)!r} line {number}: {exc}; "
                                   "fix or delete that line") from exc
    return None


def _remember(path: Path, address: str, key: PublicKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="ascii") as f:
        f.write(f"{address} {key.to_base64()}\n")


async def _connect(transport: Transport, args: argparse.Namespace) -> Peer:
    """Connect with the server key pinned: given, known (trust on first use), or --no-pin."""
    address = _shown(*args.to)
    if args.server_key is not None:
        if not args.server_key.strip():
            raise UsageError("--server-key is empty; pass the server's public key (serve "
                             "prints it; intentra pubkey KEYFILE too), or leave it out to "
                             "trust the key on first use")
        if args.no_pin:
            raise UsageError("choose one of --server-key and --no-pin")
        return await transport.connect(args.to, PublicKey.from_base64(args.server_key))
    if args.no_pin:
        peer = await transport.connect(args.to)
        _warn(f"not pinned (--no-pin): accepted server key {peer.public_key.to_base64()} "
              f"from {address}")
        return peer
    path = known_hosts_path(args.known_hosts)
    known = _known_key(path, address)
    if known is not None:
        key, number = known
        try:
            return await transport.connect(args.to, key)
        except AuthenticationError:
            raise UsageError(
                f"the server at {address} does not have the key recorded for it in "
                f"{path} line {number} (it may be an impostor); if its key changed on "
                f"purpose, delete that line (sed -i '{number}d' {path}) or pass "
                "--server-key NEWKEY") from None
    peer = await transport.connect(args.to)
    _remember(path, address, peer.public_key)
    _warn(f"trusting server key {peer.public_key.to_base64()} for {address} on first use; "
          f"saved to {path} (pin it with --server-key to be sure)")
    return peer


def _warn(text: str) -> None:
    print(f"intentra: warning: {text}", file=sys.stderr, flush=True)


async def _send(args: argparse.Namespace) -> int:
    key = _load_key(args.key) if args.key else PrivateKey.generate()
    if args.server_key is not None and args.server_key.strip():
        try:  # a malformed key fails before any packet
            PublicKey.from_base64(args.server_key)
        except KeyFormatError as exc:
            raise UsageError(f"--server-key: {exc}; pass the base64 key that serve prints") \
                from None
    files = _read_files(args.file or [], EndpointConfig().max_message_size)
    host = args.to[0]
    bind = "[::]:0" if ":" in host else "0.0.0.0:0"
    async with await Transport.bind(bind, key) as transport:
        peer = await _connect(transport, args)
        closed = asyncio.Event()

        async def watch() -> None:
            async for event in transport.peer_events():
                if event.peer is peer and event.kind == "closed":
                    closed.set()
                    return

        tasks = [asyncio.create_task(_print_replies(transport)), asyncio.create_task(watch())]
        queued = 0
        try:
            async for data in _messages(args, files):  # each line leaves as soon as it is read
                await peer.send(data, args.intent, args.priority, lane=args.lane)
                queued += 1
            if args.wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), args.wait)
            await asyncio.sleep(0)  # replies that arrived with the CLOSE are printed first
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if peer.closed:
            _summary(transport, args.intent, queued, None)
            who = "the server" if peer.closed_by_peer else "this side"
            reason = peer.close_reason.name if peer.close_reason is not None else "?"
            raise IntentraError(f"{who} closed the session ({reason}) while send waited "
                                "for replies; replies after that were lost")
        left = await peer.close()
        _summary(transport, args.intent, queued, left)
    return 0


def _summary(transport: Transport, intent: Intent, queued: int, unacked: int | None) -> None:
    """What happened to the messages, on stderr, from the endpoint's own counters."""
    stats = transport.endpoint.stats
    name = intent.name.lower()
    what = "message" if queued == 1 else "messages"
    if intent is Intent.RELIABLE:
        sent = stats.messages_sent_reliable
        acked = "acknowledged: unknown (the session closed)" if unacked is None else \
            f"{queued - unacked} acknowledged, {unacked} not acknowledged at close"
        text = (f"{queued} {name} {what}: {sent} sent, {acked}, "
                f"{stats.retransmissions} retransmissions")
    else:
        sent = stats.messages_sent_realtime
        late, full = stats.messages_dropped_deadline, stats.messages_dropped_queue_full
        text = (f"{queued} {name} {what}: {sent} sent, {late + full} dropped "
                f"({late} past their deadline in the send queue, {full} on a full send "
                "queue); realtime messages are never acknowledged, so losses on the way "
                "are not counted")
    print(f"intentra send: {text}", file=sys.stderr, flush=True)


def cmd_send(args: argparse.Namespace) -> int:
    return _run(_send(args))


async def _proxy(args: argparse.Namespace) -> int:
    from intentra.testing.faultproxy import Faults, UdpProxy  # noqa: PLC0415

    faults = Faults(loss=args.loss, dup=args.dup, reorder=args.reorder, delay=args.delay,
                    jitter=args.jitter, truncate=args.truncate, corrupt=args.corrupt)
    try:
        proxy = await UdpProxy.start(args.to, listen=args.listen, forward=faults,
                                     backward=faults, seed=args.seed)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.listen[0]}:{args.listen[1]}: "
                         f"{exc.strerror or exc}") from None
    stop = _stop_on_signals()
    host, port = proxy.address
    print(f"intentra proxy on {host}:{port} -> {args.to[0]}:{args.to[1]}, "
          f"faults each way: {faults.describe()}, seed {args.seed}", flush=True)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.report_every)
        if not stop.is_set():
            print(proxy.report(), flush=True)
    await proxy.close()
    print(proxy.report(), flush=True)
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    return _run(_proxy(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from intentra.demo import run_demo  # noqa: PLC0415 - keeps the CLI's start fast

    return _run(run_demo(peers=args.peers, rate=args.rate, duration=args.duration,
                         size=args.size, reliable_every=args.reliable_every,
                         plain=args.plain, loop=args.loop, large_size=args.large_size))


def _scenarios(text: str) -> tuple[str, ...]:
    from intentra.bench import EXTRA_SCENARIOS, SCENARIOS  # noqa: PLC0415

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = SCENARIOS + EXTRA_SCENARIOS
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or text!r}; choose from {', '.join(known)}")
    return names


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(n) for n in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2, got {text!r}")
    return values


def _readers(text: str) -> tuple[str, ...]:
    from intentra.bench.roles import READERS  # noqa: PLC0415

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in READERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown reader {', '.join(unknown) or text!r}; choose from {', '.join(READERS)}")
    return names


def _loads(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(n) for n in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 < v < 100 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected positive multiples of the link like 0.4,2.4, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from intentra.bench import SCENARIOS, Options, RoleError, run  # noqa: PLC0415
    from intentra.bench.report import plot, print_table, write_json  # noqa: PLC0415

    chosen = {k: v for k, v in {
        "peers": args.peers, "size": args.size, "sessions": args.sessions,
        "step_seconds": args.step, "stream_seconds": args.duration,
        "handshake_seconds": args.duration, "latency_seconds": args.duration,
        "bottleneck_seconds": args.duration, "bottleneck_loads": args.loads,
        "cluster_hubs": args.hubs,
        "readers": args.readers, "segments": args.segments,
    }.items() if v is not None}
    chosen["scenarios"] = args.scenarios or SCENARIOS
    chosen["workers"] = args.workers
    chosen["baselines"] = () if args.no_baselines else ("raw", "quic")
    if args.plot:  # before a run of minutes, not after it
        try:
            import matplotlib  # noqa: PLC0415, F401 - optional extra
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'intentra[bench]' "
                             "(or leave out --plot)") from None
    options = Options.quick(**chosen) if args.quick else Options(**chosen)
    try:
        report = run(options)
    except RoleError as exc:
        raise UsageError(f"bench failed: {exc}") from None
    print_table(report)
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        if not plot(report, args.plot):
            raise UsageError("--plot needs matplotlib: pip install 'intentra[bench]'")
        print(f"wrote {args.plot}")
    return 0


# ------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="intentra", description=(
        "Encrypted, authenticated multi-peer UDP transport for real-time state."))
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                        help="event loop: uvloop when installed (auto), or force one")
    parser.add_argument("--version", action="version",
                        version=f"intentra {__version__} (datapath: {intentra.native.describe()})",
                        help="print the version and the datapath in use (native or python)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("keygen", help="write a new private key file (mode 0600)")
    p.add_argument("file", help="path of the new key file (never overwritten)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("pubkey", help="print the public key of a private key file")
    p.add_argument("file")
    p.set_defaults(func=cmd_pubkey)

    p = sub.add_parser("serve", help="run an endpoint: a hub (default) or an echo server")
    p.add_argument("--bind", required=True, type=_address, metavar="HOST:PORT")
    p.add_argument("--key", required=True, metavar="FILE", help="private key file")
    p.add_argument("--allow", metavar="FILE", help="file of allowed public keys, one per line")
    p.add_argument("--echo", action="store_true", help="send each message back to its sender")
    p.add_argument("--envelope", action="store_true",
                   help="wrap each relayed message in an origin envelope (1 byte 0xE1, the "
                        "sender's 32-byte public key, the message) so receivers know who "
                        "sent it: intentra.envelope.unwrap (docs/protocol.md section 13)")
    p.add_argument("--sink", action="store_true",
                   help="count messages without delivering them (load tests; see the metric "
                        "intentra_sink_messages_total)")
    p.add_argument("--workers", type=_positive(int), default=1, metavar="N",
                   help="N processes on one port (SO_REUSEPORT), sessions steered by conn_id; "
                        "needs --echo, --sink or --bus (each worker then joins the bus) (1)")
    p.add_argument("--conn-id-class", type=_conn_id_class, metavar="I/N",
                   help="hub I of N behind a UDP balancer: every conn_id this hub hands out "
                        "is I modulo N (with --workers W: I*W+w modulo N*W), so the balancer "
                        "routes a datagram by its conn_id, also after the client roams "
                        "(docs/scaling.md)")
    p.add_argument("--bus", type=_bus_servers, metavar="nats://HOST:PORT[,nats://...]",
                   help="join other hubs through these NATS servers (JetStream on): messages "
                        "of this hub's peers go to every hub's peers (pip install "
                        "'intentra[bus]'; docs/scaling.md)")
    p.add_argument("--bus-subject", type=_bus_subject, default="intentra", metavar="NAME",
                   help="NATS subject prefix and stream name of the bus; hubs with the same "
                        "one serve one population (intentra)")
    p.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--metrics", type=_address, metavar="HOST:PORT",
                   help="serve Prometheus /metrics over HTTP here")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("send", help="connect, send messages, print what comes back")
    p.add_argument("--to", required=True, type=_address, metavar="HOST:PORT")
    p.add_argument("--key", metavar="FILE", help="private key file (default: a new one)")
    p.add_argument("--server-key", metavar="PUB",
                   help="pin the server's public key (base64); without it the key is "
                        "trusted on first use and recorded in the known-hosts file")
    p.add_argument("--known-hosts", metavar="FILE",
                   help=f"known-hosts file (default: ${KNOWN_HOSTS_ENV}, else "
                        "~/.config/intentra/known_hosts)")
    p.add_argument("--no-pin", action="store_true",
                   help="accept any server key (printed on stderr); nothing is recorded")
    p.add_argument("--intent", type=_intent, default=Intent.RELIABLE,
                   help="reliable (default) or realtime")
    p.add_argument("--priority", type=_priority, default=0, help="0..7 (default 0)")
    p.add_argument("--lane", type=_lane, default=0,
                   help="0..255 (default 0): RELIABLE messages are in order within a lane")
    p.add_argument("--file", action="append", metavar="PATH",
                   help="send this file's contents as one message (up to 1 MiB; large ones "
                        "travel in fragments); repeat for several, after any MESSAGE")
    p.add_argument("--wait", type=_non_negative, default=1.0, metavar="S",
                   help="seconds to print replies after sending (default 1; 0: do not wait)")
    p.add_argument("message", nargs="*",
                   help="messages to send (default: lines of stdin, unless --file)")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("proxy", help="a UDP proxy that injects faults, to try an application "
                                     "under loss, duplication, reordering, delay and corruption")
    p.add_argument("--listen", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT",
                   help="where clients send (default 127.0.0.1:0, printed at start)")
    p.add_argument("--to", required=True, type=_address, metavar="HOST:PORT",
                   help="the server the proxy forwards to")
    for name, text in (("loss", "drop"), ("dup", "duplicate"), ("reorder", "hold back"),
                       ("truncate", "truncate"), ("corrupt", "flip one bit of")):
        p.add_argument(f"--{name}", type=_probability, default=0.0, metavar="P",
                       help=f"probability to {text} a datagram, each way (0)")
    p.add_argument("--delay", type=_duration, default=0.0, metavar="T",
                   help="added delay, e.g. 20ms (0)")
    p.add_argument("--jitter", type=_duration, default=0.0, metavar="T",
                   help="extra random delay up to T, e.g. 30ms (0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault decisions (0)")
    p.add_argument("--report-every", type=_positive(float), default=10.0, metavar="S",
                   help="print the fault counts every S seconds (10)")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("demo", help="a hub and simulated peers on loopback, with a summary")
    p.add_argument("--peers", type=_positive(int), default=30,
                   help="simulated peers (30; the hub and all peers share this machine)")
    p.add_argument("--rate", type=_positive(float), default=50.0,
                   help="state updates per peer per second (50)")
    p.add_argument("--duration", type=_positive(float), default=10.0, help="seconds (10)")
    p.add_argument("--size", type=_positive(int), default=64, help="message bytes (64)")
    p.add_argument("--reliable-every", type=_positive(int), default=10,
                   help="every Nth update is RELIABLE, the rest REALTIME (10)")
    p.add_argument("--large-size", type=_large_size, default=2048, metavar="BYTES",
                   help="each peer also sends one message this large per second, RELIABLE "
                        "on lane 1 (2048; 0: none)")
    p.add_argument("--plain", action="store_true", help="plain progress lines, no live display")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="load scenarios against baselines, side by side")
    p.add_argument("scenarios", nargs="?", type=_scenarios, metavar="SCENARIO[,SCENARIO...]",
                   help="fan-in, stream, handshakes, latency, sessions (default: these "
                   "five); bottleneck (root only: a sweep through a real 10 Mbit/s link); "
                   "cluster (hubs joined through a 3-node NATS cluster)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--peers", type=_positive(int), help="fan-in and latency peers (1000)")
    p.add_argument("--size", type=_positive(int), help="message bytes (128)")
    p.add_argument("--step", type=_positive(float), help="seconds per fan-in sweep step (2)")
    p.add_argument("--duration", type=_positive(float),
                   help="seconds of each stream, handshake, latency and bottleneck run (3; "
                   "bottleneck 4)")
    p.add_argument("--loads", type=_loads, metavar="X[,X...]",
                   help="bottleneck: offered REALTIME loads, multiples of the link "
                   "(0.4,0.8,1.2,2.4)")
    p.add_argument("--sessions", type=_positive(int), help="idle sessions to hold (10000)")
    p.add_argument("--workers", type=_counts, default=(1,), metavar="N[,N...]",
                   help="fan-in server processes on one port, e.g. 1,2 (1)")
    p.add_argument("--hubs", type=_counts, metavar="N[,N...]",
                   help="cluster: hub counts joined through NATS, each against one hub alone "
                   "(1,2,3)")
    p.add_argument("--readers", type=_readers, metavar="R[,R...]",
                   help="fan-in servers: the application reads with receive (a sweep per "
                   "--workers), receive_many, or there is none: sink, as serve --sink "
                   "(receive,receive_many,sink)")
    p.add_argument("--segments", type=_positive(int), metavar="N",
                   help="datagrams per GSO send of the load generators' throughput steps "
                   "(16; 1: one sendto each)")
    p.add_argument("--no-baselines", action="store_true", help="skip raw UDP and aioquic")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--plot", metavar="FILE", help="write PNG plots (needs matplotlib)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global _LOOP
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    _LOOP = args.loop
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (IntentraError, UsageError, ValueError) as exc:
        print(f"intentra: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"intentra: error: {exc.strerror or exc}"
              + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return EXIT_USAGE
    return result
