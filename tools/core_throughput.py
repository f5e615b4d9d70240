"""Core-only throughput: two sans-I/O endpoints wired in memory, no sockets.

Measures what the protocol core costs per packet and per message, apart from
the socket and the event loop. Usage:
    python tools/core_throughput.py [--messages N] [--per-packet K] [--intent realtime|reliable]
"""

from __future__ import annotations

import argparse
import os
import time

from intentra.config import EndpointConfig
from intentra.constants import Intent
from intentra.core.endpoint import Endpoint
from intentra.events import MessageReceived
from intentra.keys import PrivateKey

A_ADDR = ("127.0.0.1", 1)
B_ADDR = ("127.0.0.1", 2)


def pump(a: Endpoint, b: Endpoint, now: float) -> int:
    moved = 0
    for src, dst, addr in ((a, b, A_ADDR), (b, a, B_ADDR)):
        out = src.datagrams_to_send(now)
        moved += len(out)
        dst.receive_datagrams([(d, addr) for d, _ in out], now)
    return moved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--per-packet", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--intent", choices=["realtime", "reliable"], default="realtime")
    args = parser.parse_args()
    # The token bucket would (rightly) refuse an in-memory flood: lift it here.
    config = EndpointConfig(rate_limit_pps=1e9, rate_limit_burst=1e9)
    a = Endpoint(PrivateKey.generate().to_bytes(), os.urandom, config)
    b = Endpoint(PrivateKey.generate().to_bytes(), os.urandom, config)
    now = time.monotonic()
    cid = a.connect(B_ADDR, now)
    while pump(a, b, now):
        pass
    a.events()
    b.events()
    intent = Intent[args.intent.upper()]
    payload = bytes(args.size)
    delivered = 0
    start = time.perf_counter()
    sent = 0
    while sent < args.messages:
        for _ in range(args.per_packet):
            a.send(cid, payload, intent, 1, now)
        sent += args.per_packet
        now = time.monotonic()
        while pump(a, b, now):
            pass
        for ev in b.events():
            if type(ev) is MessageReceived:
                delivered += 1
        if intent is Intent.RELIABLE:
            a.handle_timer(now)
            b.handle_timer(now)
    elapsed = time.perf_counter() - start
    print(f"{args.intent} x{args.per_packet}/packet, {args.size} B: {delivered:,} delivered in "
          f"{elapsed:.2f} s = {delivered / elapsed:,.0f} msg/s, "
          f"{a.stats.packets_sent / elapsed:,.0f} packets/s sent by A")


if __name__ == "__main__":
    main()
