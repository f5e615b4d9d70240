"""What reading a delivered message costs: receive(), receive_nowait(), receive_many().

Peers send REALTIME messages to one server over loopback until the server
holds them all, unread, in its per-peer queues; then only the application's
reading is timed, so the figure is the API's own cost per message (the network
and the receive path are done before the clock starts). Each way of reading is
run several times, interleaved, and the median printed. Usage:

    python bench/receive_api.py [--peers 10] [--messages 2000] [--rounds 5] [--batch 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from intentra import EndpointConfig, Intent, Peer, PrivateKey, Transport

CONFIG = EndpointConfig(rate_limit_pps=1e9, rate_limit_burst=1e9)
SENDER = EndpointConfig(congestion_control=False)  # everything queued leaves at once


async def fill(server: Transport, peers: list[Peer], per_peer: int) -> int:
    """Send ``per_peer`` messages from each peer; returns how many wait at the server."""
    for peer in peers:
        for start in range(0, per_peer, 64):
            for i in range(start, min(start + 64, per_peer)):
                peer.send_nowait(i.to_bytes(4, "big") * 8, Intent.REALTIME)
            await asyncio.sleep(0)  # flushed; the server reads its socket meanwhile
    waiting, deadline = -1, time.monotonic() + 30
    while time.monotonic() < deadline:  # until the count stops moving
        await asyncio.sleep(0.05)
        now = sum(p.status().received_unread for p in server.peers)
        if now == waiting:
            break
        waiting = now
    return waiting


async def main(args: argparse.Namespace) -> None:
    total = 0
    server = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=CONFIG,
                                  receive_queue_size=args.messages)
    clients = [await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=SENDER)
               for _ in range(args.peers)]
    peers = [await c.connect(server.local_address, server.public_key) for c in clients]

    async def by_receive() -> int:
        n = 0
        receive = server.receive
        while n < total:
            await receive()
            n += 1
        return n

    async def by_nowait() -> int:  # one await, then drain (what the hub did before)
        n = 0
        receive_nowait = server.receive_nowait
        while n < total:
            await server.receive()
            n += 1
            while receive_nowait() is not None:
                n += 1
        return n

    async def by_many() -> int:
        n = 0
        receive_many = server.receive_many
        while n < total:
            n += len(await receive_many(args.batch))
        return n

    ways: dict[str, Callable[[], Awaitable[int]]] = {
        "receive()": by_receive, "receive() + receive_nowait()": by_nowait,
        f"receive_many({args.batch})": by_many}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, read in ways.items():
            total = await fill(server, peers, args.messages)
            start = time.perf_counter()
            got = await read()
            times[name].append((time.perf_counter() - start) / got)
    print(f"{args.peers} peers x {args.messages} REALTIME messages sent ({total} waiting in "
          f"the last round); median of "
          f"{args.rounds} rounds, the application's reading alone:")
    for name, values in times.items():
        print(f"  {name:30} {1e6 * statistics.median(values):6.3f} us per message")
    for c in clients:
        c.abort()
    server.abort()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2000, help="per peer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024)
    asyncio.run(main(parser.parse_args()))
