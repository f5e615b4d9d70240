"""PeerStatus: what an application reads of one session's path and queues.

The figures GameNetworkingSockets users read from ``GetConnectionRealTimeStatus``:
enough to lower an update rate when the path is full, before REALTIME messages
are dropped for it. A snapshot, built on request (:meth:`intentra.Peer.status`),
never kept up to date on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from intentra.core.session import Session


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One session's state at one moment. Times in seconds, rates in bytes per second."""

    rtt: float | None
    """Smoothed round-trip time (None before the first sample)."""
    min_rtt: float | None
    """Lowest round-trip time seen on this path."""
    rtt_variance: float
    """RTT variation (RFC 6298 ``rttvar``)."""
    send_rate: float
    """Bytes per second this session sent (datagrams, headers included), measured since
    the previous ``status()`` of this peer (or since the session began)."""
    pacing_rate: float
    """The congestion controller's pacing rate, bytes per second (high and meaningless
    while it is still probing an idle path: see ``bandwidth``)."""
    bandwidth: float
    """The estimated bottleneck bandwidth (0 before the first estimate; an application
    that sends little only measures what it sends)."""
    congestion_window: int
    """Bytes the controller allows in flight."""
    bytes_in_flight: int
    """DATA bytes sent and not yet acknowledged or declared lost."""
    queued_reliable: int
    """RELIABLE messages waiting to be sent (for room, credit or the pacer)."""
    queued_realtime: int
    """REALTIME messages waiting to be sent."""
    in_flight_reliable: int
    """RELIABLE messages sent and not yet acknowledged."""
    credit: int
    """RELIABLE messages the peer's credit still allows beyond those sent (0: it has
    not read what it has; ``await peer.send`` waits)."""
    received_unread: int
    """Messages from this peer delivered to the transport and not yet received by
    the application."""
    dropped_congestion: int
    """REALTIME messages dropped at the sender: the path could not take them in time."""
    dropped_deadline: int
    """REALTIME messages dropped at the sender: older than ``realtime_deadline``."""
    dropped_queue_full: int
    """REALTIME messages refused: the send queue was full."""
    retransmissions: int
    """RELIABLE messages this session resent."""

    @classmethod
    def of(cls, session: Session, unread: int, send_rate: float) -> PeerStatus:
        rtt = session.rtt
        cc = session.cc
        window = session.send_window
        return cls(
            rtt=rtt.srtt, min_rtt=rtt.min_rtt, rtt_variance=rtt.rttvar,
            send_rate=send_rate, pacing_rate=cc.pacing_rate, bandwidth=cc.btl_bw,
            congestion_window=int(cc.cwnd),
            bytes_in_flight=session.recovery.in_flight,
            queued_reliable=session.queued_reliable, queued_realtime=session.realtime_queued,
            in_flight_reliable=window.in_flight, credit=window.credit,
            received_unread=unread,
            dropped_congestion=session.dropped_congestion,
            dropped_deadline=session.dropped_deadline,
            dropped_queue_full=session.dropped_queue_full,
            retransmissions=session.retransmitted)
