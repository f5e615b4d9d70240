"""Coverage-guided fuzzing of the receive path (opt-in; not in `make test`).

Drives the sans-I/O core with atheris (libFuzzer for Python): a responder
holding one established session receives each fuzzed datagram from an
address the input chooses, at a time that only moves forward. Seeds are real
datagrams of every kind (HELLO, COOKIE, RESPONSE, FINISH, DATA, ACK, CLOSE).
For every input it checks what docs/protocol.md promises for unauthenticated input:

- nothing raises;
- no reply is larger than the datagram that caused it (docs/protocol.md section 10);
- the session's windows and buffers stay within their bounds.

Usage (atheris is not a project dependency: pip install atheris):

    python fuzz/fuzz_receive.py -max_total_time=600 fuzz/corpus
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from intentra.config import EndpointConfig
    from intentra.constants import Intent
    from intentra.core.endpoint import Endpoint
    from intentra.keys import PrivateKey

A = ("10.0.0.1", 4001)
B = ("10.0.0.2", 4002)
CONFIG = EndpointConfig()


def make_pair() -> tuple[Endpoint, Endpoint, list[bytes]]:
    """Two endpoints with an established session, and every datagram they exchanged."""
    rng = random.Random(1)
    a = Endpoint(PrivateKey(rng.randbytes(32)).to_bytes(), rng.randbytes, CONFIG)
    b = Endpoint(PrivateKey(rng.randbytes(32)).to_bytes(), rng.randbytes, CONFIG)
    seen: list[bytes] = []
    now = 0.0

    def pump() -> None:
        for _ in range(10):
            moved = False
            for src, dst, addr in ((a, b, A), (b, a, B)):
                for data, _ in src.datagrams_to_send(now):
                    seen.append(data)
                    dst.receive_datagram(data, addr, now)
                    moved = True
            if not moved:
                return

    cid = a.connect(B, now)
    pump()
    for i in range(20):
        now += 0.01
        a.send(cid, b"reliable-%d" % i, Intent.RELIABLE, i % 8, now)
        a.send(cid, b"realtime-%d" % i, Intent.REALTIME, 3, now)
        pump()
        a.handle_timer(now)
        b.handle_timer(now)
        pump()
    a.close(cid, now)
    seen.extend(d for d, _ in a.datagrams_to_send(now))
    a.events()
    b.events()
    return a, b, seen


_closed_a, TARGET, SEEDS = make_pair()
# A second pair whose session stays open, so DATA/ACK reach a live session.
_live_a, LIVE, _unused = make_pair()
STATE = {"now": 1.0}


def check_bounds(endpoint: Endpoint) -> None:
    for session in endpoint.sessions.values():
        if session.recv_window.buffered_bytes > CONFIG.max_reorder_buffer:
            raise AssertionError("reorder buffer above MAX_REORDER_BUFFER")
        if session.send_window.in_flight > CONFIG.max_reliable_in_flight:
            raise AssertionError("more than MAX_RELIABLE_IN_FLIGHT in flight")
    if len(endpoint.sessions) > CONFIG.max_connections:
        raise AssertionError("more sessions than MAX_CONNECTIONS")
    if endpoint.handshakes_in_flight > CONFIG.max_handshakes_in_flight:
        raise AssertionError("more pending handshakes than MAX_HANDSHAKES_IN_FLIGHT")


def test_one_input(data: bytes) -> None:
    # Layout: 1 control byte, 2 bytes of time step (ms), then the datagram itself,
    # so a seed of three bytes and a real datagram is exactly that datagram.
    if len(data) < 3:
        return
    control, step_ms, datagram = data[0], int.from_bytes(data[1:3], "big"), data[3:]
    target = LIVE if control & 1 else TARGET
    addr = A if control & 2 else (f"203.0.113.{1 + control % 254}", 1000 + control)
    STATE["now"] += (step_ms % 2000) / 1000.0
    now = STATE["now"]
    target.receive_datagram(datagram, addr, now)
    replies = target.datagrams_to_send(now)
    out = sum(len(d) for d, _ in replies)
    if datagram and out > len(datagram):
        # Only an authenticated packet may cause a larger reply; a fuzzer cannot forge one.
        raise AssertionError(f"reply of {out} bytes to a {len(datagram)}-byte datagram")
    target.events()
    if control & 4:
        target.handle_timer(now)
        target.datagrams_to_send(now)
        target.events()
    check_bounds(target)


def main() -> None:
    corpus = Path(sys.argv[-1]) if len(sys.argv) > 1 and not sys.argv[-1].startswith("-") \
        else None
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(SEEDS):
            for control in (0x03, 0x02, 0x01):  # live or closed session, its address or not
                (corpus / f"seed-{i:03d}-{control}").write_bytes(bytes((control, 0, 1)) + seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
