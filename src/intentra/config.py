"""EndpointConfig: every tunable of docs/protocol.md section 2, with its default.

Times are in seconds, sizes in bytes. The wire sizes that cannot change live in
:mod:`intentra.constants`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from intentra.constants import (
    ACK_DELAY,
    HEADER_LEN,
    LEN_PREFIX,
    MAX_MESSAGE_LIMIT,
    MAX_PACKET_SIZE,
    RSEQ_LEN,
    TAG_LEN,
)
from intentra.errors import ConfigError


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Tunables of one endpoint. Defaults are docs/protocol.md section 2."""

    max_connections: int = 10_000
    """Sessions plus pending handshakes per endpoint."""
    max_handshakes_in_flight: int = 100
    """Pending, cookie-verified handshakes for the whole endpoint."""
    max_handshakes_per_ip: int = 5
    """Pending handshakes per source IP address."""
    handshake_timeout: float = 5.0
    """Seconds before a pending handshake is dropped (and an initiator gives up)."""
    idle_timeout: float = 60.0
    """Seconds without an authenticated packet before a session is closed."""
    keepalive_interval: float = 15.0
    """Seconds of silence after which a side sends an ACK that asks for an answer."""
    peer_timeout: float = 5.0
    """Seconds of silence from the peer while this side waits for an acknowledgement
    (data or a keepalive outstanding) before the session is closed with TIMEOUT; never
    less than three probe timeouts of the path. A dead peer is noticed within this of
    the first unanswered packet, and within keepalive_interval + this when idle."""
    rate_limit_pps: float = 10_000.0
    """Token bucket refill per session, packets per second (applied before decryption)."""
    rate_limit_burst: float = 500.0
    """Token bucket depth per session, packets."""
    strike_threshold: int = 10
    """Authenticated violations that close a session."""
    strike_decay: float = 5.0
    """Seconds after which the strike count starts again from zero."""
    max_reliable_in_flight: int = 256
    """Unacknowledged reliable messages per session and direction."""
    max_reorder_buffer: int = 1_310_720
    """Reliable bytes a receiver holds per session, bytes: out of order, in partial
    messages, or delivered and not yet read (it bounds the credit given). At least
    ``max_message_size + max_datagram``; the default is max_message_size's default
    plus 256 KiB."""
    max_reorder_total: int = 64 * 1024 * 1024
    """Reliable bytes all sessions of the endpoint together hold, out of order or not yet
    read by the application (it bounds the credit given out; each session may keep
    4 datagrams' worth beyond it)."""
    replay_window: int = 1024
    """Packet numbers remembered below the highest seen."""
    cookie_rotation: float = 120.0
    """Cookie secret lifetime, seconds; the previous secret is still accepted."""
    require_cookie: bool = True
    """Answer every HELLO without a valid cookie with COOKIE (docs/protocol.md section 7)."""
    initial_rto: float = 0.25
    """First retransmission timeout, seconds."""
    min_rto: float = 0.02
    """Lower bound of the retransmission timeout, seconds."""
    max_rto: float = 2.0
    """Upper bound of the retransmission timeout, seconds."""
    handshake_max_rto: float = 0.5
    """Cap of the HELLO / FINISH resend backoff, seconds (handshake packets are small and
    the initiator's own: under 30% loss each way, a 2 s cap left 18% of handshakes
    unfinished at HANDSHAKE_TIMEOUT, 0.5 s about 1%)."""
    max_retransmissions: int = 10
    """Attempts for one reliable message before the session is closed (TIMEOUT)."""
    ack_delay: float = 0.01
    """Longest this receiver waits before acknowledging an ack-eliciting packet, seconds
    (at most ACK_DELAY, 10 ms: the peer's timers rely on it)."""
    ack_every: int = 32
    """A receiver acknowledges at once when it has authenticated a DATA pn this many
    beyond its previous ACK's ``largest_pn`` (ACK_EVERY)."""
    max_datagram: int = 1200
    """Largest datagram a sender builds, bytes (at most MAX_PACKET_SIZE)."""
    max_message_size: int = 1 << 20
    """Largest message sent or accepted, bytes (at most 64 MiB); longer than a datagram
    carries, it travels in fragments (docs/protocol.md section 14). Configure peers alike:
    a fragment declaring more than the receiver's limit is a violation."""
    max_realtime_reassembly: int = 2 << 20
    """Bytes of partial REALTIME messages a receiver holds per session (section 14.7);
    beyond it the session's oldest partial messages are discarded."""
    max_realtime_reassembly_total: int = 32 << 20
    """The same bound for all the sessions of the endpoint together, bytes."""
    key_update_packets: int = 1 << 24
    """Packets under one key before the sender moves to the next."""
    key_update_time: float = 120.0
    """Seconds under one key before the sender moves to the next."""
    key_update_min_interval: float = 10.0
    """Minimum seconds between two key updates of one sender."""
    key_update_catch_up: int = 3
    """Keys beyond the next a receiver also tries after a silence of key_update_min_interval
    (0: docs/protocol.md section 5 alone, no catch-up; see ReceiveKeys.open)."""
    pn_limit: int = 1 << 62
    """Packet number at which a sender closes with KEY_EXHAUSTED."""
    realtime_deadline: float = 0.1
    """Seconds a REALTIME message may wait in the send queue before it is dropped."""
    realtime_queue_delay: float = 0.01
    """Seconds of sending, at the congestion controller's pacing rate, that queued
    REALTIME messages may amount to when the path is full; beyond it the lowest
    priority, oldest are dropped at the sender (counted as congestion drops)."""
    congestion_control: bool = True
    """Limit and pace DATA by the congestion controller (docs/protocol.md section 8).
    False sends everything queued at once, as version 1 did: only for load generators
    and links nobody else shares; on a shared network it fills queues and loses data."""
    max_send_queue: int = 4096
    """Messages waiting in one session's send queue; beyond it REALTIME sends are dropped."""
    max_send_queue_bytes: int = 4 << 20
    """Bytes of the messages waiting in one session's send queue, both intents (a large
    one counts until its last fragment has left); beyond it REALTIME sends are dropped,
    ``send_nowait`` of RELIABLE raises and ``await send`` waits. At least
    max_message_size; the default is four of max_message_size's default."""
    initial_pn: int = 1
    """First packet number a sender uses. Testing only: start near 2**32 to test the wrap."""
    # --- defences against forged handshake packets and floods (docs/security.md, issue 9)
    handshake_attempt_rate: float = 16.0
    """RESPONSE reads that failed or proved a refused key, per second per initiator handshake
    after the burst (each costs about 0.13 ms of Noise work); forged ones cannot end it."""
    handshake_attempt_burst: float = 8.0
    """Depth of that per-handshake budget, RESPONSE reads."""
    cookie_candidates: int = 8
    """Distinct COOKIE values an initiator keeps (and counts) per handshake, cookies."""
    cookie_hellos: int = 2
    """HELLOs an initiator sends per round, one per best cookie candidate, datagrams."""
    ipv6_prefix: int = 64
    """Leading bits of an IPv6 source that MAX_HANDSHAKES_PER_IP counts as one source, bits."""
    failed_open_pps: float = 10_000.0
    """AEAD opens that may fail per second per session, apart from RATE_LIMIT_PPS, and
    apart again for the session's own address and any other (forgeries spend only this)."""
    failed_open_burst: float = 500.0
    """Depth of each failed-open allowance, packets."""
    message_cost: float = 0.5
    """Tokens of the session's bucket charged per message delivered beyond a packet's first,
    tokens: a peer gets at most about rate_limit_pps / message_cost messages a second
    (20,000) however it packs them; 0 charges packets only."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or f.name in ("key_update_catch_up", "message_cost"):
                continue
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(
                    f"EndpointConfig.{f.name} must be a positive number, got {value!r}")
        if not HEADER_LEN + TAG_LEN + RSEQ_LEN + LEN_PREFIX < self.max_datagram <= MAX_PACKET_SIZE:
            raise ConfigError(
                f"EndpointConfig.max_datagram must be between {HEADER_LEN + TAG_LEN + 7} and "
                f"{MAX_PACKET_SIZE}, got {self.max_datagram}"
            )
        if self.max_message_size > MAX_MESSAGE_LIMIT:
            raise ConfigError(f"EndpointConfig.max_message_size must be at most "
                              f"{MAX_MESSAGE_LIMIT} (64 MiB), got {self.max_message_size}")
        if self.max_reorder_buffer < self.max_message_size + self.max_datagram:
            # The credit reserves max_datagram bytes per position (docs/protocol.md 8)
            # and a RELIABLE message is held whole until its last fragment (14.7): a
            # smaller buffer could never complete the largest message, and RELIABLE
            # would wait for ever instead of failing here.
            raise ConfigError(
                f"EndpointConfig.max_reorder_buffer must be at least max_message_size + "
                f"max_datagram ({self.max_message_size + self.max_datagram}), got "
                f"{self.max_reorder_buffer}; raise it or lower max_message_size")
        if self.max_send_queue_bytes < self.max_message_size:
            # The largest message must fit an empty queue, or ``await send`` of it
            # would wait for ever.
            raise ConfigError(
                f"EndpointConfig.max_send_queue_bytes must be at least max_message_size "
                f"({self.max_message_size}), got {self.max_send_queue_bytes}; raise it or "
                "lower max_message_size")
        if not self.min_rto <= self.initial_rto <= self.max_rto:
            raise ConfigError("EndpointConfig needs min_rto <= initial_rto <= max_rto")
        if self.max_reliable_in_flight >= 1 << 31:
            raise ConfigError("EndpointConfig.max_reliable_in_flight must be below 2**31")
        if not 0 <= self.message_cost <= self.rate_limit_burst:
            raise ConfigError("EndpointConfig.message_cost must be between 0 and rate_limit_burst")
        if not 0 <= self.key_update_catch_up <= 8:
            raise ConfigError("EndpointConfig.key_update_catch_up must be between 0 and 8")
        if self.ack_delay > ACK_DELAY:
            raise ConfigError(f"EndpointConfig.ack_delay must be at most {ACK_DELAY} s "
                              f"(ACK_DELAY, a wire constant), got {self.ack_delay}")
        if not 1 <= self.ipv6_prefix <= 128:
            raise ConfigError("EndpointConfig.ipv6_prefix must be between 1 and 128")
        if not 1 <= self.initial_pn < self.pn_limit:
            raise ConfigError("EndpointConfig.initial_pn must be at least 1 and below pn_limit")

    @property
    def max_datagram_message(self) -> int:
        """Largest message one DATA packet carries whole, without fragments or lane
        records (RELIABLE framing, the larger one): 1162 bytes at the default
        max_datagram."""
        return self.max_datagram - HEADER_LEN - TAG_LEN - RSEQ_LEN - LEN_PREFIX
