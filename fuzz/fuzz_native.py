"""Coverage-guided differential fuzzing of the native datapath (opt-in; docs/native.md).

Drives ``intentra._native`` through its entry points (``Receiver.receive`` over
single datagrams and batches, ``AESGCM``) with atheris
(libFuzzer for Python), beside the pure-Python reference: two responder twins,
one per path (tests/adversarial/test_native_differential.py), get every input.
It fails on any exception, on any difference between the twins (datagrams
sent, events, counters, session state) and, under the AddressSanitizer build
that ``fuzz/native.sh`` makes, on any memory error in the C code.

Random bytes alone never get past the AEAD, so an input is a list of records,
each one of:

  0  a raw datagram (any bytes), from the peer's address or another;
  1  REALTIME DATA sealed by the genuine peer around a fuzzed plaintext
     (framing, the fast path, violations), 2 the same as RELIABLE DATA,
     3 an ACK with a fuzzed 28-byte body, 4 a CLOSE with a fuzzed reason;
  5  the time moves on (and timers run);
  6  the last few datagrams again, as one batch, some reordered (replays).

Usage (the ASan build needs clang; fuzz/native.sh does all of it):

    fuzz/native.sh 600           # ten minutes, corpus in fuzz/corpus-native
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "adversarial")]

with atheris.instrument_imports():
    from test_native_differential import A_ADDR, ATTACKER, Twins, twins

    import intentra.native
    from intentra.constants import ACK_ELICITING_BIT, VERSION, Intent, PacketType
    from intentra.core.session import Session

HEADER = struct.Struct("!BBHIII")
ADDRS = (A_ADDR, A_ADDR, ("10.0.0.7", 4007), ATTACKER)
STATE: dict[str, Twins | int] = {}


def sealed(session: Session, ptype: int, intent: int, priority: int, ack: int,
           plaintext: bytes, eliciting: bool) -> bytes:
    """A genuine datagram of ``session`` (the peer's side) around any plaintext."""
    keys = session.send_keys
    if keys is None or not plaintext or len(plaintext) > 2000:
        return b""
    pn = session.pn_next
    session.pn_next = pn + 1
    b1 = (intent << 6) | (priority << 3) | (ACK_ELICITING_BIT if eliciting else 0) | keys.phase
    header = HEADER.pack((VERSION << 4) | ptype, b1, len(plaintext), session.remote_id,
                         pn & 0xFFFFFFFF, ack)
    return header + keys.seal(session.remote_id, pn, header, plaintext)


def world(fresh: bool) -> Twins:
    """Twins with an established session; rebuilt now and then so fresh pns stay near."""
    t = STATE.get("twins")
    runs = STATE.get("runs", 0)
    assert isinstance(runs, int)
    if fresh or not isinstance(t, Twins) or runs >= 200:
        config = ("default", "rekeying", "wrap", "tight")[runs % 4] if fresh else "default"
        t = twins(config)
        STATE["twins"] = t
        runs = 0
    STATE["runs"] = runs + 1
    return t


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    t = world(fdp.ConsumeIntInRange(0, 31) == 0)
    session = t.a.sessions.get(t.cid_a)
    recent: list[tuple[bytes, tuple[str, int]]] = []
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        kind = fdp.ConsumeIntInRange(0, 6)
        addr = ADDRS[fdp.ConsumeIntInRange(0, len(ADDRS) - 1)]
        if kind == 0:
            datagram = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2100))
        elif kind in (1, 2) and session is not None:
            intent = Intent.REALTIME if kind == 1 else Intent.RELIABLE
            datagram = sealed(session, PacketType.DATA, intent, fdp.ConsumeIntInRange(0, 7),
                              fdp.ConsumeIntInRange(0, 50), fdp.ConsumeBytes(
                                  fdp.ConsumeIntInRange(3, 600)), fdp.ConsumeBool())
        elif kind == 3 and session is not None:
            datagram = sealed(session, PacketType.ACK, 0, 0, fdp.ConsumeIntInRange(0, 50),
                              fdp.ConsumeBytes(28).ljust(28, b"\0"), fdp.ConsumeBool())
        elif kind == 4 and session is not None:
            datagram = sealed(session, PacketType.CLOSE, 0, 0, 0, fdp.ConsumeBytes(1) or b"\0",
                              False)
        elif kind == 5:
            t.tick(fdp.ConsumeIntInRange(0, 3000) / 1000)
            continue
        elif kind == 6 and recent:
            batch = recent[-fdp.ConsumeIntInRange(1, len(recent)):]
            if fdp.ConsumeBool():
                batch.reverse()
            t.deliver_batch(batch)
            continue
        else:
            continue
        if not datagram:
            continue
        recent.append((datagram, addr))
        t.now += 0.0003
        t.deliver(datagram, addr)
    # the other entry points, on the same bytes
    module = intentra.native.module()
    if len(data) >= 44:
        aead = module.AESGCM(data[:32])
        out = aead.encrypt(data[32:44], data[44:], data[:8])
        if aead.decrypt(data[32:44], out, data[:8]) != data[44:]:
            raise AssertionError("AESGCM round trip")


def main() -> None:
    if not intentra.native.available():
        raise SystemExit("intentra._native is not built: nothing to fuzz")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
