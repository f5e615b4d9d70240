"""Reliable delivery state of one session (docs/protocol.md section 6).

``SendWindow``: unacknowledged messages by rseq, cumulative and selective
acknowledgement by rseq, the peer's credit edge, and the retransmission timer
that backs up loss detection by packet number (:mod:`intentra.core.recovery`).
``ReceiveWindow``: in-order delivery, the reorder buffer, the ``ack`` / bitmap
the receiver reports, and the credit edge it advertises.

rseq and ack compare in serial-number arithmetic modulo 2**32 (RFC 1982).
Neither class reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from intentra.constants import LEN_PREFIX, MAX_CREDIT, RSEQ_MOD

if TYPE_CHECKING:
    from intentra.core.lanes import LaneReceiver
    from intentra.core.session import Session

_MASK: Final = RSEQ_MOD - 1
_HALF: Final = RSEQ_MOD >> 1
SACK_BITS: Final = 64


class Violation(Exception):
    """An authenticated packet broke a rule of docs/protocol.md 4-8 (earns a strike)."""


def serial_gt(a: int, b: int) -> bool:
    """a > b in RFC 1982 serial arithmetic over 32 bits."""
    d = (a - b) & _MASK
    return 0 < d < _HALF


class Outstanding:
    """One reliable message sent and not yet acknowledged."""

    __slots__ = ("data", "first_sent_at", "priority", "retries", "sent_at")

    def __init__(self, data: bytes, priority: int, now: float) -> None:
        self.data = data
        self.priority = priority
        self.first_sent_at = now
        self.sent_at = now
        self.retries = 0


class ExtOutstanding(Outstanding):
    """A record of an extended DATA packet sent and not yet acknowledged (section 14).

    ``data`` is the record's header, ``chunk`` its data; ``message`` the whole
    message it belongs to (reported if the session ends before it is acknowledged),
    ``lane`` and ``lseq`` name it.
    """

    __slots__ = ("chunk", "lane", "lseq", "message")

    def __init__(self, header: bytes, chunk: bytes | memoryview, priority: int, now: float,
                 message: bytes, lane: int, lseq: int) -> None:
        super().__init__(header, priority, now)
        self.chunk = chunk
        self.message = message
        self.lane = lane
        self.lseq = lseq


class SendWindow:
    """The sender's side: what is in flight, what the peer acknowledged, its credit."""

    __slots__ = ("acked", "edge", "limit", "next_rseq", "outstanding", "rto_at")

    def __init__(self, limit: int, first_rseq: int = 1) -> None:
        self.limit = limit
        self.next_rseq = first_rseq & _MASK
        self.acked = (first_rseq - 1) & _MASK  # "as if rseq 0 had been received"
        # The highest credit edge the peer advertised (docs/protocol.md section 6):
        # no rseq beyond it is sent. It starts at 0, so nothing RELIABLE leaves
        # before the peer's first ACK.
        self.edge = self.acked
        self.outstanding: dict[int, Outstanding] = {}
        self.rto_at: float | None = None

    @property
    def in_flight(self) -> int:
        return len(self.outstanding)

    @property
    def credit(self) -> int:
        """Messages the peer's credit still allows beyond those already sent."""
        d = (self.edge - self.next_rseq + 1) & _MASK
        return d if d < _HALF else 0

    @property
    def room(self) -> int:
        """New messages that may leave now: the in-flight limit and the peer's credit."""
        return min(self.limit - len(self.outstanding), self.credit)

    def assign(self, data: bytes, priority: int, now: float, rto: float) -> int:
        """Give the next rseq to a message leaving the queue; the caller checked room."""
        rseq = self.next_rseq
        self.next_rseq = (rseq + 1) & _MASK
        self.outstanding[rseq] = Outstanding(data, priority, now)
        if self.rto_at is None:
            self.rto_at = now + rto
        return rseq

    def assign_ext(self, entry: ExtOutstanding, now: float, rto: float) -> int:
        """Give the next rseq to an extended record (section 14); the caller checked room."""
        rseq = self.next_rseq
        self.next_rseq = (rseq + 1) & _MASK
        self.outstanding[rseq] = entry
        if self.rto_at is None:
            self.rto_at = now + rto
        return rseq

    def _check_sent(self, rseq: int) -> None:
        last = (self.next_rseq - 1) & _MASK
        if serial_gt(rseq, last):
            raise Violation(f"acknowledgement for rseq {rseq} never sent (last {last})")

    def check_ack(self, ack: int, bitmap: int) -> None:
        """Raise Violation if ``ack`` or a bitmap bit names an rseq never sent."""
        self._check_sent(ack)
        if bitmap:
            self._check_sent((ack + 1 + bitmap.bit_length()) & _MASK)

    def on_ack(self, ack: int, bitmap: int) -> bool:
        """Apply a checked ``ack`` (and rseq bitmap); True if it acknowledged anything.

        A stale ``ack`` (below one already applied: reordering) is ignored,
        its bitmap included.
        """
        outstanding = self.outstanding
        moved = False
        if serial_gt(ack, self.acked):
            rseq = (self.acked + 1) & _MASK
            stop = (ack + 1) & _MASK
            if len(outstanding) <= ((ack - self.acked) & _MASK):
                # Keys are in rseq order (assign() inserts them so): when the newest
                # is acknowledged, so is everything.
                if outstanding and not serial_gt(next(reversed(outstanding)), ack):
                    outstanding.clear()
                    moved = True
                else:
                    for r in [r for r in outstanding if not serial_gt(r, ack)]:
                        del outstanding[r]
                        moved = True
            else:
                while rseq != stop:
                    if outstanding.pop(rseq, None) is not None:
                        moved = True
                    rseq = (rseq + 1) & _MASK
            self.acked = ack
        elif ack != self.acked:
            return False
        while bitmap:
            low = bitmap & -bitmap
            if outstanding.pop((ack + low.bit_length() + 1) & _MASK, None) is not None:
                moved = True
            bitmap ^= low
        return moved

    def apply_credit(self, ack: int, credit: int) -> bool:
        """Take the edge ``ack + credit`` of one ACK if it is the highest yet."""
        edge = (ack + credit) & _MASK
        if serial_gt(edge, self.edge):
            self.edge = edge
            return True
        return False

    def on_timeout(self, now: float, rto: float, budget: int) -> list[int]:
        """What to resend when the retransmission timer fires (RFC 6298 5.4).

        The earliest messages whose time has come, as many as fit ``budget``
        bytes of one datagram's framing (at least one); if none has expired (a
        loss-detected retransmission reset its clock), the earliest one.
        """
        due: list[int] = []
        size = 0
        first = -1
        for rseq, entry in self.outstanding.items():
            if first < 0:
                first = rseq
            if entry.sent_at + rto > now:
                continue
            need = LEN_PREFIX + len(entry.data)
            if type(entry) is ExtOutstanding:
                need += len(entry.chunk)
            if due and size + need > budget:
                break
            due.append(rseq)
            size += need
        if not due and first >= 0:
            due.append(first)
        return due


