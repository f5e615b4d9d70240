"""One peer's state machine (docs/protocol.md sections 4, 5 for one session, 6, 8 and 14).

Owns: the life of a session (``SessionState``), its keys and packet numbers,
replay window, token bucket, strikes, reliable windows and credit, the
packet-number acknowledgements it sends and receives, loss recovery and
congestion control (:mod:`intentra.core.recovery`, :mod:`intentra.core.congestion`),
the send queue (REALTIME by priority, RELIABLE in lanes), its scheduling under
the congestion budget, packing and fragmenting (section 14), and its timers.
Never: reads a clock, a socket or global randomness; decides about packets
that did not authenticate (the endpoint drops those before they get here).

Output goes to the endpoint's shared lists: ``out`` (datagram, address) and
``events``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from intentra.config import EndpointConfig
from intentra.constants import (
    ACK_DELAY_UNIT,
    EXTENDED_BIT,
    FRAGMENT_FLAG,
    HEADER_LEN,
    LEN_PREFIX,
    MAX_PRIORITY,
    RECORD_FRAGMENT,
    RECORD_REALTIME,
    RECORD_RELIABLE,
    RSEQ_LEN,
    TAG_LEN,
    VERSION,
    CloseReason,
    Intent,
    PacketType,
)
from intentra.core.aead import AeadFactory, ReceiveKeys, SendKeys
from intentra.core.congestion import Controller
from intentra.core.lanes import (
    OutLane,
    RealtimeReassembly,
    ReassemblyBudget,
)
from intentra.core.packing import EMPTY, FULL, RELEVEL, Packer, PackerFactory, RealtimePacker
from intentra.core.ratelimit import TokenBucket
from intentra.core.recovery import Recovery, SentPacket
from intentra.core.reliable import (
    CreditBudget,
    ExtOutstanding,
    ReceiveWindow,
    SendWindow,
    Violation,
    serial_gt,
)
from intentra.core.replay import ReplayWindow
from intentra.core.rtt import RttEstimator
from intentra.core.stats import Stats
from intentra.core.wire import (
    ACK_BODY,
    HEADER,
    REC_FRAGMENT,
    REC_REALTIME,
    REC_RELIABLE,
    U16,
    U32,
    unpack_records,
)
from intentra.events import (
    Address,
    Event,
    MessageReceived,
    SessionClosed,
)

if TYPE_CHECKING:
    from intentra.core.noise import InitiatorHandshake, ResponderHandshake

_DATA, _ACK, _CLOSE = int(PacketType.DATA), int(PacketType.ACK), int(PacketType.CLOSE)
_RELIABLE, _REALTIME = int(Intent.RELIABLE), int(Intent.REALTIME)
_VERSION_BITS: Final = VERSION << 4
_SEQ_MASK: Final = 0xFFFFFFFF
_tuple_new = tuple.__new__
"""Builds a NamedTuple from a tuple without its keyword-handling __new__ (half the time)."""
_LEVELS: Final = range(MAX_PRIORITY, -1, -1)
_LEVELS_UP: Final = range(MAX_PRIORITY + 1)
_MASK64: Final = (1 << 64) - 1
_ELICIT: Final = 0x02
_MAX_ACK_DELAY_UNITS: Final = 0xFFFF
_ACK_DATAGRAM: Final = HEADER_LEN + 28 + TAG_LEN
CREDIT_PROBE_MAX: Final = 1.0
"""Longest gap, seconds, between two credit probes of a sender out of credit."""
ELICIT_EVERY: Final = 15
"""REALTIME DATA packets sent without A = 1 before the next one asks for an ACK."""
ELICIT_GAP: Final = 0.1
"""Seconds after which the next REALTIME DATA packet asks for an ACK in any case."""
ELICIT_EARLY: Final = 8
"""RTT samples a session takes before its REALTIME packets stop all asking for ACKs."""
SKIP_SPACING: Final = 256
"""A sender skips one pn (chosen at random) in every SKIP_SPACING to 2 x SKIP_SPACING - 1."""
MIN_FRAGMENT: Final = 64
"""A fragment goes in what is left of the packet being built unless fewer than this many
bytes of data would fit; then it starts a fresh packet (docs/protocol.md section 12)."""


class _Extended:
    """The extended (X = 1) packets being built during one flush (section 14.2).

    One RELIABLE and one REALTIME packet at a time; the counters are folded into
    the session's when the flush ends.
    """

    __slots__ = ("ack", "now", "rel_count", "rel_first", "rel_parts", "rel_prio", "rel_size",
                 "rt_out", "rt_parts", "rt_prio", "rt_size", "sent_rt", "session")

    def __init__(self, session: Session, ack: int, now: float) -> None:
        self.session = session
        self.ack = ack
        self.now = now
        self.rel_parts: list[bytes | memoryview] = []
        self.rel_size = RSEQ_LEN
        self.rel_prio = 0
        self.rel_first = 0
        self.rel_count = 0
        self.rt_parts: list[bytes | memoryview] = []
        self.rt_size = 0
        self.rt_prio = 0
        self.rt_out = 0      # bytes of queued REALTIME sent or dropped (rt_bytes accounting)
        self.sent_rt = 0

    def seal_reliable(self) -> bool:
        parts = self.rel_parts
        first = self.rel_first
        ok = self.session._seal_data(_RELIABLE, self.rel_prio, self.ack,
                                     U32.pack(first) + b"".join(parts), first, self.rel_count,
                                     self.now, EXTENDED_BIT)
        self.rel_parts = []
        self.rel_size = RSEQ_LEN
        self.rel_prio = 0
        self.rel_count = 0
        return ok

    def seal_realtime(self) -> bool:
        ok = self.session._seal_data(_REALTIME, self.rt_prio, self.ack,
                                     b"".join(self.rt_parts), 0, 0, self.now, EXTENDED_BIT)
        self.rt_parts = []
        self.rt_size = 0
        self.rt_prio = 0
        return ok


class SessionState(enum.Enum):
    HELLO_SENT = "hello_sent"          # initiator: waiting for COOKIE or RESPONSE
    RESPONSE_SENT = "response_sent"    # responder: pending, waiting for FINISH
    ESTABLISHED = "established"
    CLOSED = "closed"


class Session:
    """One session. Created by the endpoint; fields are its to drive.

    Slotted, and its per-priority send queues are created on first use: an idle
    session costs a few KiB (the bench's ``sessions`` scenario measures it).
    """

    __slots__ = (
        "ack_at",
        "ack_now",
        "ack_probe",
        "addr",
        "bucket",
        "budget",
        "cc",
        "config",
        "confirmed",
        "conn_id",
        "cookie",
        "cookie_taken_at",
        "created_at",
        "credit_probe_at",
        "credit_probe_gap",
        "dropped_congestion",
        "dropped_deadline",
        "dropped_queue_full",
        "elicited_at",
        "events",
        "finish_answer_until",
        "finish_answered_at",
        "finish_body",
        "finish_datagram",
        "finish_retry_at",
        "frag_lane",
        "hello_key",
        "hs_datagram",
        "hs_deadline_at",
        "hs_retransmit_at",
        "hs_rto",
        "idle_limit",
        "initiator",
        "initiator_hs",
        "lanes_out",
        "last_ack_largest",
        "last_recv_at",
        "last_send_at",
        "last_strike_at",
        "other_last",
        "out",
        "pace_at",
        "packer",
        "path_budget",
        "path_probe_pn",
        "peer_key",
        "peer_largest_pn",
        "pending",
        "pending_ip",
        "pinned_key",
        "pn_next",
        "pushing",
        "queued",
        "queued_reliable",
        "recovery",
        "recv_keys",
        "recv_window",
        "rel_bytes",
        "rel_extra",
        "rel_rings",
        "rel_small",
        "remote_id",
        "replay",
        "reserved",
        "responder_hs",
        "retransmit",
        "retransmitted",
        "rng",
        "rt_bytes",
        "rt_frags",
        "rt_mid",
        "rt_queue",
        "rt_reassembly",
        "rtt",
        "rx_bits",
        "rx_largest",
        "rx_largest_at",
        "send_keys",
        "send_window",
        "sent_bytes",
        "skip_at",
        "state",
        "stats",
        "strikes",
        "timer_at",
        "unacked_messages",
        "unelicited",
        "validated_addr",
    )


    def __init__(self, conn_id: int, addr: Address, initiator: bool, now: float,
                 config: EndpointConfig, stats: Stats, out: list[tuple[bytes, Address]],
                 events: deque[Event], rng: Callable[[int], bytes] | None = None,
                 budget: CreditBudget | None = None,
                 rt_budget: ReassemblyBudget | None = None) -> None:
        self.conn_id = conn_id
        self.remote_id = 0
        self.addr = addr
        self.validated_addr = addr    # the last address proven to reach the peer
        self.path_budget: int | None = None  # bytes we may still send to an unproven addr
        self.path_probe_pn = 0        # first pn sent to the address being validated
        self.peer_largest_pn = 0      # largest_pn of the last ACK applied
        self.initiator = initiator
        self.state = SessionState.HELLO_SENT if initiator else SessionState.RESPONSE_SENT
        self.config = config
        self.stats = stats
        self.out = out
        self.events = events
        self.peer_key: bytes | None = None
        self.pinned_key: bytes | None = None
        self.created_at = now
        self.idle_limit = config.idle_timeout  # silence after which the session is closed
        # --- handshake
        self.initiator_hs: InitiatorHandshake | None = None
        self.responder_hs: ResponderHandshake | None = None
        self.hs_datagram = b""        # HELLO (initiator) or RESPONSE (responder) as last sent
        self.finish_datagram = b""    # FINISH, initiator only, resent until confirmed
        self.finish_body = b""        # FINISH that established us, responder only
        self.finish_answered_at = 0.0
        self.finish_answer_until = 0.0
        self.finish_retry_at = 0.0      # responder: no FINISH tried before (after a failure)
        self.cookie_taken_at = -1e18    # initiator: when a COOKIE last changed the HELLO
        self.hello_key: tuple[Address, bytes] | None = None
        self.pending = False          # responder: counted in the pending-handshake limits
        self.pending_ip: object = None
        self.cookie = bytes(16)
        self.hs_deadline_at = now + config.handshake_timeout
        self.hs_rto = config.initial_rto
        self.hs_retransmit_at: float | None = now + config.initial_rto if initiator else None
        self.confirmed = not initiator
        # --- keys and packet numbers
        self.send_keys: SendKeys | None = None
        self.recv_keys: ReceiveKeys | None = None
        self.pn_next = config.initial_pn
        self.packer: PackerFactory = Packer  # the C one on the native datapath
        self.replay = ReplayWindow(config.replay_window)
        self.bucket = TokenBucket(config.rate_limit_pps, config.rate_limit_burst, now)
        self.strikes = 0
        self.last_strike_at = 0.0
        self.last_recv_at = now
        self.last_send_at = now
        self.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self.rng = rng
        self.skip_at = 0          # the next pn to skip (0: none chosen yet)
        # --- capacity (docs/protocol.md section 6): created when established
        self.cc: Controller = None  # type: ignore[assignment]
        self.recovery: Recovery = None  # type: ignore[assignment]
        self.pace_at: float | None = None
        self.credit_probe_at: float | None = None
        self.credit_probe_gap = 0.0
        # --- acknowledging what we receive, by pn
        self.rx_largest = 0       # highest pn authenticated from the peer
        self.rx_largest_at = now
        self.rx_bits = 0          # bit i: pn rx_largest - 1 - i authenticated
        self.last_ack_largest = 0
        # --- delivery
        self.send_window = SendWindow(config.max_reliable_in_flight)
        self.recv_window = ReceiveWindow(config.max_reorder_buffer, config.max_datagram)
        self.budget = budget      # the endpoint's, shared by its sessions (None: unbounded)
        self.reserved = 0         # this session's part of it
        # REALTIME by priority: (data, queued_at, lane). RELIABLE in lanes (section 14.8):
        # each lane a FIFO, in the ring of the level its turn comes at.
        self.rt_queue: list[deque[tuple[bytes, float, int]] | None] = [None] * (MAX_PRIORITY + 1)
        self.lanes_out: dict[int, OutLane] = {}
        self.rel_rings: list[deque[OutLane] | None] = [None] * (MAX_PRIORITY + 1)
        self.frag_lane: OutLane | None = None  # the lane whose head is being fragmented
        self.other_last: int | None = None     # last rseq given to a record of lane != 0
        self.rel_extra = 0        # positions queued RELIABLE messages take beyond one each
        # the largest RELIABLE message one X = 0 packet carries
        self.rel_small = config.max_datagram - HEADER_LEN - TAG_LEN - RSEQ_LEN - LEN_PREFIX
        self.rt_frags: dict[int, tuple[int, int]] = {}  # level -> (mid, offset) of its head
        self.rt_mid = 1           # the next REALTIME message id (section 14.3 rule 3)
        self.rt_reassembly = RealtimeReassembly(config.max_realtime_reassembly, rt_budget,
                                                config.realtime_deadline, stats)
        self.queued = 0
        self.queued_reliable = 0
        self.rel_bytes = 0        # bytes of the queued RELIABLE messages, each until it
        #                           leaves whole (its last fragment has a position)
        self.rt_bytes = 0         # framing bytes of the queued REALTIME messages
        self.retransmit: list[int] = []
        self.retransmitted = 0
        self.sent_bytes = 0       # bytes of every datagram sealed (peer.status() rates)
        self.ack_at: float | None = None
        self.ack_now = False
        self.ack_probe = False    # the next ACK asks for an answer (A = 1)
        self.unelicited = 0       # REALTIME DATA packets sent since the last ack-eliciting one
        self.unacked_messages = 0  # RELIABLE messages received since our last ACK
        self.pushing = False      # the last flush left data queued: the path is the limit
        self.elicited_at = now
        self.dropped_deadline = 0
        self.dropped_congestion = 0
        self.dropped_queue_full = 0
        self.timer_at: float | None = None

    # ----------------------------------------------------------------- state

    def establish(self, remote_id: int, peer_key: bytes, send_key: bytes, recv_key: bytes,
                  now: float, aead: AeadFactory | None = None,
                  packer: PackerFactory | None = None) -> None:
        """Established: keys (``aead`` makes their AES-GCM objects; None: cryptography's;
        ``packer`` packs small messages; None: core/packing.py's)."""
        if packer is not None:
            self.packer = packer
        self.remote_id = remote_id
        self.peer_key = peer_key
        self.send_keys = SendKeys(send_key, now, aead)
        self.recv_keys = ReceiveKeys(recv_key, aead)
        self.state = SessionState.ESTABLISHED
        self.last_recv_at = now
        self.last_send_at = now
        self.cc = Controller(self.config.max_datagram, self.config.ack_every, now,
                             self.config.congestion_control)
        self.recovery = Recovery(self.rtt, self.cc, now)

    @property
    def established(self) -> bool:
        return self.state is SessionState.ESTABLISHED

    @property
    def reliable_capacity(self) -> int:
        """Reliable messages the application may still queue without exceeding the window
        (a large message counts one per fragment it will take)."""
        return self.send_window.room - self.queued_reliable - self.rel_extra

    def _positions(self, n: int) -> int:
        """rseq positions beyond one a RELIABLE message of ``n`` bytes will take (about)."""
        chunk = self.config.max_datagram - HEADER_LEN - TAG_LEN - RSEQ_LEN
        if n + LEN_PREFIX <= chunk:
            return 0
        return -(-n // (chunk - RECORD_FRAGMENT)) - 1

    def unacked_reliable(self) -> int:
        """RELIABLE messages queued or in flight, not yet acknowledged (a fragmented
        message counts once, however many of its fragments are in flight)."""
        if self.frag_lane is None and self.other_last is None and not any(
                type(e) is ExtOutstanding for e in self.send_window.outstanding.values()):
            return self.send_window.in_flight + self.queued_reliable
        return len(self._pending_reliable())

    @property
    def has_output(self) -> bool:
        return bool(self.queued or self.retransmit or self.ack_now)

    @property
    def realtime_queued(self) -> int:
        return self.queued - self.queued_reliable

    # ------------------------------------------------------------- sending

    def enqueue(self, data: bytes, intent: int, priority: int, now: float,
                lane: int = 0, bounded: bool = True) -> bool:
        """Queue a message; False when the queue is full, in messages (max_send_queue)
        or in bytes (max_send_queue_bytes): the caller counts the drop. ``bounded``
        False queues it regardless (RELIABLE messages a reconnect carries over)."""
        cfg = self.config
        if bounded and (
                self.queued >= cfg.max_send_queue
                or self.rel_bytes + self.rt_bytes + len(data) > cfg.max_send_queue_bytes):
            if self.rt_bytes:
                self._drop_late_realtime(now)  # they are late anyway: room for the new one
            if (self.queued >= cfg.max_send_queue
                    or self.rel_bytes + self.rt_bytes + len(data) > cfg.max_send_queue_bytes):
                self.dropped_queue_full += intent == _REALTIME
                return False
        if intent == _REALTIME:
            q = self.rt_queue[priority]
            if q is None:
                q = self.rt_queue[priority] = deque()
            q.append((data, now, lane))
            self.rt_bytes += LEN_PREFIX + len(data)
        else:
            olane = self.lanes_out.get(lane)
            if olane is None:
                olane = self.lanes_out[lane] = OutLane(lane)
            olane.queue.append((data, priority))
            olane.counts[priority] += 1
            if priority > olane.level:
                self._lane_up(olane, priority)
            if len(data) > self.rel_small:
                self.rel_extra += self._positions(len(data))
            self.queued_reliable += 1
            self.rel_bytes += len(data)
        self.queued += 1
        return True

    def _lane_up(self, olane: OutLane, priority: int) -> None:
        """A message lends its lane its priority: the lane's turn now comes at it."""
        rings = self.rel_rings
        old = olane.level
        olane.level = priority
        if old >= 0:
            ring = rings[old]
            if ring is not None:
                ring.remove(olane)
        ring = rings[priority]
        if ring is None:
            ring = rings[priority] = deque()
        ring.append(olane)

    def _next_pn(self, keys: SendKeys, now: float) -> int | None:
        """The packet number for the next packet, after a key update if one is due.

        Now and then one pn is skipped, at random (docs/protocol.md section 4): an
        ACK that names it acknowledges a packet never sent, an optimistic ACK.
        """
        pn = self.pn_next
        cfg = self.config
        if pn == self.skip_at:
            self.recovery.skipped.append(pn)
            pn += 1
            self.skip_at = 0
        if self.skip_at == 0 and self.rng is not None:
            self.skip_at = pn + SKIP_SPACING + int.from_bytes(self.rng(2), "big") % SKIP_SPACING
        if pn >= cfg.pn_limit - 1:
            return None
        if keys.due(now, cfg.key_update_packets, cfg.key_update_time,
                    cfg.key_update_min_interval):
            keys.update(now)
            self.stats.key_updates_send += 1
        self.pn_next = pn + 1
        return pn

    def _seal(self, ptype: int, intent: int, priority: int, ack: int, plaintext: bytes,
              now: float, eliciting: int = _ELICIT, extended: int = 0) -> int:
        """Seal one packet and put it in ``out``; its pn, or 0 if closed or out of pns."""
        keys = self.send_keys
        if keys is None:
            return 0  # not established, or closed: nothing may be sealed
        pn = self._next_pn(keys, now)
        if pn is None:
            self.close(CloseReason.KEY_EXHAUSTED, now)
            return 0
        datagram = keys.seal_packet(_VERSION_BITS | ptype,
                                    (intent << 6) | (priority << 3) | extended | eliciting,
                                    self.remote_id, pn, ack, plaintext)
        self.out.append((datagram, self.addr))
        self.sent_bytes += len(datagram)
        if self.path_budget is not None:
            self.path_budget -= len(datagram)
        self.stats.packets_sent += 1
        self.last_send_at = now
        return pn

    def _seal_data(self, intent: int, priority: int, ack: int, plaintext: bytes, rseq: int,
                   count: int, now: float, extended: int = 0) -> bool:
        """Seal a DATA packet and record it for recovery.

        RELIABLE DATA is always ack-eliciting, and so is REALTIME DATA while the
        controller holds this sender back (it needs every sample then). A sender
        with room to spare marks every ELICIT_EVERY-th packet, and the first after
        ELICIT_GAP: a hub that hears many quiet peers then sends an ACK per 16
        packets or 100 ms, not one per packet. (A packet sent onto an empty path
        does not ask for that alone: a peer sending 30 updates a second on a fast
        path always finds it empty, and would get an ACK for each.) Until a session
        has ELICIT_EARLY RTT samples every packet asks, so the first samples come
        before any queue.
        """
        recovery = self.recovery
        # Dense while the controller needs samples; with it off, nothing does.
        # Also once half the window is in flight: an ACK must be due before it fills.
        dense = self.config.congestion_control and (
            self.pushing or self.rtt.samples < ELICIT_EARLY
            or 2 * recovery.in_flight >= self.cc.cwnd)
        if (intent == _RELIABLE or dense or self.unelicited >= ELICIT_EVERY
                or now - self.elicited_at >= ELICIT_GAP):
            eliciting = _ELICIT
            self.unelicited = 0
            self.elicited_at = now
        else:
            eliciting = 0
            self.unelicited += 1
        pn = self._seal(_DATA, intent, priority, ack, plaintext, now, eliciting, extended)
        if not pn:
            return False
        recovery.on_sent(pn, HEADER_LEN + TAG_LEN + len(plaintext), True, rseq, count, now,
                         eliciting != 0)
        return True

    def _seal_reliable(self, rpacker: RealtimePacker, ack: int, now: float) -> bool:
        """Seal the X = 0 RELIABLE packet ``rpacker`` filled (section 4)."""
        first, count = rpacker.first, rpacker.count
        return self._seal_data(_RELIABLE, rpacker.prio, ack, rpacker.plaintext(), first, count,
                               now)

    def send_ack(self, now: float, eliciting: bool = False) -> None:
        """Send an ACK: rseq and pn acknowledgements and this side's credit (section 4)."""
        window = self.recv_window
        delay = int((now - self.rx_largest_at) / ACK_DELAY_UNIT) if self.rx_largest else 0
        budget = self.budget
        if budget is None:
            credit = window.advertise()
        else:
            # The endpoint-wide bound: this session may hold what the others left,
            # and always its floor.
            cap = max(budget.limit - budget.reserved + self.reserved, budget.floor)
            if window.lanes is not None and window.lanes.partial and self._favored(budget):
                cap = window.max_bytes  # it can finish its partial message (section 12)
            credit = window.advertise(cap)
            self._account()
        body = ACK_BODY.pack(window.bitmap(), self.rx_largest, self.rx_bits,
                             min(max(delay, 0), _MAX_ACK_DELAY_UNITS), credit)
        pn = self._seal(_ACK, _RELIABLE, 0, window.ack, body, now,
                        _ELICIT if eliciting else 0)
        if pn:
            self.ack_at = None
            self.ack_now = False
            self.ack_probe = False
            self.unacked_messages = 0
            self.last_ack_largest = self.rx_largest
            if eliciting:
                self.recovery.on_sent(pn, HEADER_LEN + TAG_LEN + len(body), False, 0, 0, now)

    def _favored(self, budget: CreditBudget) -> bool:
        """Whether this session, holding a partial RELIABLE message, may be credited
        its whole MAX_REORDER_BUFFER: the first to ask while the favored one (if any)
        holds no partial message any more keeps the right until it holds none."""
        favored = budget.favored
        if favored is self:
            return True
        if favored is not None:
            lanes = favored.recv_window.lanes
            if favored.state is SessionState.ESTABLISHED and lanes is not None \
                    and lanes.partial:
                return False
        budget.favored = self
        return True

    def flush(self, now: float) -> None:
        """Send what the congestion budget allows, retransmissions first (section 6)."""
        if self.state is not SessionState.ESTABLISHED:
            return
        cfg = self.config
        limit = cfg.max_datagram - HEADER_LEN - TAG_LEN
        ack = self.recv_window.ack
        if self.path_budget is not None and self.path_budget < cfg.max_datagram:
            # An address being validated gets at most 3x what came from it: DATA
            # waits; an ACK goes if it fits.
            if self.ack_now and self.path_budget >= _ACK_DATAGRAM:
                self.send_ack(now, self.ack_probe)
            return
        if self.retransmit:
            self._flush_retransmits(now, limit, ack)
            if self.state is not SessionState.ESTABLISHED:
                return
        if self.queued and not self.retransmit:
            self._flush_queue(now, limit, ack)
            if self.state is not SessionState.ESTABLISHED:
                return
        if self.queued or self.retransmit:
            self.pushing = True
            self._blocked(now)
        else:
            self.pushing = False
            self.pace_at = None
            if self.recovery.in_flight < self.cc.cwnd:
                self.recovery.mark_app_limited()
        if self.ack_now:
            self.send_ack(now, self.ack_probe)

    def _blocked(self, now: float) -> None:
        """The budget stopped the flush: pace, probe for credit, shed late REALTIME."""
        cc = self.cc
        if self.recovery.in_flight < cc.cwnd:
            self.pace_at = max(cc.next_send_at(now), now + 0.0002)
        else:
            self.pace_at = None  # window full: the next ACK opens it
        if (self.queued_reliable and not self.retransmit and self.send_window.credit == 0
                and self.credit_probe_at is None):
            self.credit_probe_gap = self.rtt.pto
            self.credit_probe_at = now + self.credit_probe_gap
        if self.rt_bytes:
            self._drop_late_realtime(now)
        if self.rt_bytes:
            self._shed_realtime(now)

    def _drop_late_realtime(self, now: float) -> None:
        """Drop queued REALTIME older than its deadline (docs/protocol.md section 6).

        The flush drops them as it reaches them; when the window or the pacer stops
        it first (a path that returns no ACK), they would otherwise wait, late, and
        fill the queue. Each level is FIFO: the old ones are at its head.
        """
        deadline = now - self.config.realtime_deadline
        stats = self.stats
        for level, q in enumerate(self.rt_queue):
            while q and q[0][1] < deadline:
                data = q.popleft()[0]
                self.queued -= 1
                self.rt_bytes -= LEN_PREFIX + len(data) - self._rt_forget(level)
                self.dropped_deadline += 1
                stats.messages_dropped_deadline += 1

    def _shed_realtime(self, now: float) -> None:
        """Drop REALTIME that cannot leave in time, lowest priority and oldest first.

        What the path takes within ``realtime_queue_delay`` at the pacing rate
        stays queued; the rest would only be late (docs/protocol.md section 6). A
        large message whose fragments have started to leave is kept: dropping its
        rest would waste what was sent (its deadline still applies).
        """
        cc = self.cc
        rate = cc.btl_bw if cc.btl_bw > 0.0 else cc.pacing_rate  # what the path delivers
        allowed = max(rate * self.config.realtime_queue_delay, 2.0 * self.config.max_datagram)
        frags = self.rt_frags
        if frags:
            for level, (_, offset) in frags.items():
                q = self.rt_queue[level]
                if q:
                    allowed += LEN_PREFIX + len(q[0][0]) - offset
        if self.rt_bytes <= allowed:
            return
        stats = self.stats
        for level in _LEVELS_UP:
            q = self.rt_queue[level]
            if not q:
                continue
            started = q.popleft() if level in frags else None
            while q and self.rt_bytes > allowed:
                data = q.popleft()[0]
                self.queued -= 1
                self.rt_bytes -= LEN_PREFIX + len(data)
                self.dropped_congestion += 1
                stats.messages_dropped_congestion += 1
            if started is not None:
                q.appendleft(started)
            if self.rt_bytes <= allowed:
                return

    def _flush_retransmits(self, now: float, limit: int, ack: int) -> None:
        """Resend what was lost, in rseq order; a packet holds consecutive positions of
        one kind (messages of X = 0 packets, or records of extended ones)."""
        window = self.send_window
        cc = self.cc
        recovery = self.recovery
        chunks: list[bytes | memoryview] = []
        first = -1
        prev = -2
        size = RSEQ_LEN
        prio = 0
        done = 0
        ext = 0
        count = 0
        todo = self.retransmit
        for rseq in todo:
            entry = window.outstanding.get(rseq)
            if entry is None:
                done += 1
                continue  # acknowledged meanwhile
            kind = EXTENDED_BIT if type(entry) is ExtOutstanding else 0
            need = len(entry.data) + (len(entry.chunk) if kind else LEN_PREFIX)  # type: ignore[attr-defined]
            if chunks and (rseq != ((prev + 1) & _SEQ_MASK) or size + need > limit
                           or kind != ext):
                if not self._seal_data(_RELIABLE, prio, ack, U32.pack(first) + b"".join(chunks),
                                       first, count, now, ext):
                    return
                chunks, size, prio, count = [], RSEQ_LEN, 0, 0
            if not chunks and not cc.can_send(recovery.in_flight, now):
                break
            entry.retries += 1
            if entry.retries >= self.config.max_retransmissions:
                # MAX_RETRANSMISSIONS transmissions were sent and it is still lost
                self.retransmit.clear()
                self.close(CloseReason.TIMEOUT, now)
                return
            entry.sent_at = now
            self.stats.retransmissions += 1
            self.retransmitted += 1
            if not chunks:
                first = rseq
                ext = kind
            if kind:
                chunks.append(entry.data)
                chunks.append(entry.chunk)  # type: ignore[attr-defined]
            else:
                chunks.append(U16.pack(len(entry.data)) + entry.data)
            count += 1
            size += need
            prio = max(prio, entry.priority)
            prev = rseq
            done += 1
        del todo[:done]
        if chunks:
            self._seal_data(_RELIABLE, prio, ack, U32.pack(first) + b"".join(chunks), first,
                            count, now, ext)
        if window.outstanding and window.rto_at is None:
            window.rto_at = now + self.rtt.rto

    def _x0_allowed(self) -> bool:
        """A lane-0 RELIABLE message may go in an X = 0 packet (section 14.3 rule 5).

        Conservative (section 12): no record of another lane at or before the last one
        sent lies beyond the peer's cumulative ``ack``.
        """
        other = self.other_last
        if other is None:
            return True
        window = self.send_window
        if not window.outstanding or not serial_gt(other, window.acked):
            self.other_last = None  # all of them acknowledged: back to version 2's packets
            return True
        return False

    def _flush_queue(self, now: float, limit: int, ack: int) -> None:
        """Pack what is queued by priority, as far as the budget allows.

        The hot path of a sender: small messages are packed by a packer
        (core/packing.py, or ``intentra._native.Packer`` in C on the native
        datapath), which stops at each full packet for this loop to seal it and ask
        the controller; counters are written back once. Levels go from 7 down; at
        each, REALTIME first, then the lanes whose turn is at that level, in
        rotation, a message or a fragment at a time (docs/protocol.md section
        14.8). Lane-0 messages that fit go in X = 0 packets exactly as version 2
        packs them; anything else becomes a record of an extended packet
        (``_Extended``).
        """
        stats = self.stats
        deadline = self.config.realtime_deadline
        window = self.send_window
        cc = self.cc
        recovery = self.recovery
        rto = self.rtt.rto
        rt_small = limit - LEN_PREFIX
        rel_small = limit - RSEQ_LEN - LEN_PREFIX
        # The packets being filled, made on first use (a flush often needs only one).
        packer: RealtimePacker | None = None
        rpacker: RealtimePacker | None = None
        room = window.room
        sent_rt = sent_rel = rt_out = rel_out = 0
        xb: _Extended | None = None
        rings = self.rel_rings
        x0_ok = self.other_last is None or self._x0_allowed()
        blocked = 0
        go = cc.can_send(recovery.in_flight, now)
        try:
            for level in _LEVELS:
                if not go:
                    break
                q = self.rt_queue[level]
                while q:
                    # Plain messages (lane 0, whole, in time) go into the packet being
                    # filled by the packer (in C on the native datapath); it stops at
                    # a full packet or at a head it leaves to the code below.
                    if packer is None:
                        packer = self.packer()
                    status = packer.take(q, level, now, deadline, limit, rt_small)
                    if status == FULL:
                        if not self._seal_data(_REALTIME, packer.prio, ack,
                                               packer.plaintext(), 0, 0, now):
                            return
                        go = cc.can_send(recovery.in_flight, now)
                        if not go:
                            break
                        continue
                    if status == EMPTY:
                        break
                    data, queued_at, lane = q[0]
                    n = len(data)
                    need = LEN_PREFIX + n
                    if now - queued_at > deadline:
                        q.popleft()
                        rt_out += need - self._rt_forget(level)
                        self.queued -= 1
                        self.dropped_deadline += 1
                        stats.messages_dropped_deadline += 1
                        continue
                    if lane or n > rt_small:
                        # A lane label or fragments: an extended record (section 14.2).
                        if xb is None:
                            xb = _Extended(self, ack, now)
                        status = self._realtime_extended(level, q, xb, limit)
                        if status < 0:
                            return
                        if status == 0:
                            go = False
                            break
                        continue
                    raise AssertionError("the packer left a plain REALTIME message")
                ring = rings[level]
                while ring and room > 0 and go:
                    olane = ring[0]
                    data, prio = olane.queue[0]
                    n = len(data)
                    if x0_ok and n <= rel_small and olane.lane == 0 and olane.offset == 0:
                        # As version 2: whole lane-0 messages in X = 0 packets. Alone at
                        # its level, the lane is drained here without a turn per message.
                        if xb is not None and xb.rel_parts:
                            if not xb.seal_reliable():
                                return
                            go = cc.can_send(recovery.in_flight, now)
                            if not go:
                                break
                        single = len(ring) == 1
                        moved = False
                        taken = 0
                        if rpacker is None:
                            rpacker = self.packer(reliable=True)
                        while True:
                            # in C on the native datapath: the messages, their rseqs
                            status, took = rpacker.take_reliable(olane, window, now, rto, room,
                                                                 single, rel_small, limit)
                            room -= took
                            taken += took
                            if status == FULL:
                                if not self._seal_reliable(rpacker, ack, now):
                                    return
                                go = cc.can_send(recovery.in_flight, now)
                                if not go:
                                    break
                                continue
                            if status == RELEVEL:
                                olane.relevel()
                                moved = True
                            break
                        olane.lseq = (olane.lseq + taken) & _SEQ_MASK
                        if not go:
                            break
                    else:
                        if olane.offset == 0 and n + RECORD_RELIABLE > limit - RSEQ_LEN \
                                and self.frag_lane is not None and self.frag_lane is not olane:
                            # Another large message is being given positions (section
                            # 14.3 rule 6): this lane waits; the others at this level go.
                            blocked += 1
                            if blocked >= len(ring):
                                blocked = 0
                                break
                            ring.rotate(-1)
                            continue
                        if rpacker is not None and rpacker.count:
                            if not self._seal_reliable(rpacker, ack, now):
                                return
                            go = cc.can_send(recovery.in_flight, now)
                            if not go:
                                break
                        if xb is None:
                            xb = _Extended(self, ack, now)
                        status = self._reliable_record(olane, data, prio, xb, limit, now, rto)
                        if status < 0:
                            return
                        if status == 0:
                            go = False
                            break
                        room -= 1
                        if olane.lane:
                            x0_ok = False
                        moved = status == 2
                        if moved:
                            sent_rel += 1
                            rel_out += n
                            if n > rel_small:
                                self.rel_extra -= self._positions(n)
                            moved = olane.pop()
                            if not olane.queue:
                                moved = True
                    blocked = 0
                    if moved:
                        ring.popleft()
                        if olane.level >= 0:
                            other = rings[olane.level]
                            if other is None:
                                other = rings[olane.level] = deque()
                            other.append(olane)
                    elif len(ring) > 1:
                        ring.rotate(-1)
            if packer is not None and packer.count and not self._seal_data(
                    _REALTIME, packer.prio, ack, packer.plaintext(), 0, 0, now):
                return
            if rpacker is not None and rpacker.count and not self._seal_reliable(rpacker, ack,
                                                                                 now):
                return
            if xb is not None:
                if xb.rt_parts and not xb.seal_realtime():
                    return
                if xb.rel_parts:
                    xb.seal_reliable()
        finally:
            if packer is not None:
                sent_rt += packer.sent
                rt_out += packer.taken
            if rpacker is not None:
                sent_rel += rpacker.sent
                rel_out += rpacker.taken - LEN_PREFIX * rpacker.sent  # rel_bytes: data only
            if xb is not None:
                sent_rt += xb.sent_rt
                rt_out += xb.rt_out
            self.queued -= sent_rt + sent_rel
            self.queued_reliable -= sent_rel
            self.rel_bytes -= rel_out
            self.rt_bytes -= rt_out
            stats.messages_sent_realtime += sent_rt
            stats.messages_sent_reliable += sent_rel
        if window.credit:
            self.credit_probe_at = None

    def _reliable_record(self, olane: OutLane, data: bytes, prio: int, xb: _Extended,
                         limit: int, now: float, rto: float) -> int:
        """Give the head of ``olane`` (or its next fragment) a position in an extended packet.

        Returns:
            2 the message is all placed, 1 a fragment of it was, 0 the budget stopped
            before anything was placed, -1 the session closed.
        """
        n = len(data)
        lane = olane.lane
        lseq = olane.lseq
        offset = olane.offset
        whole = offset == 0 and n + RECORD_RELIABLE <= limit - RSEQ_LEN
        if whole:
            need = RECORD_RELIABLE + n
            take = n
        else:
            take = min(n - offset, limit - xb.rel_size - RECORD_FRAGMENT)
            if take < MIN_FRAGMENT and take < n - offset:
                take = min(n - offset, limit - RSEQ_LEN - RECORD_FRAGMENT)
                need = limit + 1  # a fresh packet
            else:
                need = RECORD_FRAGMENT + take
        if xb.rel_parts and xb.rel_size + need > limit:
            if not xb.seal_reliable():
                return -1
            if not self.cc.can_send(self.recovery.in_flight, now):
                return 0
            if not whole:
                take = min(n - offset, limit - RSEQ_LEN - RECORD_FRAGMENT)
        if whole:
            header = REC_RELIABLE.pack(lane, 0, lseq, n)
            chunk: bytes | memoryview = data
        else:
            header = REC_FRAGMENT.pack(lane, FRAGMENT_FLAG, lseq, offset, n, take)
            chunk = memoryview(data)[offset:offset + take]
        rseq = self.send_window.assign_ext(
            ExtOutstanding(header, chunk, prio, now, data, lane, lseq), now, rto)
        if not xb.rel_parts:
            xb.rel_first = rseq
        xb.rel_parts.append(header)
        xb.rel_parts.append(chunk)
        xb.rel_size += len(header) + take
        xb.rel_count += 1
        xb.rel_prio = max(xb.rel_prio, prio)
        if lane:
            self.other_last = rseq
        if whole:
            return 2
        olane.offset = offset + take
        if olane.offset < n:
            self.frag_lane = olane
            return 1
        self.frag_lane = None
        return 2

    def _realtime_extended(self, level: int, q: deque[tuple[bytes, float, int]],
                           xb: _Extended, limit: int) -> int:
        """Send the head of REALTIME level ``level`` as extended records (section 14).

        A whole record if it fits one packet, else fragments, back to back; what the
        budget stops is remembered in ``rt_frags`` and goes on at the next flush.

        Returns:
            1 the message is all sent, 0 the budget stopped it, -1 the session closed.
        """
        data, _, lane = q[0]
        n = len(data)
        now = xb.now
        cc = self.cc
        recovery = self.recovery
        if n + RECORD_REALTIME <= limit and level not in self.rt_frags:
            need = RECORD_REALTIME + n
            if xb.rt_parts and xb.rt_size + need > limit:
                if not xb.seal_realtime():
                    return -1
                if not cc.can_send(recovery.in_flight, now):
                    return 0
            q.popleft()
            xb.rt_parts.append(REC_REALTIME.pack(lane, 0, n))
            xb.rt_parts.append(data)
            xb.rt_size += need
            xb.rt_prio = max(level, xb.rt_prio)
            xb.rt_out += LEN_PREFIX + n
            xb.sent_rt += 1
            return 1
        progress = self.rt_frags.pop(level, None)
        if progress is None:
            mid = self.rt_mid
            self.rt_mid = (mid + 1) & _SEQ_MASK
            offset = 0
        else:
            mid, offset = progress
        view = memoryview(data)
        while True:
            left = limit - xb.rt_size - RECORD_FRAGMENT
            if left < MIN_FRAGMENT and left < n - offset:
                if xb.rt_parts:
                    if not xb.seal_realtime():
                        return -1
                    if not cc.can_send(recovery.in_flight, now):
                        self.rt_frags[level] = (mid, offset)
                        return 0
                left = limit - RECORD_FRAGMENT
            take = min(left, n - offset)
            xb.rt_parts.append(REC_FRAGMENT.pack(lane, FRAGMENT_FLAG, mid, offset, n, take))
            xb.rt_parts.append(view[offset:offset + take])
            xb.rt_size += RECORD_FRAGMENT + take
            xb.rt_prio = max(level, xb.rt_prio)
            xb.rt_out += take
            offset += take
            if offset == n:
                q.popleft()
                xb.rt_out += LEN_PREFIX
                xb.sent_rt += 1
                return 1

    def _rt_forget(self, level: int) -> int:
        """The head of REALTIME level ``level`` leaves the queue unsent: how many of its
        bytes already left as fragments (they are no longer in ``rt_bytes``)."""
        if not self.rt_frags:
            return 0
        progress = self.rt_frags.pop(level, None)
        return 0 if progress is None else progress[1]

    # ------------------------------------------------------------ receiving

    def on_packet(self, ptype: int, intent: int, priority: int, ack: int,
                  plaintext: bytes, now: float, pn: int = 0, eliciting: int = 1,
                  extended: int = 0) -> None:
        """Step 8 of the receive order, for a packet that authenticated. Violations strike."""
        # Note the pn for our ACKs (largest_pn, pn_bitmap).
        largest = self.rx_largest
        if pn > largest:
            shift = pn - largest
            if largest == 0 or shift > 64:
                self.rx_bits = 0
            else:
                self.rx_bits = ((self.rx_bits << shift) | (1 << (shift - 1))) & _MASK64
            self.rx_largest = pn
            self.rx_largest_at = now
        elif pn and largest - 1 - pn < 64:
            self.rx_bits |= 1 << (largest - 1 - pn)
        try:
            if ptype == _DATA:
                if pn >= self.last_ack_largest + self.config.ack_every:
                    self.ack_now = True
                elif eliciting and self.ack_at is None:
                    self.ack_at = now + self.config.ack_delay
                if extended:
                    self._on_extended(intent, priority, ack, plaintext, now)
                else:
                    self._on_data(intent, priority, ack, plaintext, now)
            elif ptype == _ACK:
                self._on_ack(ack, plaintext, now)
                if eliciting:
                    self.ack_now = True  # a probe: answer at once, with A = 0
            else:  # CLOSE
                try:
                    reason = CloseReason(plaintext[0])
                except ValueError:
                    reason = CloseReason.PROTOCOL_VIOLATION
                self.close(reason, now, by_peer=True)
        except Violation:
            self.strike(now)

    def strike(self, now: float) -> None:
        """Count an authenticated violation; close at the threshold (section 8)."""
        cfg = self.config
        if now - self.last_strike_at > cfg.strike_decay:
            self.strikes = 0
        self.strikes += 1
        self.last_strike_at = now
        self.stats.strike_events += 1
        if self.strikes >= cfg.strike_threshold:
            self.close(CloseReason.PROTOCOL_VIOLATION, now)

    def _on_ack(self, ack: int, plaintext: bytes, now: float) -> None:
        rseq_bits, largest, pn_bits, delay, credit = ACK_BODY.unpack(plaintext)
        window = self.send_window
        recovery = self.recovery
        # Check everything before anything moves (a violation changes nothing).
        window.check_ack(ack, rseq_bits)
        recovery.check_ack(largest, pn_bits, self.pn_next)
        self.peer_largest_pn = largest
        window.apply_credit(ack, credit)
        if window.credit:
            self.credit_probe_at = None
        elif self.credit_probe_at is None:
            # Out of credit: probe until it returns, in case the ACK that moves the
            # edge is lost. An application waiting in ``await send`` has queued
            # nothing yet, so "RELIABLE waiting at the limit" is not visible here.
            self.credit_probe_gap = self.rtt.pto
            self.credit_probe_at = now + self.credit_probe_gap
        moved = window.on_ack(ack, rseq_bits)
        if largest:
            acked, lost = recovery.on_ack(largest, pn_bits, delay * ACK_DELAY_UNIT, now)
            if acked:
                outstanding = window.outstanding
                for p in acked:
                    if p.count:
                        for i in range(p.count):
                            if outstanding.pop((p.rseq + i) & _SEQ_MASK, None) is not None:
                                moved = True
            if lost:
                self._on_lost(lost)
        if moved:
            self.rtt.reset_backoff()
            window.rto_at = now + self.rtt.rto if window.outstanding else None

    def _apply_ack(self, ack: int, now: float) -> None:
        """The ``ack`` field of a DATA packet (its rseq acknowledgement)."""
        window = self.send_window
        if ack == window.acked:
            return
        window.check_ack(ack, 0)
        if window.on_ack(ack, 0):
            self.rtt.reset_backoff()
            window.rto_at = now + self.rtt.rto if window.outstanding else None

    def _on_lost(self, lost: list[SentPacket]) -> None:
        """Queue the RELIABLE messages of lost packets for retransmission, in rseq order."""
        outstanding = self.send_window.outstanding
        todo = self.retransmit
        for p in lost:
            for i in range(p.count):
                rseq = (p.rseq + i) & _SEQ_MASK
                if rseq in outstanding and rseq not in todo:
                    todo.append(rseq)

    def _on_data(self, intent: int, priority: int, ack: int, plaintext: bytes,
                 now: float) -> None:
        # Parse the whole packet before acting: a framing error is a violation
        # and nothing of the packet is delivered.
        n = len(plaintext)
        off = RSEQ_LEN if intent == _RELIABLE else 0
        if off == 0 and n > 2 and (plaintext[0] << 8) | plaintext[1] == n - 2:
            # one REALTIME message: the common case of a lightly loaded sender
            self._apply_ack(ack, now)
            self.events.append(_tuple_new(MessageReceived, (self.conn_id, plaintext[2:],
                                                            Intent.REALTIME, priority, 0)))
            self.stats.messages_delivered_realtime += 1
            return
        messages: list[bytes] = []
        while off < n:
            if off + LEN_PREFIX > n:
                raise Violation("truncated length prefix")
            length = (plaintext[off] << 8) | plaintext[off + 1]
            off += LEN_PREFIX
            if length == 0 or off + length > n:
                raise Violation("message length 0 or beyond the packet")
            messages.append(plaintext[off:off + length])
            off += length
        if not messages:
            raise Violation("DATA without a message")
        conn_id = self.conn_id
        events = self.events
        if intent == _REALTIME:
            self._apply_ack(ack, now)
            realtime = Intent.REALTIME
            events.extend([_tuple_new(MessageReceived, (conn_id, data, realtime, priority, 0))
                           for data in messages])
            self.stats.messages_delivered_realtime += len(messages)
            return
        rseq = U32.unpack_from(plaintext)[0]
        window = self.recv_window
        window.check(rseq, len(messages))
        self._apply_ack(ack, now)
        ready: list[bytes] = []
        next_before = window.next_rseq
        for data in messages:
            if window.receive(rseq, data, ready) == 3:
                self.stats.messages_dropped_reorder_full += 1
            rseq = (rseq + 1) & _SEQ_MASK
        self._reliable_arrived(next_before, len(messages), now)
        if ready:
            window.unread_bytes += sum(map(len, ready))
            reliable = Intent.RELIABLE
            events.extend([_tuple_new(MessageReceived, (conn_id, data, reliable, priority, 0))
                           for data in ready])
            self.stats.messages_delivered_reliable += len(ready)

    def _on_extended(self, intent: int, priority: int, ack: int, plaintext: bytes,
                     now: float) -> None:
        """An extended DATA packet: records of lanes and fragments (section 14.5)."""
        reliable = intent == _RELIABLE
        # 1. framing, before anything is applied
        records = unpack_records(plaintext, RSEQ_LEN if reliable else 0, reliable,
                                 self.config.max_message_size)
        if records is None:
            raise Violation("extended DATA framing")
        conn_id = self.conn_id
        events = self.events
        if not reliable:
            # 2. ack; 5. REALTIME records, in order
            self._apply_ack(ack, now)
            reassembly = self.rt_reassembly
            realtime = Intent.REALTIME
            delivered = 0
            try:
                for lane, fragment, mid, offset, total, data in records:
                    message: bytes | None = data
                    if fragment:
                        reassembly.check(mid, lane, offset, len(data), total)
                        message = reassembly.add(mid, lane, offset, total, data, now)
                        if message is None:
                            continue
                    events.append(_tuple_new(MessageReceived,
                                             (conn_id, message, realtime, priority, lane)))
                    delivered += 1
            finally:
                self.stats.messages_delivered_realtime += delivered
            return
        rseq = U32.unpack_from(plaintext)[0]
        window = self.recv_window
        window.check(rseq, len(records))
        # 2. ack; 3. RELIABLE records, in order
        self._apply_ack(ack, now)
        lanes = window.lane_receiver()
        ready: list[bytes] = []
        ready_lanes: list[tuple[int, bytes]] = []
        next_before = window.next_rseq
        try:
            for lane, fragment, lseq, offset, total, data in records:
                if not window.is_duplicate(rseq):
                    lanes.check(lane, fragment, lseq, offset, len(data), total)
                    lanes.apply(lane, fragment, lseq, offset, total, data, now, ready,
                                ready_lanes)
                    window.receive_record(rseq, ready)
                rseq = (rseq + 1) & _SEQ_MASK
        finally:
            # What records before a violation did stands (section 14.5 step 3.2).
            self._reliable_arrived(next_before, len(records), now)
            reliable_intent = Intent.RELIABLE
            # Delivered, not yet read: counts against the credit (section 8).
            window.unread_bytes += sum([len(d) for d in ready]) + sum(
                [len(d) for _, d in ready_lanes])
            if ready:
                events.extend([_tuple_new(MessageReceived,
                                          (conn_id, data, reliable_intent, priority, 0))
                               for data in ready])
            if ready_lanes:
                events.extend([_tuple_new(MessageReceived,
                                          (conn_id, data, reliable_intent, priority, lane))
                               for lane, data in ready_lanes])
            self.stats.messages_delivered_reliable += len(ready) + len(ready_lanes)

    def _reliable_arrived(self, next_before: int, count: int, now: float) -> None:
        """After ``count`` RELIABLE positions arrived: the gap clock and when to ACK.

        A gap asks for an ACK at once (the bitmaps say what is missing) and its
        clock starts when the hole at ``next`` opens. Also at once after ACK_EVERY
        RELIABLE messages: ACK_EVERY counts pns, and packing puts a whole window of
        small messages in ACK_EVERY packets, so the sender would stall for
        ACK_DELAY each window.
        """
        window = self.recv_window
        if window.buffer:
            self.ack_now = True
            if window.gap_since is None or window.next_rseq != next_before:
                window.gap_since = now
        else:
            window.gap_since = None
        self.unacked_messages += count
        if self.unacked_messages >= self.config.ack_every:
            self.ack_now = True

    def _account(self) -> None:
        """Bring this session's part of the endpoint's budget up to date."""
        budget = self.budget
        if budget is not None:
            now_reserved = self.recv_window.reservation()
            budget.reserved += now_reserved - self.reserved
            self.reserved = now_reserved

    def validate_path(self, now: float) -> None:
        """The address being validated answered: it is the session's path from now on."""
        self.validated_addr = self.addr
        self.path_budget = None
        self.recovery.reset_path(now)

    def release(self, nbytes: int) -> bool:
        """The application took ``nbytes`` of RELIABLE messages; True if an ACK is due.

        The room returns to the credit; when the edge can move up by a quarter of
        MAX_RELIABLE_IN_FLIGHT, an ACK tells the peer (docs/protocol.md section 6).
        """
        window = self.recv_window
        window.unread_bytes = max(window.unread_bytes - nbytes, 0)
        if self.budget is not None:
            self._account()  # what the application read returns to the endpoint at once
        if window.edge_gain() >= max(self.config.max_reliable_in_flight // 4, 1):
            self.ack_now = True
            return True
        return False

    # --------------------------------------------------------------- closing

    def close(self, reason: CloseReason, now: float, by_peer: bool = False,
              send: bool = True) -> None:
        """End the session. Sends CLOSE unless the peer closed or it never established."""
        if self.state is SessionState.CLOSED:
            return
        was_established = self.state is SessionState.ESTABLISHED
        keys = self.send_keys
        if was_established and send and not by_peer and keys is not None:
            pn = self.pn_next
            if pn < self.config.pn_limit:
                self.pn_next = pn + 1
                header = HEADER.pack(_VERSION_BITS | _CLOSE, keys.phase, 1, self.remote_id,
                                     pn & _SEQ_MASK, 0)
                self.out.append((header + keys.seal(self.remote_id, pn, header,
                                                    bytes((reason,))), self.addr))
                self.stats.packets_sent += 1
        self.state = SessionState.CLOSED
        if self.budget is not None:
            self.budget.reserved -= self.reserved  # its credit returns to the endpoint
            self.reserved = 0
            if self.budget.favored is self:
                self.budget.favored = None
        if was_established:
            self.stats.connection_closes += 1
            pending = self._pending_reliable()
            self.events.append(SessionClosed(self.conn_id, reason, by_peer, len(pending),
                                             tuple(pending)))
        self.rt_reassembly.clear()
        self.send_keys = None
        self.recv_keys = None
        self.initiator_hs = None
        self.responder_hs = None

    def _pending_reliable(self) -> list[tuple[bytes, int, int]]:
        """RELIABLE messages not acknowledged, as (data, priority, lane): those with a
        position in flight in rseq order (a fragmented one once, whole), then each
        lane's queue in order."""
        pending: list[tuple[bytes, int, int]] = []
        seen: set[tuple[int, int]] = set()
        for e in self.send_window.outstanding.values():
            if type(e) is ExtOutstanding:
                key = (e.lane, e.lseq)
                if key not in seen:
                    seen.add(key)
                    pending.append((e.message, e.priority, e.lane))
            else:
                pending.append((e.data, e.priority, 0))
        for number in sorted(self.lanes_out):
            olane = self.lanes_out[number]
            for i, (data, priority) in enumerate(olane.queue):
                if i == 0 and olane.offset and (number, olane.lseq) in seen:
                    continue  # partly sent: reported above
                pending.append((data, priority, number))
        return pending

    # ---------------------------------------------------------------- timers

    def next_timer(self) -> float | None:
        """The earliest deadline of this session (None if it has none)."""
        cfg = self.config
        if self.state is SessionState.HELLO_SENT:
            if self.hs_retransmit_at is None:
                return self.hs_deadline_at
            return min(self.hs_retransmit_at, self.hs_deadline_at)
        if self.state is SessionState.RESPONSE_SENT:
            return self.hs_deadline_at
        if self.state is not SessionState.ESTABLISHED:
            return None
        t = min(self.last_recv_at + self.idle_limit,
                self.last_send_at + cfg.keepalive_interval)
        for due in (self.send_window.rto_at, self.ack_at, self.pace_at, self.credit_probe_at,
                    self.recovery.loss_at, self.recovery.pto_at()):
            if due is not None and due < t:
                t = due
        if not self.confirmed and self.hs_retransmit_at is not None:
            t = min(t, self.hs_retransmit_at, self.hs_deadline_at)
        keys = self.recv_keys
        if keys is not None and keys.prev_expires_at is not None:
            t = min(t, keys.prev_expires_at)
        gap = self.recv_window.gap_since
        if gap is not None:
            t = min(t, gap + cfg.max_retransmissions * cfg.max_rto)
        silent = self.silence_deadline()
        if silent is not None and silent < t:
            t = silent
        if self.rt_reassembly.partials:
            late = self.rt_reassembly.expires_at()
            if late is not None and late < t:
                t = late
        return t

    def silence_deadline(self) -> float | None:
        """When the peer counts as gone: PEER_TIMEOUT (at least 3 PTOs) after the
        oldest packet still waiting for an answer, or after the last packet heard,
        whichever is later (docs/protocol.md section 8). None when nothing waits."""
        recovery = self.recovery
        if recovery.eliciting <= 0:
            return None
        start = max(self.last_recv_at, recovery.waiting_since)
        return start + max(self.config.peer_timeout, 3 * self.rtt.pto)

    def on_timer(self, now: float) -> None:
        """Handle every deadline that has passed (the endpoint handles HS states)."""
        cfg = self.config
        if now >= self.last_recv_at + self.idle_limit:
            self.close(CloseReason.TIMEOUT, now)
            return
        silent = self.silence_deadline()
        if silent is not None and now >= silent:
            self.close(CloseReason.TIMEOUT, now)  # nothing answered: the peer is gone
            return
        gap = self.recv_window.gap_since
        if gap is not None and now >= gap + cfg.max_retransmissions * cfg.max_rto:
            # An honest sender closes with TIMEOUT before a hole stays open this
            # long (docs/protocol.md section 6): the peer parks data in our buffer.
            self.close(CloseReason.PROTOCOL_VIOLATION, now)
            return
        if not self.confirmed and self.hs_retransmit_at is not None:
            if now >= self.hs_deadline_at:
                self.close(CloseReason.TIMEOUT, now)
                return
            if now >= self.hs_retransmit_at:
                self.out.append((self.finish_datagram, self.addr))
                self.stats.packets_sent += 1
                self.hs_rto = min(self.hs_rto * 2, cfg.handshake_max_rto)
                self.hs_retransmit_at = now + self.hs_rto
        keys = self.recv_keys
        if keys is not None:
            keys.expire_previous(now)
        if self.rt_reassembly.partials:
            self.rt_reassembly.expire(now)  # partial REALTIME messages past the deadline
        recovery = self.recovery
        if recovery.loss_at is not None and now >= recovery.loss_at:
            lost = recovery.on_loss_timer(now)
            if lost:
                self._on_lost(lost)
        pto_at = recovery.pto_at()
        if pto_at is not None and now >= pto_at:
            # Probe timeout: an ack-eliciting ACK, which congestion control does
            # not hold back; its answer lets loss detection see what is missing.
            recovery.pto_count += 1
            self.ack_now = True
            self.ack_probe = True
        if self.credit_probe_at is not None and now >= self.credit_probe_at:
            # A PTO, doubling up to CREDIT_PROBE_MAX: a peer whose application does
            # not read costs one small probe a second.
            self.credit_probe_gap = min(2 * self.credit_probe_gap, CREDIT_PROBE_MAX)
            self.credit_probe_at = now + self.credit_probe_gap
            self.ack_now = True
            self.ack_probe = True
        if self.pace_at is not None and now >= self.pace_at:
            self.pace_at = None  # the flush that follows sends what the pacer allows
        window = self.send_window
        if window.rto_at is not None and now >= window.rto_at:
            # RFC 6298 5.4, behind loss detection by pn: resend the earliest
            # unacknowledged messages (one datagram's worth), not the whole window.
            due = window.on_timeout(now, self.rtt.rto,
                                    cfg.max_datagram - HEADER_LEN - TAG_LEN - RSEQ_LEN)
            self.rtt.backoff()
            window.rto_at = now + self.rtt.rto if window.outstanding else None
            for rseq in due:
                if rseq not in self.retransmit:
                    self.retransmit.append(rseq)
        if self.ack_at is not None and now >= self.ack_at:
            self.ack_now = True
        if (not self.ack_now and not self.retransmit and not self.queued
                and now >= self.last_send_at + cfg.keepalive_interval):
            # Keepalive: it asks for an answer, so a dead peer is noticed within
            # PEER_TIMEOUT of it even when no data flows.
            self.ack_now = True
            self.ack_probe = True
