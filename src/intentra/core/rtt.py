"""RttEstimator: RTT samples by packet number (docs/protocol.md section 6).

Samples come from packet-number acknowledgements only (RFC 9002 section 5):
the peer's reported ``ack_delay`` is taken off a sample unless that would put it
below the minimum RTT seen. The retransmission timeout is RFC 6298's estimator
over those samples, bounded by MIN_RTO and MAX_RTO; the probe timeout is RFC
9002's ``srtt + max(4 x rttvar, 1 ms) + ACK_DELAY``.
"""

from __future__ import annotations

from intentra.constants import ACK_DELAY

_GRANULARITY = 0.001


class RttEstimator:
    __slots__ = ("adjusted", "base_rto", "initial_rto", "latest", "max_rto", "min_rto",
                 "min_rtt", "rto", "rttvar", "samples", "srtt")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.rto = initial_rto
        self.base_rto = initial_rto  # the estimate without backoff
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.latest = 0.0
        self.adjusted = 0.0       # the latest sample less the peer's ACK delay
        self.samples = 0
        self.min_rtt: float | None = None

    def reset(self) -> None:
        """Forget every sample (a new path)."""
        self.__init__(self.initial_rto, self.min_rto, self.max_rto)  # type: ignore[misc]

    def sample(self, rtt: float, ack_delay: float = 0.0) -> None:
        """A round-trip sample; ``ack_delay`` is the peer's, already capped at ACK_DELAY."""
        rtt = max(rtt, 0.0)
        self.samples += 1
        self.latest = rtt
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        if rtt - ack_delay >= self.min_rtt:
            rtt -= ack_delay
        self.adjusted = rtt
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(self.max_rto, max(self.min_rto, self.srtt + 4 * self.rttvar))
        self.base_rto = self.rto

    @property
    def pto(self) -> float:
        """The probe timeout before backoff (RFC 9002 section 6.2)."""
        if self.srtt is None:
            srtt, rttvar = self.initial_rto, self.initial_rto / 2
        else:
            srtt, rttvar = self.srtt, self.rttvar
        return srtt + max(4 * rttvar, _GRANULARITY) + ACK_DELAY

    def backoff(self) -> None:
        """Double the timeout after a retransmission timer fired."""
        self.rto = min(self.max_rto, self.rto * 2)

    def reset_backoff(self) -> None:
        """New data was acknowledged: the path works, drop the backoff (RFC 9002 6.2.1)."""
        self.rto = self.base_rto
