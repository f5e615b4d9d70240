"""RttEstimator: RFC 6298 retransmission timeout, bounded by MIN_RTO and MAX_RTO (SPEC 6)."""

from __future__ import annotations


class RttEstimator:
    __slots__ = ("base_rto", "max_rto", "min_rto", "rto", "rttvar", "srtt")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.rto = initial_rto
        self.base_rto = initial_rto  # the estimate without backoff
        self.srtt: float | None = None
        self.rttvar = 0.0

    def sample(self, rtt: float) -> None:
        """A round-trip sample, from a first transmission only (Karn's rule)."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(self.max_rto, max(self.min_rto, self.srtt + 4 * self.rttvar))
        self.base_rto = self.rto

    def backoff(self) -> None:
        """Double the timeout after a retransmission timer fired."""
        self.rto = min(self.max_rto, self.rto * 2)

    def reset_backoff(self) -> None:
        """New data was acknowledged: the path works, drop the backoff (RFC 9002 6.2.1).

        Without this, Karn's rule can keep the timeout backed off for good: once
        the head of the window was resent, every cumulative ack covers a
        retransmission and yields no sample.
        """
        self.rto = self.base_rto
