"""Packet-number acknowledgements, loss detection and RTT of one sending direction.

Owns: the record of every ack-eliciting or DATA packet sent and not yet
acknowledged or lost, the checks of an ACK's ``largest_pn`` and ``pn_bitmap``
(docs/protocol.md section 4), RTT samples, loss detection by packet and time
threshold (RFC 9002 section 6.1, as docs/protocol.md section 6 says), the probe
timeout's bookkeeping, delivery-rate samples (draft-cheng-iccrg-delivery-rate-
estimation) and the bytes in flight, which it reports to the congestion
controller.
Never: reads a clock; changes anything for an ACK that breaks a rule (the
checks run first, then the state moves).
"""

from __future__ import annotations

from collections import deque
from typing import Final

from intentra.constants import ACK_DELAY, PN_BITMAP_BITS
from intentra.core.congestion import Controller
from intentra.core.reliable import Violation
from intentra.core.rtt import RttEstimator

PACKET_THRESHOLD: Final = 3
"""A pn is lost when one sent this many later is acknowledged (RFC 9002 kPacketThreshold)."""
TIME_THRESHOLD: Final = 9 / 8
GRANULARITY: Final = 0.001
MAX_REORDER_THRESHOLD: Final = 64
MAX_TIME_THRESHOLD: Final = 4.0
LOST_KEPT: Final = 256
"""Packets declared lost remembered, to find out which were only reordered."""
SKIPPED_KEPT: Final = 32
"""Skipped pns remembered for the optimistic-ACK check (the newest ones)."""


class SentPacket:
    """One packet sent and not yet acknowledged or declared lost."""

    __slots__ = ("app_limited", "count", "delivered", "delivered_at", "eliciting",
                 "first_sent_at", "in_flight", "later_acked_at", "rseq", "sent_at", "size")

    def __init__(self, size: int, sent_at: float, eliciting: bool, in_flight: bool,
                 rseq: int, count: int, delivered: int, delivered_at: float,
                 first_sent_at: float, app_limited: bool) -> None:
        self.size = size
        self.sent_at = sent_at
        self.eliciting = eliciting
        self.in_flight = in_flight
        self.rseq = rseq            # first RELIABLE message carried (count 0: none)
        self.count = count
        self.delivered = delivered
        self.delivered_at = delivered_at
        self.first_sent_at = first_sent_at
        self.app_limited = app_limited
        self.later_acked_at: float | None = None


