"""The receive path alone, native against Python: sealed datagrams fed to Endpoint.

Seals N REALTIME datagrams of K messages each ahead of time with a
real session, then times ``Endpoint.receive_datagrams`` over them in batches of
64 (a GRO buffer) on a twin pair of receivers, one per path, reading the events
out as an application would. No sockets and no event loop: what the core costs.

    python tools/native_receive.py [--datagrams N] [--per-packet K] [--size BYTES]

Instructions rather than seconds (the machine's load does not move them): run one
path under callgrind with and without the receive loop and take the difference,

    valgrind --tool=callgrind python tools/native_receive.py --datagrams 20000 --path native
    valgrind --tool=callgrind python tools/native_receive.py --datagrams 20000 --path native \
        --no-receive
"""

from __future__ import annotations

import argparse
import random
import time

from intentra.config import EndpointConfig
from intentra.constants import Intent
from intentra.core.endpoint import Endpoint
from intentra.keys import PrivateKey

A_ADDR = ("127.0.0.1", 1)
B_ADDR = ("127.0.0.1", 2)


def endpoint(seed: str, config: EndpointConfig, native: bool) -> Endpoint:
    rng = random.Random(seed)
    return Endpoint(PrivateKey(rng.randbytes(32)).to_bytes(), rng.randbytes, config,
                    native=native)


def handshake(a: Endpoint, b: Endpoint, now: float) -> int:
    """a connects to b (at A_ADDR, B_ADDR), both take their events; a's conn_id."""
    cid = a.connect(B_ADDR, now)
    for _ in range(10):
        for src, dst, addr in ((a, b, A_ADDR), (b, a, B_ADDR)):
            dst.receive_datagrams([(d, addr) for d, _ in src.datagrams_to_send(now)], now)
    a.events()
    b.events()
    return cid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datagrams", type=int, default=100_000)
    parser.add_argument("--per-packet", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--path", choices=["both", "python", "native"], default="both")
    parser.add_argument("--no-receive", action="store_true",
                        help="seal only (the baseline to subtract under callgrind)")
    args = parser.parse_args()
    paths = {"both": (False, True), "python": (False,), "native": (True,)}[args.path]
    config = EndpointConfig(rate_limit_pps=1e9, rate_limit_burst=1e9, congestion_control=False,
                            max_send_queue=1 << 20, max_reliable_in_flight=1 << 16,
                            max_reorder_buffer=1 << 30, max_reorder_total=1 << 34)
    results = {}
    for native in paths:
        a, b = endpoint("a", config, False), endpoint("b", config, native)
        now = 1.0
        cid = handshake(a, b, now)
        payload = bytes(args.size)
        wire: list[tuple[bytes, tuple[str, int]]] = []
        while len(wire) < args.datagrams:
            for _ in range(args.per_packet):  # packed into one datagram at the flush
                a.send(cid, payload, Intent.REALTIME, 1, now)
            wire += [(d, A_ADDR) for d, _ in a.datagrams_to_send(now)]
        wire = wire[:args.datagrams]
        if args.no_receive:
            continue
        start = time.perf_counter()
        messages = 0
        for i in range(0, len(wire), 64):
            b.receive_datagrams(wire[i:i + 64], now)
            b.datagrams_to_send(now)
            messages += len(b.take_events())
        took = time.perf_counter() - start
        results[native] = (took, messages)
        print(f"{'native' if native else 'python'}: {len(wire)} datagrams, {messages} "
              f"messages in {took:.3f} s: {took / len(wire) * 1e6:.2f} us/datagram, "
              f"{messages / took:,.0f} msg/s")
    if len(results) == 2:
        print(f"speed-up: {results[False][0] / results[True][0]:.1f}x")


if __name__ == "__main__":
    main()
