"""Reliable delivery state of one session (SPEC section 6).

``SendWindow``: unacknowledged messages by rseq, cumulative and selective
acknowledgement, fast retransmit, and the one retransmission timer.
``ReceiveWindow``: in-order delivery, the bounded reorder buffer, and the
``ack`` / bitmap the receiver reports.

rseq and ack compare in serial-number arithmetic modulo 2**32 (RFC 1982).
Neither class reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

from typing import Final

from intentra.constants import LEN_PREFIX, RSEQ_MOD

_MASK: Final = RSEQ_MOD - 1
_HALF: Final = RSEQ_MOD >> 1
SACK_BITS: Final = 64
FAST_RETRANSMIT_THRESHOLD: Final = 3


class Violation(Exception):
    """An authenticated packet broke a rule of SPEC sections 4 or 6 (earns a strike)."""


def serial_gt(a: int, b: int) -> bool:
    """a > b in RFC 1982 serial arithmetic over 32 bits."""
    d = (a - b) & _MASK
    return 0 < d < _HALF


class Outstanding:
    """One reliable message sent and not yet acknowledged."""

    __slots__ = (
        "data",
        "fast_retransmitted",
        "first_sent_at",
        "priority",
        "retries",
        "sacked",
        "sent_at",
    )

    def __init__(self, data: bytes, priority: int, now: float) -> None:
        self.data = data
        self.priority = priority
        self.first_sent_at = now
        self.sent_at = now
        self.retries = 0
        self.sacked = False
        self.fast_retransmitted = False


class SendWindow:
    """The sender's side: what is in flight and what the peer has acknowledged."""

    __slots__ = ("acked", "dup_acks", "limit", "next_rseq", "outstanding", "rto_at",
                 "sack_reach")

    def __init__(self, limit: int, first_rseq: int = 1) -> None:
        self.limit = limit
        self.next_rseq = first_rseq & _MASK
        self.acked = (first_rseq - 1) & _MASK  # "as if rseq 0 had been received"
        self.outstanding: dict[int, Outstanding] = {}
        self.rto_at: float | None = None
        self.dup_acks = 0  # ACK packets in a row that did not move ``acked``
        # The highest rseq the previous ACK's bitmap could report. A message
        # beyond it may have arrived long ago and only now come into the
        # bitmap's 64-message reach: timing it would measure that wait, not the
        # path, so it gives no RTT sample.
        self.sack_reach = (self.acked + 1 + SACK_BITS) & _MASK

    @property
    def in_flight(self) -> int:
        return len(self.outstanding)

    @property
    def room(self) -> int:
        return self.limit - len(self.outstanding)

    def assign(self, data: bytes, priority: int, now: float, rto: float) -> int:
        """Give the next rseq to a message leaving the queue; the caller checked room."""
        rseq = self.next_rseq
        self.next_rseq = (rseq + 1) & _MASK
        self.outstanding[rseq] = Outstanding(data, priority, now)
        if self.rto_at is None:
            self.rto_at = now + rto
        return rseq

    def _check_sent(self, rseq: int) -> None:
        last = (self.next_rseq - 1) & _MASK
        if serial_gt(rseq, last):
            raise Violation(f"acknowledgement for rseq {rseq} never sent (last {last})")

    def on_ack(self, ack: int, bitmap: int | None, now: float, rto: float
               ) -> tuple[float | None, list[int]]:
        """Apply ``ack`` (and the ACK bitmap, if any).

        Returns:
            ``(rtt_sample, fast_retransmit)``: a round-trip sample from a
            message sent once, or None; and the rseqs to retransmit now.

        Raises:
            Violation: ``ack`` or a bitmap bit names an rseq never sent.
        """
        self._check_sent(ack)
        sample: float | None = None
        fast: list[int] = []
        if serial_gt(ack, self.acked):
            rseq = (self.acked + 1) & _MASK
            stop = (ack + 1) & _MASK
            outstanding = self.outstanding
            newest: Outstanding | None = None
            retransmitted = False
            while rseq != stop:
                entry = outstanding.pop(rseq, None)
                if entry is not None:
                    newest = entry
                    retransmitted = retransmitted or entry.retries > 0
                rseq = (rseq + 1) & _MASK
            # Karn's rule: no sample when the ack may have been caused by a
            # retransmission, nor twice for a message already sampled by SACK.
            if newest is not None and not retransmitted and not newest.sacked:
                sample = now - newest.first_sent_at
            self.acked = ack
            self.dup_acks = 0
            # RFC 6298 5.3: restart the timer when new data is acknowledged.
            self.rto_at = now + rto if self.outstanding else None
        elif ack != self.acked:
            return None, fast  # stale (reordered): ignored, bitmap included
        elif bitmap is not None and self.outstanding:
            self.dup_acks += 1
        reach = self.sack_reach
        if bitmap is not None:
            self.sack_reach = (ack + 1 + SACK_BITS) & _MASK
        if bitmap:
            self._check_sent((ack + 1 + bitmap.bit_length()) & _MASK)
            outstanding = self.outstanding
            later = 0
            # Walk from the highest bit down, counting received messages above each hole.
            for i in range(bitmap.bit_length() - 1, -1, -1):
                rseq = (ack + 2 + i) & _MASK
                entry = outstanding.get(rseq)
                if (bitmap >> i) & 1:
                    later += 1
                    if entry is not None and not entry.sacked:
                        entry.sacked = True
                        if (entry.retries == 0 and sample is None
                                and not serial_gt(rseq, reach)):
                            sample = now - entry.first_sent_at
                elif (entry is not None and later >= FAST_RETRANSMIT_THRESHOLD
                      and not entry.fast_retransmitted and not entry.sacked):
                    entry.fast_retransmitted = True
                    fast.append(rseq)
            hole = outstanding.get((ack + 1) & _MASK)
            if (hole is not None and later >= FAST_RETRANSMIT_THRESHOLD
                    and not hole.fast_retransmitted):
                hole.fast_retransmitted = True
                fast.append((ack + 1) & _MASK)
            fast.sort(key=lambda r: (r - ack) & _MASK)
        return sample, fast

    def head_block(self, budget: int) -> list[int]:
        """Fast retransmit on duplicate ACKs: the leading messages not SACKed.

        A receiver ACKs at once on every gap (SPEC 6), so ACKs that repeat one
        ``ack`` say later data arrived, even when the hole is longer than the
        64-message bitmap can show (packing puts many messages in a datagram).
        Marks what it returns, so one hole is resent this way once.
        """
        due: list[int] = []
        size = 0
        for rseq, entry in self.outstanding.items():
            if entry.sacked:
                break
            need = LEN_PREFIX + len(entry.data)
            if due and size + need > budget:
                break
            if not entry.fast_retransmitted:
                entry.fast_retransmitted = True
                due.append(rseq)
                size += need
        return due

    def on_timeout(self, now: float, rto: float, budget: int) -> list[int]:
        """What to resend when the retransmission timer fires (RFC 6298 5.4).

        The earliest messages not SACKed whose time has come, as many as fit
        ``budget`` bytes of one datagram's framing (at least one); if none has
        expired (a fast retransmission reset its clock), the earliest not SACKed.
        """
        due: list[int] = []
        size = 0
        first_unsacked = -1
        for rseq, entry in self.outstanding.items():
            if entry.sacked:
                continue
            if first_unsacked < 0:
                first_unsacked = rseq
            if entry.sent_at + rto > now:
                continue
            need = LEN_PREFIX + len(entry.data)
            if due and size + need > budget:
                break
            due.append(rseq)
            size += need
        if not due and first_unsacked >= 0:
            due.append(first_unsacked)
        return due

    def expired(self, now: float, rto: float) -> list[int]:
        """Messages whose retransmission time has come, oldest first (timer fired)."""
        return [rseq for rseq, e in self.outstanding.items()
                if not e.sacked and e.sent_at + rto <= now]


