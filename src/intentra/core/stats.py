"""Plain integer counters named after docs/protocol.md section 11.

The hot path bumps attributes; :mod:`intentra.metrics` reads them only when
scraped. Gauges (handshakes in flight, active connections, reorder bytes) are
computed by the endpoint on demand, not stored here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class Stats:
    packets_received: int = 0
    packets_sent: int = 0
    packets_dropped_malformed: int = 0
    packets_dropped_unknown: int = 0
    packets_dropped_rate_limit: int = 0
    packets_dropped_crypto: int = 0
    replay_rejections: int = 0
    handshakes_completed: int = 0
    handshakes_rejected: int = 0
    handshakes_failed: int = 0
    cookie_replies: int = 0
    strike_events: int = 0
    connection_closes: int = 0
    retransmissions: int = 0
    messages_delivered_reliable: int = 0
    messages_delivered_realtime: int = 0
    messages_sent_reliable: int = 0
    messages_sent_realtime: int = 0
    messages_dropped_deadline: int = 0
    messages_dropped_queue_full: int = 0
    messages_dropped_reorder_full: int = 0
    messages_dropped_congestion: int = 0
    messages_dropped_receive_queue: int = 0
    messages_dropped_reassembly: int = 0
    key_updates_send: int = 0
    key_updates_receive: int = 0
    roams: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
