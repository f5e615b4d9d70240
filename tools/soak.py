"""Soak run (opt-in, not in `make test`): 100 peers through the fault proxy for minutes.

An `intentra serve --echo` process sits behind a UdpProxy injecting faults in
both directions; this process holds the peers and the proxy. Each peer sends
state updates at a fixed rate (every 10th RELIABLE, the rest REALTIME) and
checks what comes back: RELIABLE exactly once and in order, REALTIME never
twice. RSS of the server and of this process is sampled; after warm-up it must
not grow. Usage:

    python tools/soak.py --duration 10m [--peers 100] [--rate 10] [--loss 0.05]
        [--dup 0.01] [--jitter 10ms] [--json out.json]

Exit status 0 when every check held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

from intentra import EndpointConfig, Intent, Peer, PrivateKey, Transport
from intentra.errors import IntentraError
from intentra.testing import Faults, UdpProxy, parse_duration

STAMP = struct.Struct("!IQ")  # sequence, send time (monotonic ns)


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def duration(text: str) -> float:
    if text.endswith("m") and not text.endswith("ms"):
        return float(text[:-1]) * 60
    return parse_duration(text)


async def start_server(workdir: Path) -> tuple[asyncio.subprocess.Process, tuple[str, int],
                                                PrivateKey]:
    key = PrivateKey.generate()
    key.save(workdir / "server.key")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "intentra", "serve", "--bind", "127.0.0.1:0", "--key",
        str(workdir / "server.key"), "--echo", stdout=asyncio.subprocess.PIPE)
    if proc.stdout is None:
        raise RuntimeError("no stdout pipe")
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        if not line:
            raise RuntimeError("the server did not start")
        if m := re.match(r"intentra serving on (\S+):(\d+)", line):
            return proc, (m.group(1), int(m.group(2))), key


async def soak(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="intentra-soak-") as tmp:
        proc, address, key = await start_server(Path(tmp))
        faults = Faults(loss=args.loss, dup=args.dup, jitter=args.jitter)
        proxy = await UdpProxy.start(address, forward=faults, backward=faults, seed=args.seed,
                                     idle_timeout=None)
        config = EndpointConfig(idle_timeout=120.0)
        clients = [await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=config)
                   for _ in range(args.peers)]
        gate = asyncio.Semaphore(4)  # the server admits 5 pending handshakes per IP

        async def connect(t: Transport) -> Peer:
            async with gate:
                return await t.connect(proxy.address, key.public_key)

        peers = [await asyncio.wait_for(connect(t), 30) for t in clients]
        sent = {Intent.RELIABLE: 0, Intent.REALTIME: 0}
        got = {Intent.RELIABLE: 0, Intent.REALTIME: 0}
        errors = {"reliable_order": 0, "realtime_duplicate": 0, "send_refused": 0}
        last_reliable = [0] * args.peers
        seen_realtime: list[set[int]] = [set() for _ in range(args.peers)]

        async def receive(i: int, t: Transport) -> None:
            while True:
                try:
                    msg = await t.receive()
                except IntentraError:
                    return
                seq, _ = STAMP.unpack_from(msg.data)
                got[msg.intent] += 1
                if msg.intent is Intent.RELIABLE:
                    if seq != last_reliable[i] + 1:
                        errors["reliable_order"] += 1
                    last_reliable[i] = seq
                else:
                    seen = seen_realtime[i]
                    if seq in seen:
                        errors["realtime_duplicate"] += 1
                    seen.add(seq)
                    if len(seen) > 128:  # the harness's own memory stays flat: jitter
                        seen_realtime[i] = {s for s in seen if s > seq - 64}  # is < 1 tick

        tasks = [asyncio.create_task(receive(i, t)) for i, t in enumerate(clients)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        samples: list[dict[str, float]] = []
        next_sample = start
        tick = 0
        seqs = [0] * args.peers
        while (now := loop.time()) - start < args.duration:
            for i, peer in enumerate(peers):
                intent = Intent.RELIABLE if tick % 10 == 0 else Intent.REALTIME
                seqs[i] += 1 if intent is Intent.RELIABLE else 0
                seq = seqs[i] if intent is Intent.RELIABLE else tick
                try:
                    peer.send_nowait(STAMP.pack(seq, time.monotonic_ns()) + bytes(48), intent, 1)
                    sent[intent] += 1
                except IntentraError:
                    errors["send_refused"] += 1
            tick += 1
            if now >= next_sample:
                sample = {"t": round(now - start, 1), "server_rss_kib": rss_kib(proc.pid),
                          "client_rss_kib": rss_kib(os.getpid()),
                          "reliable_sent": sent[Intent.RELIABLE],
                          "reliable_back": got[Intent.RELIABLE],
                          "realtime_sent": sent[Intent.REALTIME],
                          "realtime_back": got[Intent.REALTIME]}
                samples.append(sample)
                print(json.dumps(sample), flush=True)
                next_sample = now + args.sample_every
            await asyncio.sleep(max(0.0, start + tick / args.rate - loop.time()))
        await asyncio.sleep(3.0)  # let retransmissions finish
        final = {"server_rss_kib": rss_kib(proc.pid), "client_rss_kib": rss_kib(os.getpid())}
        for t in clients:
            await t.close(flush_timeout=0)
        for task in tasks:
            task.cancel()
        await proxy.close()
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)
    warm = [s for s in samples if s["t"] >= min(60.0, args.duration / 4)]
    growth = {
        k: (final[k] - warm[0][k]) if warm else 0 for k in ("server_rss_kib", "client_rss_kib")}
    result: dict[str, object] = {
        "duration_s": args.duration, "peers": args.peers, "rate_hz": args.rate,
        "faults": faults.describe(), "seed": args.seed,
        "reliable": {"sent": sent[Intent.RELIABLE], "echoed_back": got[Intent.RELIABLE],
                     "ratio": got[Intent.RELIABLE] / max(1, sent[Intent.RELIABLE])},
        "realtime": {"sent": sent[Intent.REALTIME], "echoed_back": got[Intent.REALTIME],
                     "ratio": got[Intent.REALTIME] / max(1, sent[Intent.REALTIME])},
        "errors": errors,
        "rss_kib": {"server_start": samples[0]["server_rss_kib"] if samples else 0,
                    "server_after_warmup": warm[0]["server_rss_kib"] if warm else 0,
                    "server_end": final["server_rss_kib"],
                    "client_start": samples[0]["client_rss_kib"] if samples else 0,
                    "client_after_warmup": warm[0]["client_rss_kib"] if warm else 0,
                    "client_end": final["client_rss_kib"]},
        "rss_growth_after_warmup_kib": growth,
        "proxy": proxy.counts,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=duration, default=600.0)
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="updates per peer per second")
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--dup", type=float, default=0.01)
    parser.add_argument("--jitter", type=parse_duration, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(soak(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    errors = result["errors"]
    growth = result["rss_growth_after_warmup_kib"]
    ok = (isinstance(errors, dict) and errors["reliable_order"] == 0
          and errors["realtime_duplicate"] == 0
          and isinstance(growth, dict) and all(v < 4096 for v in growth.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