class CreditBudget:
    """What all the sessions of one endpoint may hold for reordering and for an
    application that has not read yet, in bytes (docs/protocol.md section 8).

    Each session accounts its reservation here when it advertises credit; a
    session may always keep ``floor`` bytes of its own, so a session opened while
    others hold the whole budget still gets credit (the bound is ``limit`` plus
    ``floor`` per session).

    ``favored`` is the one session that may be credited up to its whole
    MAX_REORDER_BUFFER however little is left, while it holds a partial RELIABLE
    message (docs/protocol.md section 12): partial messages of several sessions then
    cannot wait for each other's room for ever. The bound grows by one
    MAX_REORDER_BUFFER.
    """

    __slots__ = ("favored", "floor", "limit", "reserved")

    def __init__(self, limit: int, floor: int) -> None:
        self.limit = limit
        self.floor = floor
        self.reserved = 0
        self.favored: Session | None = None


class ReceiveWindow:
    """The receiver's side: the next expected rseq, the reorder buffer and the credit.

    Credit (docs/protocol.md section 6): every position between ``next`` and the
    advertised ``edge`` that has not arrived yet is reserved at ``reserve`` bytes
    (the largest message a datagram carries); what has arrived, in the reorder
    buffer or delivered but not yet read by the application (``unread_bytes``),
    counts at its real size. Together they stay within ``max_bytes``, so a
    message within the edge always finds room, and the edge never moves back.
    """

    __slots__ = ("buffer", "buffered_bytes", "edge", "first_rseq", "gap_since", "lanes",
                 "max_bytes", "next_rseq", "reserve", "unread_bytes")

    def __init__(self, max_bytes: int, reserve: int, first_rseq: int = 1) -> None:
        self.max_bytes = max_bytes
        self.reserve = reserve
        self.first_rseq = first_rseq & _MASK
        self.next_rseq = first_rseq & _MASK
        self.edge = (first_rseq - 1) & _MASK   # the highest edge advertised
        # Positions held out of order: the message of an X = 0 packet, or None for a
        # record of an extended packet (its bytes are in ``lanes``, section 14).
        self.buffer: dict[int, bytes | None] = {}
        self.buffered_bytes = 0
        self.unread_bytes = 0
        self.gap_since: float | None = None    # when the current hole at next opened
        self.lanes: LaneReceiver | None = None  # made by the first extended record

    @property
    def ack(self) -> int:
        """Every rseq up to and including this one has been received."""
        return (self.next_rseq - 1) & _MASK

    def bitmap(self) -> int:
        """Bit i set: rseq ack + 2 + i is held (docs/protocol.md section 4, ACK)."""
        if not self.buffer:
            return 0
        bits = 0
        base = (self.next_rseq + 1) & _MASK
        for rseq in self.buffer:
            i = (rseq - base) & _MASK
            if i < SACK_BITS:
                bits |= 1 << i
        return bits

    def reservation(self) -> int:
        """Bytes this window holds or has promised: what arrived at its size, every
        position up to the advertised edge not yet arrived at ``reserve``."""
        open_positions = ((self.edge - self.next_rseq + 1) & _MASK) - len(self.buffer)
        if not 0 < open_positions < _HALF:
            open_positions = 0
        lanes = self.lanes
        held = self.buffered_bytes + self.unread_bytes
        if lanes is not None:
            held += lanes.held
        return held + open_positions * self.reserve

    def proposed_edge(self, cap: int | None = None) -> int:
        """The edge the receiver can hold now (before the never-backwards rule), with
        at most ``cap`` bytes held and promised in all (the endpoint's share)."""
        limit = self.max_bytes if cap is None else min(self.max_bytes, cap)
        room = limit - self.buffered_bytes - self.unread_bytes
        lanes = self.lanes
        if lanes is not None:
            room -= lanes.held
        n = (room // self.reserve if room > 0 else 0) + len(self.buffer)
        return (self.ack + min(n, MAX_CREDIT)) & _MASK

    def advertise(self, cap: int | None = None) -> int:
        """The ``credit`` for an ACK now; moves ``edge`` up, never back."""
        ack = self.ack
        proposed = self.proposed_edge(cap)
        if serial_gt(proposed, self.edge):
            self.edge = proposed
        credit = (self.edge - ack) & _MASK
        return credit if credit < _HALF else 0

    def edge_gain(self) -> int:
        """How far the edge would move up if advertised now."""
        d = (self.proposed_edge() - self.edge) & _MASK
        return d if d < _HALF else 0

    def check(self, rseq: int, count: int) -> None:
        """Raise Violation if any of ``count`` messages from ``rseq`` lies beyond the edge."""
        last = (rseq + count - 1) & _MASK
        if serial_gt(last, self.edge):
            raise Violation(f"rseq {last} beyond the credit edge {self.edge}")

    def receive(self, rseq: int, data: bytes, out: list[bytes]) -> int:
        """Take one message; append what is now deliverable, in order, to ``out``.

        Returns:
            0 in order, 1 buffered out of order (a gap), 2 duplicate,
            3 dropped because the reorder buffer is full (never within the edge).
        """
        d = (rseq - self.next_rseq) & _MASK
        if d >= _HALF:
            return 2  # below next: already delivered
        if d == 0:
            out.append(data)
            if self.lanes is not None:
                self.lanes.delivered_x0(out)  # it was lane 0's next (section 14.5 step 4)
            if self.buffer:
                self._advance((rseq + 1) & _MASK, out)
            else:
                self.next_rseq = (rseq + 1) & _MASK
            return 0
        if rseq in self.buffer:
            return 2
        if self.buffered_bytes + len(data) > self.max_bytes:
            return 3
        self.buffer[rseq] = data
        self.buffered_bytes += len(data)
        return 1

    def _advance(self, nxt: int, out: list[bytes]) -> None:
        """Position ``nxt - 1`` was received in order: move ``next`` over every held
        position that follows, delivering the messages of X = 0 packets among them."""
        buf = self.buffer
        if buf:
            lanes = self.lanes
            while nxt in buf:
                held = buf.pop(nxt)
                if held is not None:
                    self.buffered_bytes -= len(held)
                    out.append(held)
                    if lanes is not None:
                        lanes.delivered_x0(out)
                nxt = (nxt + 1) & _MASK
        self.next_rseq = nxt

    def lane_receiver(self) -> LaneReceiver:
        """The lanes' state, made by the first extended record (section 14.5).

        Until then every position before ``next`` held one message of an X = 0
        packet, each one of lane 0 (section 14.5 step 4): lane 0's next ``lseq``
        follows from ``next`` without counting messages on the way.
        """
        lanes = self.lanes
        if lanes is None:
            from intentra.core.lanes import LaneReceiver  # noqa: PLC0415 (import cycle)
            lanes = self.lanes = LaneReceiver()
            lanes.next[0] = (self.next_rseq - self.first_rseq + 1) & _MASK
        return lanes

    def is_duplicate(self, rseq: int) -> bool:
        """Position ``rseq`` was received before (section 14.5 step 3.1)."""
        d = (rseq - self.next_rseq) & _MASK
        return d >= _HALF or rseq in self.buffer

    def receive_record(self, rseq: int, out: list[bytes]) -> None:
        """Position ``rseq`` of an extended record was received (section 14.5 step 3.4);
        the caller checked it is no duplicate and gave its bytes to ``lanes``. Messages
        of X = 0 packets now in order are appended to ``out``."""
        if rseq == self.next_rseq:
            self._advance((rseq + 1) & _MASK, out)
        else:
            self.buffer[rseq] = None
