"""The socket datapath's effect: plain sendto/recvfrom against Linux UDP GSO/GRO.

A sender process streams REALTIME messages as fast as it can to a receiver
process over loopback for a few seconds, once per datapath, several times
each (the paths interleaved), and prints the median of each figure:
messages/s and datagrams/s sent and delivered, socket syscalls per datagram
on each side, and the CPU time per datagram of each process (the steadier
figure when other work shares the cores). The token bucket is lifted (it
would rightly throttle a flood); the receiver's kernel drops what it cannot
keep up with, as UDP does. Usage:

    python tools/datapath.py [--seconds 3] [--runs 3] [--size 100] [--vary]
                             [--burst 256] [--paths plain,gso]

``--vary`` draws message sizes from 1..2*size: datagrams then differ in size
and GSO runs end at each shorter one (a run is equal sizes, the last shorter).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

from intentra import EndpointConfig, Intent, PrivateKey, PublicKey, Transport

CONFIG = EndpointConfig(rate_limit_pps=1e9, rate_limit_burst=1e9)


async def _receive(conn: Connection, datapath: str) -> None:
    t = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=CONFIG,
                             datapath=datapath, receive_queue_size=1 << 20)
    conn.send((t.local_address, t.public_key.to_bytes()))
    delivered = 0
    started: float | None = None
    last = 0.0
    cpu_first = cpu_last = 0.0
    stop = asyncio.get_running_loop().create_future()

    def on_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    asyncio.get_running_loop().add_reader(conn.fileno(), on_stop)

    async def consume() -> None:
        nonlocal delivered, started, last, cpu_first, cpu_last
        while True:
            await t.receive()
            if started is None:
                started = time.perf_counter()
                cpu_first = time.process_time()
                before.update(received=t.endpoint.stats.packets_received,
                              calls=t._datapath.receive_calls)
            delivered += 1
            while t.receive_nowait() is not None:
                delivered += 1
            last = time.perf_counter()
            cpu_last = time.process_time()

    before: dict[str, int] = {}
    task = asyncio.create_task(consume())
    await stop
    asyncio.get_running_loop().remove_reader(conn.fileno())
    conn.recv()
    elapsed = last - started if started is not None else 0.0
    task.cancel()
    stats = t.endpoint.stats
    received = stats.packets_received - before.get("received", 0)
    calls = t._datapath.receive_calls - before.get("calls", 0)
    conn.send({"path": t.datapath, "delivered": delivered, "elapsed": elapsed,
               "datagrams": received, "calls": calls, "cpu": cpu_last - cpu_first,
               "coalesced": t._datapath.gro_coalesced})
    t.abort()


def receiver(conn: Connection, datapath: str) -> None:
    asyncio.run(_receive(conn, datapath))


async def _send(address: tuple[str, int], key: bytes, datapath: str, seconds: float, size: int,
                vary: bool, burst: int) -> dict[str, Any]:
    t = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=CONFIG,
                             datapath=datapath)
    peer = await t.connect(address, PublicKey(key))
    rng = random.Random(1)
    payloads = [bytes(rng.randint(1, 2 * size) if vary else size) for _ in range(1024)]
    sent = refused = 0
    stats = t.endpoint.stats
    datagrams0, calls0 = stats.packets_sent, t._datapath.send_calls
    start = time.perf_counter()
    cpu = time.process_time()
    deadline = start + seconds
    i = 0
    while time.perf_counter() < deadline:
        for _ in range(burst):
            if peer.send_nowait(payloads[i & 1023], Intent.REALTIME):
                sent += 1
            else:
                refused += 1
            i += 1
        await asyncio.sleep(0)  # the flush, and whatever came in
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    result = {"cpu": cpu, "path": t.datapath, "sent": sent, "refused": refused, "elapsed": elapsed,
              "datagrams": stats.packets_sent - datagrams0,
              "calls": t._datapath.send_calls - calls0, "gso_sends": t._datapath.gso_sends}
    t.abort()
    return result


def one_run(datapath: str, args: argparse.Namespace) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=receiver, args=(theirs, datapath))
    proc.start()
    address, key = ours.recv()
    tx = asyncio.run(_send(tuple(address), key, datapath, args.seconds, args.size, args.vary,
                           args.burst))
    time.sleep(0.2)  # let the receiver finish what is in its socket
    ours.send("stop")
    rx = ours.recv()
    proc.join(10)
    return {
        "sent msg/s": tx["sent"] / tx["elapsed"],
        "sent dgram/s": tx["datagrams"] / tx["elapsed"],
        "send calls/dgram": tx["calls"] / max(tx["datagrams"], 1),
        "send cpu us/dgram": 1e6 * tx["cpu"] / max(tx["datagrams"], 1),
        "delivered msg/s": rx["delivered"] / max(rx["elapsed"], 1e-9),
        "delivered %": 100.0 * rx["delivered"] / max(tx["sent"], 1),
        "recv dgram/s": rx["datagrams"] / max(rx["elapsed"], 1e-9),
        "recv calls/dgram": rx["calls"] / max(rx["datagrams"], 1),
        "recv cpu us/dgram": 1e6 * rx["cpu"] / max(rx["datagrams"], 1),
        "msg/dgram": tx["sent"] / max(tx["datagrams"], 1),
        "_path": 0.0 if tx["path"] == rx["path"] == datapath.replace("gso", "gso+gro") else 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=100, help="message bytes")
    parser.add_argument("--vary", action="store_true", help="sizes 1..2*size")
    parser.add_argument("--burst", type=int, default=256, help="messages per loop turn")
    parser.add_argument("--paths", default="plain,gso")
    args = parser.parse_args()
    sizes = f"1..{2 * args.size}" if args.vary else str(args.size)
    print(f"REALTIME {sizes} B messages, bursts of {args.burst}, {args.seconds:g} s, "
          f"median of {args.runs} runs")
    paths = args.paths.split(",")
    results: dict[str, list[dict[str, float]]] = {path: [] for path in paths}
    for _ in range(args.runs):  # interleaved: a burst of other load hits every path alike
        for path in paths:
            results[path].append(one_run(path, args))
    for path, runs in results.items():
        if any(r["_path"] for r in runs):
            print(f"  {path}: the requested path was not in use on both sides")
        medians = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k[0] != "_"}
        shown = ", ".join(f"{k} {v:,.2f}" if v < 100 else f"{k} {v:,.0f}"
                          for k, v in medians.items())
        print(f"  {'gso+gro' if path == 'gso' else path:8} {shown}")


if __name__ == "__main__":
    main()
