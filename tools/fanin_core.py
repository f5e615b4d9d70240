"""Server core CPU per message in a REALTIME fan-in, on a simulated clock.

Many sessions each send one small REALTIME message per period (30 Hz by default)
to one server ``Endpoint``; the sends of one period are spread evenly over it and
reach the server in batches, as a socket's receive batches would. The server is
driven as ``aio.Transport`` drives it: per batch ``receive_datagrams``,
``datagrams_to_send``, ``events``, ``get_timer``, and ``handle_timer`` when its
deadline has come (only calls version 1's core has too, so the same script runs on
version 1's tree with ``PYTHONPATH``). Only the server's calls are timed (CPU time of this thread),
so the figure is the sans-I/O core's receive cost per message, ACKs and timers
included, without sockets, the event loop or the clients. The clock is simulated,
so a loaded machine changes the CPU figures but not what the protocol does (how
many ACKs, which timers). Usage::

    python tools/fanin_core.py [--peers 1000] [--hz 30] [--seconds 3] [--repeat 3]
                               [--batch 64] [--size 128] [--profile]

``INTENTRA_NATIVE=0`` runs the pure-Python receive path. Prints the best of
``--repeat`` runs (the least disturbed by other load) and the ACKs the server sent
per message.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

from intentra.config import EndpointConfig
from intentra.constants import PacketType
from intentra.core.endpoint import Endpoint
from intentra.events import Address
from intentra.keys import PrivateKey

SERVER: Address = ("127.0.0.1", 9)


def run(args: argparse.Namespace, profile: cProfile.Profile | None) -> tuple[float, float, int]:
    """One run: (server CPU us per message, server ACKs per message, messages)."""
    cfg = EndpointConfig(max_handshakes_per_ip=100_000, max_handshakes_in_flight=100_000)
    now = 1000.0
    server = Endpoint(PrivateKey.generate().to_bytes(), os.urandom, cfg)
    clients: list[tuple[Endpoint, Address, int]] = []
    for i in range(args.peers):
        client = Endpoint(PrivateKey.generate().to_bytes(), os.urandom, cfg)
        addr = (f"127.0.{2 + i // 250}.{1 + i % 250}", 1000 + i)
        clients.append((client, addr, client.connect(SERVER, now)))
    by_addr = {addr: client for client, addr, _ in clients}
    moved = True
    while moved:  # the handshakes
        moved = False
        batch = [(d, addr) for client, addr, _ in clients
                 for d, _ in client.datagrams_to_send(now)]
        if batch:
            server.receive_datagrams(batch, now)
            moved = True
        for d, addr in server.datagrams_to_send(now):
            by_addr[addr].receive_datagram(d, SERVER, now)
            moved = True
    server.events()
    for client, _, _ in clients:
        client.events()
    payload = bytes(args.size)
    period = 1.0 / args.hz
    rounds = round(args.seconds * args.hz)
    warm = max(round(args.hz), 10)  # the first RTT samples, before anything is timed
    spent = 0.0
    messages = 0
    acks = 0
    clock = time.thread_time
    timer_at = server.get_timer()
    for r in range(warm + rounds):
        timed = r >= warm
        for start in range(0, args.peers, args.batch):
            now = 1000.0 + 1.0 + r * period + start / args.peers * period
            batch = []
            for client, addr, conn_id in clients[start:start + args.batch]:
                client.handle_timer(now)
                client.send(conn_id, payload, 1, 0, now)
                batch.extend((d, addr) for d, _ in client.datagrams_to_send(now))
                client.events()
            if profile is not None and timed:
                profile.enable()
            t0 = clock()
            out = []
            if timer_at is not None and timer_at <= now:  # Transport._on_timer
                server.handle_timer(now)
                out += server.datagrams_to_send(now)
                server.events()
                timer_at = server.get_timer()
            server.receive_datagrams(batch, now)  # Transport._work_through, _process
            out += server.datagrams_to_send(now)
            server.events()
            timer_at = server.get_timer()
            if timed:
                spent += clock() - t0
                messages += len(batch)
                acks += sum(1 for d, _ in out if d[0] & 0x0F == PacketType.ACK)
            if profile is not None and timed:
                profile.disable()
            for d, addr in out:
                by_addr[addr].receive_datagram(d, SERVER, now)
    return 1e6 * spent / messages, acks / messages, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--hz", type=float, default=30.0, help="messages per peer per second")
    parser.add_argument("--seconds", type=float, default=3.0, help="simulated, timed")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="datagrams per receive batch")
    parser.add_argument("--size", type=int, default=128, help="message bytes")
    parser.add_argument("--profile", action="store_true", help="cProfile the server's calls")
    args = parser.parse_args()
    results = []
    for _ in range(args.repeat):
        profile = cProfile.Profile() if args.profile else None
        results.append(run(args, profile))
        us, acks, messages = results[-1]
        print(f"server {us:.2f} us/msg, {acks:.3f} ACKs/msg over {messages} msgs", flush=True)
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    us, acks, _ = min(results)
    native = getattr(Endpoint(bytes(32), os.urandom), "native", False)
    print(f"best of {args.repeat}: {us:.2f} us/msg, {acks:.3f} ACKs/msg "
          f"({args.peers} peers at {args.hz:g} Hz, {'native' if native else 'python'})")


if __name__ == "__main__":
    main()