class Recovery:
    """The sender's view of its packets in flight (one session, one direction)."""

    __slots__ = ("app_limited_mark", "cc", "delivered", "delivered_at", "eliciting",
                 "eliciting_sent_at", "first_sent_at", "in_flight",
                 "largest_acked", "last_ack_at", "loss_at", "lost_recent", "pto_count",
                 "reorder_threshold", "rtt", "sent", "skipped", "spurious", "time_threshold",
                 "waiting_since")

    def __init__(self, rtt: RttEstimator, cc: Controller, now: float) -> None:
        self.rtt = rtt
        self.cc = cc
        self.sent: dict[int, SentPacket] = {}
        self.in_flight = 0            # bytes of DATA in flight
        self.eliciting = 0            # ack-eliciting packets sent, not acknowledged or lost
        self.eliciting_sent_at = now  # when the newest of them was sent
        self.waiting_since = now      # when the oldest of them was sent
        self.delivered = 0            # bytes of DATA acknowledged, ever
        self.delivered_at = now
        self.first_sent_at = now
        self.app_limited_mark = 0     # samples are app-limited until delivered passes it
        self.largest_acked = 0
        self.last_ack_at = now
        self.loss_at: float | None = None
        self.pto_count = 0
        self.skipped: deque[int] = deque(maxlen=SKIPPED_KEPT)
        # Reordering is not loss: packets declared lost are remembered a while, and
        # one acknowledged after all widens both thresholds (RFC 9002 6.1 allows
        # it; RACK, RFC 8985, does the same) and undoes the controller's backoff.
        self.lost_recent: dict[int, int] = {}  # pn -> largest acknowledged when declared
        self.reorder_threshold = PACKET_THRESHOLD
        self.time_threshold = TIME_THRESHOLD
        self.spurious = 0                      # losses found spurious, for status/tests

    # --------------------------------------------------------------- sending

    def on_sent(self, pn: int, size: int, data: bool, rseq: int, count: int,
                now: float, eliciting: bool = True) -> None:
        """Record a DATA packet (in flight) or an ack-eliciting ACK (RTT only)."""
        if data:
            if self.in_flight == 0:
                self.first_sent_at = now
                self.delivered_at = now
            self.in_flight += size
            self.cc.on_sent(size, now)
        if eliciting:
            if self.eliciting <= 0:
                self.waiting_since = now
            self.eliciting += 1
            self.eliciting_sent_at = now
        self.sent[pn] = SentPacket(size, now, eliciting, data, rseq, count, self.delivered,
                                   self.delivered_at, self.first_sent_at,
                                   self.app_limited_mark != 0)

    def mark_app_limited(self) -> None:
        """The sender ran out of data with room in the window (BBR's app-limited mark)."""
        self.app_limited_mark = max(self.delivered + self.in_flight, 1)

    # ------------------------------------------------------------ ACKs

    def check_ack(self, largest: int, bitmap: int, pn_next: int) -> None:
        """Raise Violation if the ACK names a pn never sent (docs/protocol.md section 4)."""
        if largest >= pn_next:
            raise Violation(f"ACK largest_pn {largest} was never sent (next {pn_next})")
        if largest == 0:
            if bitmap:
                raise Violation("ACK pn_bitmap set without a largest_pn")
            return
        if bitmap >> max(largest - 1, 0):
            raise Violation("ACK pn_bitmap names a pn below 1")
        for pn in self.skipped:
            if pn == largest or (pn < largest and (bitmap >> (largest - 1 - pn)) & 1):
                raise Violation(f"ACK names pn {pn}, which was skipped (optimistic ACK)")

    def on_ack(self, largest: int, bitmap: int, ack_delay: float, now: float
               ) -> tuple[list[SentPacket], list[SentPacket]]:
        """Apply a checked ACK: newly acknowledged and newly lost packets, oldest first."""
        sent = self.sent
        acked: list[SentPacket] = []
        newest = sent.pop(largest, None)
        if newest is not None:
            acked.append(newest)
        elif self.lost_recent:
            self._maybe_spurious(largest)
        bits = bitmap
        while bits:
            low = bits & -bits
            pn = largest - low.bit_length()
            p = sent.pop(pn, None)
            if p is not None:
                acked.append(p)
            elif self.lost_recent:
                self._maybe_spurious(pn)
            bits ^= low
        rtt = self.rtt
        sample: float | None = None
        if newest is not None and newest.eliciting:
            rtt.sample(now - newest.sent_at, min(ack_delay, ACK_DELAY))
            sample = rtt.adjusted  # the controller sees the path, not the peer's ACK delay
        self.largest_acked = max(self.largest_acked, largest)
        rate: float | None = None
        app_limited = False
        prior_delivered = -1
        if acked:
            self.last_ack_at = now
            self.pto_count = 0
            top: SentPacket | None = None
            for p in acked:
                self.eliciting -= p.eliciting
                if p.in_flight:
                    self.in_flight -= p.size
                    self.delivered += p.size
                    if top is None or p.sent_at > top.sent_at:
                        top = p
            if top is not None:
                self.delivered_at = now
                interval = max(top.sent_at - top.first_sent_at, now - top.delivered_at)
                if interval > 0.0:
                    rate = (self.delivered - top.delivered) / interval
                app_limited = top.app_limited
                prior_delivered = top.delivered
                self.first_sent_at = top.sent_at
                if self.app_limited_mark and self.delivered > self.app_limited_mark:
                    self.app_limited_mark = 0
            acked.reverse()  # popped newest first
        lost = self._detect_lost(now, largest)
        cc = self.cc
        if prior_delivered >= 0:
            cc.on_ack(self.delivered, prior_delivered, rate, app_limited, sample,
                      self.in_flight, now)
        if lost:
            cc.on_loss(sum(p.size for p in lost if p.in_flight), self.in_flight, now)
        return acked, lost

    def _maybe_spurious(self, pn: int) -> None:
        """An acknowledged pn we had declared lost: it was only reordered."""
        declared_at = self.lost_recent.pop(pn, None)
        if declared_at is None:
            return
        self.spurious += 1
        self.reorder_threshold = min(max(self.reorder_threshold, declared_at - pn + 1),
                                     MAX_REORDER_THRESHOLD)
        self.time_threshold = min(self.time_threshold + 0.25, MAX_TIME_THRESHOLD)
        self.cc.on_spurious_loss()

    def _loss_delay(self) -> float:
        rtt = self.rtt
        srtt = rtt.srtt if rtt.srtt is not None else rtt.base_rto
        return max(self.time_threshold * max(srtt, rtt.latest), GRANULARITY)

    def _detect_lost(self, now: float, largest: int) -> list[SentPacket]:
        """Packets below the largest acknowledged that are now lost (RFC 9002 6.1)."""
        lost: list[SentPacket] = []
        self.loss_at = None
        top = self.largest_acked
        if not self.sent or next(iter(self.sent)) >= top:
            return lost  # nothing unacknowledged below the largest acknowledged
        delay = self._loss_delay()
        gone: list[int] = []
        loss_at: float | None = None
        low = largest - PN_BITMAP_BITS
        threshold = self.reorder_threshold
        for pn, p in self.sent.items():
            if pn >= top:
                break
            # Packet threshold: this ACK reported pn missing within its range.
            if low <= pn <= largest - threshold:
                gone.append(pn)
                continue
            # Time threshold, counted from when a later pn was first acknowledged.
            if p.later_acked_at is None:
                p.later_acked_at = now
            due = p.later_acked_at + delay
            if now >= due:
                gone.append(pn)
            elif loss_at is None or due < loss_at:
                loss_at = due
        recent = self.lost_recent
        for pn in gone:
            p = self.sent.pop(pn)
            recent[pn] = top
            self.eliciting -= p.eliciting
            if p.in_flight:
                self.in_flight -= p.size
            lost.append(p)
        if len(recent) > LOST_KEPT:
            for pn in list(recent)[:len(recent) - LOST_KEPT]:
                del recent[pn]
        self.loss_at = loss_at
        return lost

    def on_loss_timer(self, now: float) -> list[SentPacket]:
        """The time threshold of a packet passed: what is lost now."""
        lost = self._detect_lost(now, 0)
        if lost:
            self.cc.on_loss(sum(p.size for p in lost if p.in_flight), self.in_flight, now)
        return lost

    # ------------------------------------------------------------ probe timeout

    def pto_at(self) -> float | None:
        """When to probe: a PTO after the newest ack-eliciting packet still unanswered,
        doubled per unanswered probe (RFC 9002 section 6.2.1).

        Only ack-eliciting packets arm it: a receiver owes no prompt ACK for a
        REALTIME packet that did not ask, so a quiet sender whose packets mostly
        do not ask would otherwise probe every PTO.
        """
        if self.eliciting <= 0:
            return None
        base = max(self.last_ack_at, self.eliciting_sent_at)
        return base + self.rtt.pto * (1 << min(self.pto_count, 16))

    def reset_path(self, now: float) -> None:
        """A new path: congestion control and RTT start afresh (roaming)."""
        self.cc.reset(now)
        self.rtt.reset()
