"""Coverage-guided differential fuzzing of the native datapath (opt-in; docs/native.md).

Drives ``intentra._native`` through its entry points (``Receiver.receive`` over
single datagrams and batches, ``AESGCM`` with ``seal_packet``, and the send
path's ``Packer``: ``take``, ``take_reliable``, ``plaintext``) with atheris
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
  6  the last few datagrams again, as one batch, some reordered (replays);
  7  the twins send a burst of fuzzed messages (REALTIME and RELIABLE, any size,
     priority and lane): packed and sealed in C on one, in Python on the other,
     the datagrams compared byte for byte;
  8  the peer's datagrams so far (its ACKs) reach both twins.

Then the packers and ``seal_packet`` get the input's bytes directly, against
core/packing.py and ``SendKeys.seal_packet`` on cryptography's AESGCM.

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
    from collections import deque

    from test_native_differential import A_ADDR, ATTACKER, Twins, run_sends, send_state, twins

    import intentra.native
    from intentra.constants import ACK_ELICITING_BIT, VERSION, Intent, PacketType
    from intentra.core.aead import SendKeys
    from intentra.core.lanes import OutLane
    from intentra.core.packing import Packer
    from intentra.core.reliable import SendWindow
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
        kind = fdp.ConsumeIntInRange(0, 8)
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
        elif kind == 7:
            burst = [(Intent.REALTIME if fdp.ConsumeBool() else Intent.RELIABLE,
                      fdp.ConsumeIntInRange(0, 3000), fdp.ConsumeIntInRange(0, 7),
                      fdp.ConsumeIntInRange(0, 3) if fdp.ConsumeIntInRange(0, 3) == 0 else 0)
                     for _ in range(fdp.ConsumeIntInRange(1, 60))]
            run_sends(t, [("burst", burst)])
            continue
        elif kind == 8:
            run_sends(t, [("acks", fdp.ConsumeIntInRange(1, 64))])
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
    fuzz_send_path(module, data)
    if send_state(t.py) != send_state(t.nat):
        raise AssertionError("the twins' send state differs")


def fuzz_send_path(module: object, data: bytes) -> None:
    """The packers and seal_packet on the input's bytes, against the reference."""
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.ConsumeIntInRange(6, 2048 - 32)
    now = fdp.ConsumeIntInRange(0, 1000) / 1000
    rt: deque[tuple[bytes, float, int]] = deque()
    rel: list[tuple[bytes, int]] = []
    for _ in range(fdp.ConsumeIntInRange(0, 30)):
        chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1300))
        rt.append((chunk, fdp.ConsumeIntInRange(0, 1000) / 1000,
                   fdp.ConsumeIntInRange(0, 1) if fdp.ConsumeBool() else 0))
        rel.append((chunk, fdp.ConsumeIntInRange(0, 7)))
    packers = [Packer(), module.Packer()]  # type: ignore[attr-defined]
    queues = [deque(rt), deque(rt)]
    for _ in range(len(rt) + 1):
        got = [p.take(q, 3, now, 0.5, limit, limit - 2)
               for p, q in zip(packers, queues, strict=True)]
        if got[0] != got[1] or list(queues[0]) != list(queues[1]) or \
                packers[0].plaintext() != packers[1].plaintext():
            raise AssertionError("Packer.take differs")
        if got[0] == 0:
            break
        if got[0] == 1:
            for q in queues:
                q.popleft()
    if rel:
        lanes, windows = [OutLane(0), OutLane(0)], [SendWindow(1 << 16), SendWindow(1 << 16)]
        for olane in lanes:
            for chunk, prio in rel:
                olane.queue.append((chunk, prio))
                olane.counts[prio] += 1
            olane.level = max(prio for _, prio in rel)
        rpackers = [Packer(reliable=True), module.Packer(reliable=True)]  # type: ignore[attr-defined]
        single = fdp.ConsumeBool()
        for _ in range(len(rel) + 1):
            if not lanes[0].queue or len(lanes[0].queue[0][0]) > limit - 6:
                break
            got2 = [p.take_reliable(o, w, now, 0.2, 100, single, limit - 6, limit)
                    for p, o, w in zip(rpackers, lanes, windows, strict=True)]
            if got2[0] != got2[1] or list(lanes[0].queue) != list(lanes[1].queue) or \
                    lanes[0].counts != lanes[1].counts or \
                    rpackers[0].plaintext() != rpackers[1].plaintext() or \
                    list(windows[0].outstanding) != list(windows[1].outstanding):
                raise AssertionError("Packer.take_reliable differs")
            if got2[0][0] == 1:
                for o in lanes:
                    o.relevel()
    if len(data) >= 32:
        key = data[:32]
        pt = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2000))
        fields = (fdp.ConsumeIntInRange(0, 255), fdp.ConsumeIntInRange(0, 254),
                  fdp.ConsumeIntInRange(0, 2**32 - 1), fdp.ConsumeIntInRange(0, 2**64 - 1),
                  fdp.ConsumeIntInRange(0, 2**32 - 1))
        sealed_py = SendKeys(key, 0.0).seal_packet(*fields, pt)
        sealed_c = SendKeys(key, 0.0, module.AESGCM).seal_packet(*fields, pt)  # type: ignore[attr-defined]
        if sealed_py != sealed_c:
            raise AssertionError("seal_packet differs")


def main() -> None:
    if not intentra.native.available():
        raise SystemExit("intentra._native is not built: nothing to fuzz")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
