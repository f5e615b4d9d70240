"""One peer's state machine (SPEC sections 4, 5 for one session, 6 and 8).

Owns: the life of a session (``SessionState``), its keys and packet numbers,
replay window, token bucket, strikes, reliable windows, send queue and
packing, and its timers.
Never: reads a clock, a socket or global randomness; decides about packets
that did not authenticate (the endpoint drops those before they get here).

Output goes to the endpoint's shared lists: ``out`` (datagram, address) and
``events``.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Final

from intentra.config import EndpointConfig
from intentra.constants import (
    HEADER_LEN,
    LEN_PREFIX,
    MAX_PRIORITY,
    RSEQ_LEN,
    TAG_LEN,
    CloseReason,
    Intent,
    PacketType,
)
from intentra.core.aead import ReceiveKeys, SendKeys
from intentra.core.ratelimit import TokenBucket
from intentra.core.reliable import ReceiveWindow, SendWindow, Violation
from intentra.core.replay import ReplayWindow
from intentra.core.rtt import RttEstimator
from intentra.core.stats import Stats
from intentra.core.wire import HEADER, U16, U32, U64
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
_VERSION_BITS: Final = 1 << 4
_SEQ_MASK: Final = 0xFFFFFFFF
_tuple_new = tuple.__new__
"""Builds a NamedTuple from a tuple without its keyword-handling __new__ (half the time)."""
_LEVELS: Final = range(MAX_PRIORITY, -1, -1)
DUP_ACK_THRESHOLD: Final = 3
"""ACK packets repeating one ``ack`` before the head of the window is resent."""


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
        "addr",
        "bucket",
        "config",
        "confirmed",
        "conn_id",
        "cookie",
        "cookie_taken_at",
        "created_at",
        "events",
        "finish_answer_until",
        "finish_answered_at",
        "finish_body",
        "finish_datagram",
        "finish_retry_at",
        "hello_key",
        "hs_datagram",
        "hs_deadline_at",
        "hs_retransmit_at",
        "hs_rto",
        "idle_limit",
        "initiator",
        "initiator_hs",
        "last_recv_at",
        "last_send_at",
        "last_strike_at",
        "out",
        "peer_key",
        "pending",
        "pending_ip",
        "pinned_key",
        "pn_next",
        "queued",
        "queued_reliable",
        "recv_keys",
        "recv_window",
        "rel_queue",
        "remote_id",
        "replay",
        "responder_hs",
        "retransmit",
        "rt_queue",
        "rtt",
        "send_keys",
        "send_window",
        "state",
        "stats",
        "strikes",
        "timer_at",
        "unacked",
    )


    def __init__(self, conn_id: int, addr: Address, initiator: bool, now: float,
                 config: EndpointConfig, stats: Stats, out: list[tuple[bytes, Address]],
                 events: deque[Event]) -> None:
        self.conn_id = conn_id
        self.remote_id = 0
        self.addr = addr
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
        self.replay = ReplayWindow(config.replay_window)
        self.bucket = TokenBucket(config.rate_limit_pps, config.rate_limit_burst, now)
        self.strikes = 0
        self.last_strike_at = 0.0
        self.last_recv_at = now
        self.last_send_at = now
        self.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        # --- delivery
        self.send_window = SendWindow(config.max_reliable_in_flight)
        self.recv_window = ReceiveWindow(config.max_reliable_in_flight, config.max_reorder_buffer)
        self.rt_queue: list[deque[tuple[bytes, float]] | None] = [None] * (MAX_PRIORITY + 1)
        self.rel_queue: list[deque[bytes] | None] = [None] * (MAX_PRIORITY + 1)
        self.queued = 0
        self.queued_reliable = 0
        self.retransmit: list[int] = []
        self.ack_at: float | None = None
        self.ack_now = False
        self.unacked = 0  # reliable messages received since the last ACK went out
        self.timer_at: float | None = None

    # ----------------------------------------------------------------- state

    def establish(self, remote_id: int, peer_key: bytes, send_key: bytes, recv_key: bytes,
                  now: float) -> None:
        self.remote_id = remote_id
        self.peer_key = peer_key
        self.send_keys = SendKeys(send_key, now)
        self.recv_keys = ReceiveKeys(recv_key)
        self.state = SessionState.ESTABLISHED
        self.last_recv_at = now
        self.last_send_at = now

    @property
    def established(self) -> bool:
        return self.state is SessionState.ESTABLISHED

    @property
    def reliable_capacity(self) -> int:
        """Reliable messages the application may still queue without exceeding the window."""
        return self.send_window.room - self.queued_reliable

    @property
    def has_output(self) -> bool:
        return bool(self.queued or self.retransmit or self.ack_now)

    # ------------------------------------------------------------- sending

    def enqueue(self, data: bytes, intent: int, priority: int, now: float) -> bool:
        """Queue a message; False when the queue is full (the caller counts the drop)."""
        if self.queued >= self.config.max_send_queue:
            return False
        if intent == _REALTIME:
            q = self.rt_queue[priority]
            if q is None:
                q = self.rt_queue[priority] = deque()
            q.append((data, now))
        else:
            rq = self.rel_queue[priority]
            if rq is None:
                rq = self.rel_queue[priority] = deque()
            rq.append(data)
            self.queued_reliable += 1
        self.queued += 1
        return True

    def _next_pn(self, keys: SendKeys, now: float) -> int | None:
        """The packet number for the next packet, after a key update if one is due."""
        pn = self.pn_next
        cfg = self.config
        if pn >= cfg.pn_limit - 1:
            return None
        if keys.due(now, cfg.key_update_packets, cfg.key_update_time,
                    cfg.key_update_min_interval):
            keys.update(now)
            self.stats.key_updates_send += 1
        self.pn_next = pn + 1
        return pn

    def _seal(self, ptype: int, intent: int, priority: int, ack: int, plaintext: bytes,
              now: float) -> bool:
        """Seal one packet and put it in ``out``. False if closed or the keys are exhausted."""
        keys = self.send_keys
        if keys is None:
            return False  # not established, or closed: nothing may be sealed
        pn = self._next_pn(keys, now)
        if pn is None:
            self.close(CloseReason.KEY_EXHAUSTED, now)
            return False
        header = HEADER.pack(_VERSION_BITS | ptype, (intent << 6) | (priority << 3) | keys.phase,
                             len(plaintext), self.remote_id, pn & _SEQ_MASK, ack)
        self.out.append((header + keys.seal(self.remote_id, pn, header, plaintext), self.addr))
        self.stats.packets_sent += 1
        self.last_send_at = now
        return True

    def send_ack(self, now: float) -> None:
        if self._seal(_ACK, _RELIABLE, 0, self.recv_window.ack,
                      U64.pack(self.recv_window.bitmap()), now):
            self.ack_at = None
            self.ack_now = False
            self.unacked = 0

    def flush(self, now: float) -> None:
        """Pack everything queued into as few datagrams as fit (SPEC section 4)."""
        if self.state is not SessionState.ESTABLISHED:
            return
        cfg = self.config
        limit = cfg.max_datagram - HEADER_LEN - TAG_LEN
        ack = self.recv_window.ack
        sent_data = False
        # Retransmissions first: they are the oldest, and the receiver's window waits on them.
        if self.retransmit:
            sent_data = self._flush_retransmits(now, limit, ack) or sent_data
            if self.state is not SessionState.ESTABLISHED:
                return
        if self.queued:
            sent_data = self._flush_queue(now, limit, ack) or sent_data
        if self.state is not SessionState.ESTABLISHED:
            return
        if self.ack_now or (sent_data and self.ack_at is not None):
            if self.recv_window.buffer or self.ack_now:
                self.send_ack(now)  # a gap: the bitmap says what is missing
            else:
                self.ack_at = None  # the DATA just sent carried the ack
                self.unacked = 0

    def _flush_retransmits(self, now: float, limit: int, ack: int) -> bool:
        window = self.send_window
        rto = self.rtt.rto
        chunks: list[bytes] = []
        first = -1
        prev = -2
        size = RSEQ_LEN
        prio = 0
        sent = False
        for rseq in self.retransmit:
            entry = window.outstanding.get(rseq)
            if entry is None:
                continue  # acknowledged meanwhile
            entry.retries += 1
            if entry.retries > self.config.max_retransmissions:
                self.retransmit.clear()
                self.close(CloseReason.TIMEOUT, now)
                return sent
            entry.sent_at = now
            self.stats.retransmissions += 1
            need = LEN_PREFIX + len(entry.data)
            if chunks and (rseq != ((prev + 1) & _SEQ_MASK) or size + need > limit):
                if not self._seal(_DATA, _RELIABLE, prio, ack,
                                  U32.pack(first) + b"".join(chunks), now):
                    return sent
                sent = True
                chunks, size, prio = [], RSEQ_LEN, 0
            if not chunks:
                first = rseq
            chunks.append(U16.pack(len(entry.data)) + entry.data)
            size += need
            prio = max(prio, entry.priority)
            prev = rseq
        self.retransmit.clear()
        if chunks:
            sent = self._seal(_DATA, _RELIABLE, prio, ack,
                              U32.pack(first) + b"".join(chunks), now) or sent
        if window.outstanding and window.rto_at is None:
            window.rto_at = now + rto
        return sent

    def _flush_queue(self, now: float, limit: int, ack: int) -> bool:
        cfg = self.config
        stats = self.stats
        deadline = cfg.realtime_deadline
        window = self.send_window
        rto = self.rtt.rto
        pack_len = U16.pack
        rt_parts: list[bytes] = []
        rt_size = 0
        rt_prio = 0
        rel_parts: list[bytes] = []
        rel_size = RSEQ_LEN
        rel_prio = 0
        rel_first = 0
        sent = False
        for level in _LEVELS:
            q = self.rt_queue[level]
            while q:
                data, queued_at = q.popleft()
                self.queued -= 1
                if now - queued_at > deadline:
                    stats.messages_dropped_deadline += 1
                    continue
                need = LEN_PREFIX + len(data)
                if rt_parts and rt_size + need > limit:
                    if not self._seal(_DATA, _REALTIME, rt_prio, ack, b"".join(rt_parts), now):
                        return sent
                    sent = True
                    rt_parts, rt_size, rt_prio = [], 0, 0
                rt_parts.append(pack_len(len(data)))
                rt_parts.append(data)
                rt_size += need
                rt_prio = max(rt_prio, level)
                stats.messages_sent_realtime += 1
            rq = self.rel_queue[level]
            while rq and window.room > 0:
                data = rq.popleft()
                self.queued -= 1
                self.queued_reliable -= 1
                need = LEN_PREFIX + len(data)
                if rel_parts and rel_size + need > limit:
                    if not self._seal(_DATA, _RELIABLE, rel_prio, ack,
                                      U32.pack(rel_first) + b"".join(rel_parts), now):
                        return sent
                    sent = True
                    rel_parts, rel_size, rel_prio = [], RSEQ_LEN, 0
                rseq = window.assign(data, level, now, rto)
                if not rel_parts:
                    rel_first = rseq
                rel_parts.append(pack_len(len(data)))
                rel_parts.append(data)
                rel_size += need
                rel_prio = max(rel_prio, level)
                stats.messages_sent_reliable += 1
        if rt_parts:
            if not self._seal(_DATA, _REALTIME, rt_prio, ack, b"".join(rt_parts), now):
                return sent
            sent = True
        if rel_parts:
            if not self._seal(_DATA, _RELIABLE, rel_prio, ack,
                              U32.pack(rel_first) + b"".join(rel_parts), now):
                return sent
            sent = True
        return sent

    # ------------------------------------------------------------ receiving

    def on_packet(self, ptype: int, intent: int, priority: int, ack: int,
                  plaintext: bytes, now: float) -> None:
        """SPEC section 4 step 8, for a packet that authenticated. Violations strike."""
        try:
            if ptype == _DATA:
                self._on_data(intent, priority, ack, plaintext, now)
            elif ptype == _ACK:
                self._apply_ack(ack, U64.unpack(plaintext)[0], now)
            else:  # CLOSE
                try:
                    reason = CloseReason(plaintext[0])
                except ValueError:
                    reason = CloseReason.PROTOCOL_VIOLATION
                self.close(reason, now, by_peer=True)
        except Violation:
            self.strike(now)

    def strike(self, now: float) -> None:
        """SPEC section 8: count an authenticated violation; close at the threshold."""
        cfg = self.config
        if now - self.last_strike_at > cfg.strike_decay:
            self.strikes = 0
        self.strikes += 1
        self.last_strike_at = now
        self.stats.strike_events += 1
        if self.strikes >= cfg.strike_threshold:
            self.close(CloseReason.PROTOCOL_VIOLATION, now)

    def _apply_ack(self, ack: int, bitmap: int | None, now: float) -> None:
        window = self.send_window
        if not window.outstanding and ack == window.acked and not bitmap:
            return
        acked_before = window.acked
        sample, fast = window.on_ack(ack, bitmap, now, self.rtt.rto)
        if sample is not None:
            self.rtt.sample(sample)
        elif window.acked != acked_before:
            self.rtt.reset_backoff()
        if window.dup_acks == DUP_ACK_THRESHOLD:
            fast.extend(r for r in window.head_block(
                self.config.max_datagram - HEADER_LEN - TAG_LEN - RSEQ_LEN) if r not in fast)
        if fast:
            self.retransmit.extend(fast)

    def _on_data(self, intent: int, priority: int, ack: int, plaintext: bytes,
                 now: float) -> None:
        # Parse the whole packet before acting: a framing error is a violation
        # and nothing of the packet is delivered.
        n = len(plaintext)
        off = RSEQ_LEN if intent == _RELIABLE else 0
        if off == 0 and n > 2 and (plaintext[0] << 8) | plaintext[1] == n - 2:
            # one REALTIME message: the common case of a lightly loaded sender
            self._apply_ack(ack, None, now)
            self.events.append(_tuple_new(MessageReceived, (self.conn_id, plaintext[2:],
                                                            Intent.REALTIME, priority)))
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
            self._apply_ack(ack, None, now)
            realtime = Intent.REALTIME
            events.extend([_tuple_new(MessageReceived, (conn_id, data, realtime, priority))
                           for data in messages])
            self.stats.messages_delivered_realtime += len(messages)
            return
        rseq = U32.unpack_from(plaintext)[0]
        window = self.recv_window
        window.check(rseq, len(messages))
        self._apply_ack(ack, None, now)
        ready: list[bytes] = []
        gap = False
        for data in messages:
            status = window.receive(rseq, data, ready)
            if status == 3:
                self.stats.messages_dropped_reorder_full += 1
                gap = True
            elif status:
                gap = True
            rseq = (rseq + 1) & _SEQ_MASK
        if window.buffer:
            gap = True
        self.unacked += len(messages)
        if gap or self.unacked >= self.config.ack_every:
            self.ack_now = True
        elif self.ack_at is None:
            self.ack_at = now + self.config.ack_delay
        if ready:
            reliable = Intent.RELIABLE
            events.extend([_tuple_new(MessageReceived, (conn_id, data, reliable, priority))
                           for data in ready])
            self.stats.messages_delivered_reliable += len(ready)

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
        if was_established:
            self.stats.connection_closes += 1
            pending = [(e.data, e.priority) for e in self.send_window.outstanding.values()]
            for level in _LEVELS:
                pending.extend((data, level) for data in self.rel_queue[level] or ())
            self.events.append(SessionClosed(self.conn_id, reason, by_peer, len(pending),
                                             tuple(pending)))
        self.send_keys = None
        self.recv_keys = None
        self.initiator_hs = None
        self.responder_hs = None

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
        if self.send_window.rto_at is not None:
            t = min(t, self.send_window.rto_at)
        if self.ack_at is not None:
            t = min(t, self.ack_at)
        if not self.confirmed and self.hs_retransmit_at is not None:
            t = min(t, self.hs_retransmit_at, self.hs_deadline_at)
        keys = self.recv_keys
        if keys is not None and keys.prev_expires_at is not None:
            t = min(t, keys.prev_expires_at)
        return t

    def on_timer(self, now: float) -> None:
        """Handle every deadline that has passed (the endpoint handles HS states)."""
        cfg = self.config
        if now >= self.last_recv_at + self.idle_limit:
            self.close(CloseReason.TIMEOUT, now)
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
        window = self.send_window
        if window.rto_at is not None and now >= window.rto_at:
            # RFC 6298 5.4: resend the earliest unacknowledged messages (one
            # datagram's worth), not the whole window: SACKs then drive the rest,
            # and first transmissions keep giving RTT samples (Karn's rule).
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
            self.ack_now = True  # keepalive
