"""The send path alone, native against Python: what a sending Endpoint costs per message.

A sender queues REALTIME (or RELIABLE) messages as the stream bench's sender does
(``--burst`` messages a loop turn, then a flush), and a receiver on the pure-Python
path takes the datagrams and answers with its ACKs, fed back to the sender. Only
the sender's calls are timed, in three parts: queueing (``Endpoint.send`` per
message), the flush (``Endpoint.datagrams_to_send``: packing, sealing, recovery)
and taking the ACKs (``Endpoint.receive_datagrams`` of the receiver's ACKs). No
sockets and no event loop: what the core costs.

    python tools/native_send.py [--messages N] [--burst K] [--size BYTES] [--path P]
    python tools/native_send.py --profile python   # cProfile of the sender's flush

Instructions rather than seconds (the machine's load does not move them): run the
sender alone (``--alone``: no congestion control, no receiver, nothing but the
sending endpoint's calls after the handshake) under callgrind at two message
counts and take the difference per message,

    valgrind --tool=callgrind python tools/native_send.py --alone --path native \
        --messages 40000
    valgrind --tool=callgrind python tools/native_send.py --alone --path native \
        --messages 20000
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from native_receive import A_ADDR, B_ADDR, endpoint, handshake  # the same two seeded endpoints

from intentra.config import EndpointConfig
from intentra.constants import Intent


def run(native: bool, args: argparse.Namespace, profile: cProfile.Profile | None = None
        ) -> tuple[float, float, float, int, int]:
    """(queue, flush, ack seconds, messages sent, datagrams sent) of one sender."""
    config = EndpointConfig(rate_limit_pps=1e9, rate_limit_burst=1e9,
                            congestion_control=not args.alone)
    a, b = endpoint("a", config, native), endpoint("b", config, False)
    now = 1.0
    cid = handshake(a, b, now)
    intent = Intent[args.intent.upper()]
    payload = bytes(args.size)
    send = a.send
    t_queue = t_flush = t_ack = 0.0
    clock = time.process_time  # CPU time: the machine's other load does not count
    sent = datagrams = 0
    while sent < args.messages:
        now += 0.0005
        t0 = clock()
        for _ in range(args.burst):
            send(cid, payload, intent, 1, now)
        t1 = clock()
        if profile is not None:
            profile.enable()
        out = a.datagrams_to_send(now)
        if profile is not None:
            profile.disable()
        t2 = clock()
        sent += args.burst
        datagrams += len(out)
        t_queue += t1 - t0
        t_flush += t2 - t1
        if args.alone:
            continue
        b.receive_datagrams([(d, A_ADDR) for d, _ in out], now)
        b.take_events()
        b.handle_timer(now)
        acks = [(d, B_ADDR) for d, _ in b.datagrams_to_send(now)]
        t3 = clock()
        a.receive_datagrams(acks, now)
        a.handle_timer(now)
        a.take_events()
        t4 = clock()
        t_ack += t4 - t3
    return t_queue, t_flush, t_ack, a.stats.messages_sent_realtime + \
        a.stats.messages_sent_reliable, datagrams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--burst", type=int, default=256)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--intent", choices=["realtime", "reliable"], default="realtime")
    parser.add_argument("--path", choices=["both", "python", "native"], default="both")
    parser.add_argument("--alone", action="store_true",
                        help="the sender alone: no congestion control, its datagrams dropped "
                             "and no ACKs back (for instruction counts of the sender only)")
    parser.add_argument("--profile", choices=["python", "native"],
                        help="print a cProfile of this path's flushes instead")
    args = parser.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        run(args.profile == "native", args, profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    paths = {"both": (False, True), "python": (False,), "native": (True,)}[args.path]
    for native in paths:
        queue, flush, ack, messages, datagrams = run(native, args)
        total = queue + flush + ack
        print(f"{'native' if native else 'python'}: {messages:,} messages in {datagrams:,} "
              f"datagrams; per message: queue {queue / messages * 1e6:.2f} us, flush "
              f"{flush / messages * 1e6:.2f} us, ACKs {ack / messages * 1e6:.2f} us, total "
              f"{total / messages * 1e6:.2f} us ({messages / total:,.0f} msg/s)")


if __name__ == "__main__":
    main()