class ReceiveWindow:
    """The receiver's side: the next expected rseq and the reorder buffer."""

    __slots__ = ("buffer", "buffered_bytes", "limit", "max_bytes", "next_rseq")

    def __init__(self, limit: int, max_bytes: int, first_rseq: int = 1) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.next_rseq = first_rseq & _MASK
        self.buffer: dict[int, bytes] = {}
        self.buffered_bytes = 0

    @property
    def ack(self) -> int:
        """Every rseq up to and including this one has been received."""
        return (self.next_rseq - 1) & _MASK

    def bitmap(self) -> int:
        """Bit i set: rseq ack + 2 + i is held (SPEC section 4, ACK plaintext)."""
        if not self.buffer:
            return 0
        bits = 0
        base = (self.next_rseq + 1) & _MASK
        for rseq in self.buffer:
            i = (rseq - base) & _MASK
            if i < SACK_BITS:
                bits |= 1 << i
        return bits

    def check(self, rseq: int, count: int) -> None:
        """Raise Violation if any of ``count`` messages from ``rseq`` lies beyond the window."""
        last = (rseq + count - 1) & _MASK
        d = (last - self.next_rseq) & _MASK
        if d < _HALF and d >= self.limit:
            raise Violation(f"rseq {last} beyond the receive window (next {self.next_rseq})")

    def receive(self, rseq: int, data: bytes, out: list[bytes]) -> int:
        """Take one message; append what is now deliverable, in order, to ``out``.

        Returns:
            0 in order, 1 buffered out of order (a gap), 2 duplicate,
            3 dropped because the reorder buffer is full.
        """
        d = (rseq - self.next_rseq) & _MASK
        if d >= _HALF:
            return 2  # below next: already delivered
        if d == 0:
            out.append(data)
            nxt = (rseq + 1) & _MASK
            buf = self.buffer
            if buf:
                while nxt in buf:
                    held = buf.pop(nxt)
                    self.buffered_bytes -= len(held)
                    out.append(held)
                    nxt = (nxt + 1) & _MASK
            self.next_rseq = nxt
            return 0
        if rseq in self.buffer:
            return 2
        if self.buffered_bytes + len(data) > self.max_bytes:
            return 3
        self.buffer[rseq] = data
        self.buffered_bytes += len(data)
        return 1
