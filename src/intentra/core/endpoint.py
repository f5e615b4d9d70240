"""Endpoint: one static key, many sessions; the sans-I/O core's front door.

Owns: conn_id demultiplexing, the receive order of docs/protocol.md section 4-6 steps 1-7,
the handshake of docs/protocol.md section 7 for both roles (cookies, limits, pending
handshakes, replacement), the endpoint-wide timer, and the counters of
docs/protocol.md section 11.
Never: reads a clock (``now`` is monotonic seconds, passed in), reads global
randomness (``rng`` is passed in), touches a socket, or lets a packet that did
not authenticate change a session (steps 1-5 drop and count, nothing more).

Use: feed ``receive_datagram(s)``, ``connect``, ``send``, ``close`` and
``handle_timer``; after each, drain ``datagrams_to_send``, then
``next_event`` until None, then re-arm one timer at ``get_timer()``.
"""

from __future__ import annotations

import heapq
import hmac
import ipaddress
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

import intentra.native
from intentra.config import EndpointConfig
from intentra.constants import (
    HEADER_LEN,
    KEY_LEN,
    MAX_LANE,
    MAX_MESSAGE_LIMIT,
    MAX_PRIORITY,
    MIN_PRIORITY,
    CloseReason,
    HsKind,
    Intent,
    PacketType,
)
from intentra.core.aead import AeadFactory
from intentra.core.cookie import CookieJar, address_bytes
from intentra.core.hsguard import InitiatorGuard
from intentra.core.lanes import ReassemblyBudget
from intentra.core.noise import InitiatorHandshake, ResponderHandshake
from intentra.core.packing import PackerFactory
from intentra.core.ratelimit import TokenBucket
from intentra.core.reliable import CreditBudget
from intentra.core.session import Session, SessionState
from intentra.core.stats import Stats
from intentra.core.wire import (
    LOW_ORDER_POINTS,
    Header,
    HsBody,
    pack_cookie_reply,
    pack_finish,
    pack_hello,
    pack_response,
    parse_header,
    recover_pn,
    unpack_hs,
)
from intentra.errors import (
    IntentraError,
    InvalidMessageError,
    MessageTooLargeError,
    PeerClosedError,
    SendQueueFullError,
)
from intentra.events import (
    Address,
    Event,
    HandshakeCompleted,
    HandshakeConfirmed,
    HandshakeFailed,
    MessageReceived,
    PeerRoamed,
)

Rng = Callable[[int], bytes]
_HS: Final = int(PacketType.HS)
_DATA: Final = int(PacketType.DATA)
_ACK: Final = int(PacketType.ACK)
_REALTIME: Final = int(Intent.REALTIME)
_ESTABLISHED: Final = SessionState.ESTABLISHED
CREDIT_FLOOR_DATAGRAMS: Final = 4
"""Credit (in datagrams) every session may keep beyond the endpoint-wide bound, so a
session opened while others hold the whole of it still delivers."""
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"
_NO_COOKIE: Final = bytes(16)
"""The cookie of a first HELLO; a COOKIE carrying it changes nothing."""


class ConnectionLimitError(IntentraError):
    """The endpoint holds MAX_CONNECTIONS sessions and pending handshakes already."""


class Endpoint:
    """The sans-I/O intentra endpoint.

    Args:
        static_key: this endpoint's raw 32-byte X25519 private key.
        rng: a source of random bytes (``os.urandom`` in production).
        config: tunables; docs/protocol.md section 2 defaults when omitted.
        allowed_peers: raw public keys allowed to establish sessions, or None for any.
        cookie_master: the 32-byte cookie master secret; drawn from ``rng`` if
            None. Endpoints sharing a port share it.
        wall_offset: ``unix_time - now``, for cookie epochs (docs/protocol.md section 7).
        conn_id_class: ``(index, count)``: every conn_id this endpoint picks is
            ``index`` modulo ``count``. Worker ``index`` of ``count`` processes on
            one port picks its ids so, and the kernel steers each datagram to the
            worker its conn_id names (see ``intentra.workers``).
        release_on_take: RELIABLE messages give their room back to the credit
            when taken through :meth:`next_event` or :meth:`events`. An adapter
            that queues messages for its application passes False and calls
            :meth:`release` when the application reads them, so a slow reader
            holds the sender back instead of growing its queue.
        native: run the per-datagram path in C (``intentra._native``, docs/native.md):
            True requires the extension (RuntimeError if it was not built), False
            is the pure-Python reference, None (the default) uses it when it is
            built and ``INTENTRA_NATIVE`` is not ``0``. Behaviour is the same.
    """

    def __init__(self, static_key: bytes, rng: Rng, config: EndpointConfig | None = None,
                 allowed_peers: Iterable[bytes] | None = None,
                 cookie_master: bytes | None = None, wall_offset: float = 0.0,
                 conn_id_class: tuple[int, int] = (0, 1), release_on_take: bool = True,
                 native: bool | None = None) -> None:
        if len(static_key) != KEY_LEN:
            raise ValueError("static_key is the 32 raw bytes of an X25519 private key")
        index, count = conn_id_class
        if not 0 <= index < count <= 256:
            raise ValueError(f"conn_id_class must be (index, count) with 0 <= index < count "
                             f"<= 256, got {conn_id_class!r}")
        self._id_index, self._id_count = index, count
        self.config = config if config is not None else EndpointConfig()
        self._max_message = self.config.max_message_size
        self.stats = Stats()
        self._static = bytes(static_key)
        self._rng = rng
        self.allowed_peers: frozenset[bytes] | None = (
            frozenset(bytes(k) for k in allowed_peers) if allowed_peers is not None else None)
        self._cookies = CookieJar(cookie_master if cookie_master is not None else rng(32),
                                  self.config.cookie_rotation)
        self.wall_offset = wall_offset
        self.sessions: dict[int, Session] = {}
        self._by_peer_key: dict[bytes, int] = {}       # responder sessions, for REPLACED
        self._pending_hello: dict[tuple[Address, bytes], int] = {}
        self._pending_per_ip: dict[object, int] = {}
        self._pending_count = 0
        self._pending_order: dict[int, None] = {}      # pending conn_ids, oldest first
        self._guards: dict[int, InitiatorGuard] = {}   # initiator handshakes in HELLO_SENT
        # failed-open allowances per session: (from its address, from elsewhere)
        self._failed_opens: dict[int, tuple[TokenBucket, TokenBucket]] = {}
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._dirty: set[Session] = set()
        self._flush: set[Session] = set()
        self._timers: list[tuple[float, int, int]] = []
        self._timer_tick = 0
        self._release_on_take = release_on_take
        cfg = self.config
        self.credit_budget = CreditBudget(cfg.max_reorder_total,
                                          CREDIT_FLOOR_DATAGRAMS * cfg.max_datagram)
        self.reassembly_budget = ReassemblyBudget(cfg.max_realtime_reassembly_total)
        # The native datapath works on this endpoint's own objects: it keeps no
        # state, so both paths share one pn space, one replay window, one set of keys.
        self._native: Any = None
        self._aead: AeadFactory | None = None
        self._packer: PackerFactory | None = None
        if native is None:
            native = intentra.native.enabled()
        if native:
            module = intentra.native.module()
            self._aead = module.AESGCM
            self._packer = module.Packer
            self._native = module.Receiver(self, MessageReceived, Intent.REALTIME)
        self.native = bool(native)
        """Whether this endpoint runs the native datapath (``intentra.native.describe``)."""

    # ---------------------------------------------------------------- gauges

    @property
    def handshakes_in_flight(self) -> int:
        return self._pending_count

    @property
    def connections_active(self) -> int:
        return sum(1 for s in list(self.sessions.values()) if s.state is _ESTABLISHED)

    @property
    def reorder_buffer_bytes(self) -> int:
        """RELIABLE bytes held out of order, in partial messages or waiting for their lane."""
        total = 0
        for s in list(self.sessions.values()):
            window = s.recv_window
            total += window.buffered_bytes + (window.lanes.held if window.lanes else 0)
        return total

    # ----------------------------------------------------------------- input

    def receive_datagrams(self, batch: Iterable[tuple[bytes, Address]], now: float) -> None:
        """Process a batch of received datagrams (the fast path's entry point)."""
        if self._native is not None:
            self._native.receive(batch if isinstance(batch, list | tuple) else list(batch), now)
            return
        receive = self._receive
        for data, addr in batch:
            receive(data, addr, now)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """docs/protocol.md section 4-6 receive order. Never raises on network input."""
        if self._native is not None:
            self._native.receive(((data, addr),), now)
        else:
            self._receive(data, addr, now)

    def _receive(self, data: bytes, addr: Address, now: float) -> None:
        """The receive order in Python: the reference (the native path hands it what it
        does not handle itself, from step 1, with nothing of the datagram done yet)."""
        stats = self.stats
        stats.packets_received += 1
        # 1. header checks (section 3)
        fields = parse_header(data)
        if fields is None:
            stats.packets_dropped_malformed += 1
            return
        ptype, intent, priority, key_phase, _, conn_id, seq, ack, eliciting, extended = fields
        if ptype == _HS:
            self._on_hs(data, Header._make(fields), addr, now)
            return
        # 2. session lookup
        session = self.sessions.get(conn_id)
        if session is None:
            stats.packets_dropped_unknown += 1
            return
        keys = session.recv_keys
        if keys is None:
            stats.packets_dropped_unknown += 1
            return
        # 3. rate limits, before any cryptography. The session's bucket pays only
        # for packets that authenticate; opens that fail are paid from separate
        # allowances (the session's own address, any other), so forgeries cannot
        # crowd out genuine packets. Opens per second <= both (docs/security.md).
        bucket = session.bucket
        home = addr == session.addr
        fails = self._failed_opens.get(conn_id)
        if not bucket.ready(now) or (fails is not None and not fails[not home].ready(now)):
            stats.packets_dropped_rate_limit += 1
            return
        # 4. packet number recovery and replay pre-check
        replay = session.replay
        pn = recover_pn(replay.highest, seq)
        if not replay.is_fresh(pn):
            stats.replay_rejections += 1
            return
        # 5. AEAD open; on failure nothing in the session changes. A previous
        # key past its lifetime is erased first, whatever the timers did.
        if keys.prev_expires_at is not None and now >= keys.prev_expires_at:
            keys.expire_previous(now)
        cfg = self.config
        # Keys beyond the next are tried only after a silence long enough for
        # the peer to have updated twice (see ReceiveKeys.open).
        catch_up = (cfg.key_update_catch_up
                    if now - session.last_recv_at >= cfg.key_update_min_interval else 0)
        opened = keys.open(conn_id, pn, key_phase, data[:HEADER_LEN],
                           memoryview(data)[HEADER_LEN:], catch_up)
        if opened is None:
            self._failed_open(conn_id, home, now)
            stats.packets_dropped_crypto += 1
            return
        bucket.tokens -= 1.0  # step 3's token, now that the packet authenticated
        plaintext, moves_phase = opened
        # 6. commit: replay window, then the key update this packet proved
        newest = pn > replay.highest
        replay.mark(pn)
        self._authenticated(session, ptype, intent, priority, ack, eliciting, pn, plaintext,
                            moves_phase, newest, addr, len(data), now, extended)

    def _authenticated(self, session: Session, ptype: int, intent: int, priority: int,
                       ack: int, eliciting: int, pn: int, plaintext: bytes, moves_phase: int,
                       newest: bool, addr: Address, size: int, now: float,
                       extended: int = 0) -> None:
        """Steps 6 (the key update) to 8 of a packet that authenticated, its pn marked.

        The native datapath calls it too, for every packet it does not finish itself
        (never with ``extended``: it hands a datagram with the X bit to
        :meth:`_receive` whole).
        """
        stats = self.stats
        keys = session.recv_keys
        bucket = session.bucket
        if moves_phase and keys is not None:
            keys.commit_update(pn, now, 3 * session.rtt.rto, moves_phase)
            stats.key_updates_receive += moves_phase
        # 7. a new address, on the newest packet only (as QUIC does): a reordered
        # older packet does not move the peer back. The new address is validated
        # before it gets more than 3x what came from it: a captured packet raced
        # from a victim's address cannot aim the session's traffic there.
        if addr != session.addr:
            if newest:
                self._new_path(session, addr, size, now)
        elif session.path_budget is not None:
            session.path_budget += 3 * size
        session.last_recv_at = now
        if not session.confirmed:
            session.confirmed = True
            session.finish_datagram = b""
            self._events.append(HandshakeConfirmed(session.conn_id))
        # 8. act
        had_ack_at = session.ack_at is not None
        events = self._events
        before = len(events)
        session.on_packet(ptype, intent, priority, ack, plaintext, now, pn, eliciting, extended)
        # A packet costs per message delivered too: each one past the first is
        # charged to the bucket as debt, so one packing many tiny messages pays
        # for them and a peer's sustained message rate is bounded.
        extra = len(events) - before - 1
        if extra > 0:
            bucket.tokens -= extra * self.config.message_cost
        if session.state is SessionState.CLOSED:
            self._remove(session)
            return
        if (session.path_budget is not None and ptype == _ACK and addr == session.addr
                and session.peer_largest_pn >= session.path_probe_pn):
            # 7, completed: an authenticated ACK from the new address names a pn
            # sent there since the probe. Congestion control and RTT start afresh.
            old = session.validated_addr
            session.validate_path(now)
            stats.roams += 1
            self._events.append(PeerRoamed(session.conn_id, old, addr))
        # Re-arm only if a deadline may have moved earlier. A REALTIME DATA that
        # moved no key, started no ACK timer and found nothing of ours in flight
        # only pushes the idle deadline later, which the lazy heap entry handles
        # (see _rearm): a fan-in of REALTIME messages then costs no timer work
        # per packet (an ACK it makes due goes at the end of the batch).
        if (ptype != _DATA or intent != _REALTIME or moves_phase or extended
                or session.timer_at is None
                or (not had_ack_at and session.ack_at is not None)
                or session.recovery.in_flight):
            self._dirty.add(session)
        if session.ack_now or session.retransmit or session.queued:
            self._flush.add(session)  # an ACK may have opened the window for queued messages

    def _failed_open(self, conn_id: int, home: bool, now: float) -> None:
        """Charge a failed AEAD open to the session's allowance for its kind of source."""
        fails = self._failed_opens.get(conn_id)
        if fails is None:
            cfg = self.config
            fails = self._failed_opens[conn_id] = (
                TokenBucket(cfg.failed_open_pps, cfg.failed_open_burst, now),
                TokenBucket(cfg.failed_open_pps, cfg.failed_open_burst, now))
        fails[not home].charge()

    # ------------------------------------------------------------ handshake

    def _on_hs(self, data: bytes, header: Header, addr: Address, now: float) -> None:
        body = unpack_hs(data, header)
        if body is None:
            self.stats.packets_dropped_malformed += 1
            return
        if body.kind is HsKind.HELLO:
            self._on_hello(body, addr, now)
            return
        session = self.sessions.get(header.conn_id)
        if session is None:
            self.stats.packets_dropped_unknown += 1
            return
        if body.kind is HsKind.COOKIE:
            self._on_cookie(session, body, addr, now)
        elif body.kind is HsKind.RESPONSE:
            self._on_response(session, body, addr, now)
        else:
            self._on_finish(session, body, data, addr, now)

    def _on_hello(self, body: HsBody, addr: Address, now: float) -> None:
        stats = self.stats
        cfg = self.config
        source = address_bytes(addr)
        if source is None:
            stats.packets_dropped_malformed += 1
            return
        # 2. stateless cookie check: no state at all before the address is proven
        if cfg.require_cookie and not self._cookies.verify(body.cookie, source,
                                                           now + self.wall_offset):
            stats.cookie_replies += 1
            stats.packets_sent += 1
            self._out.append((pack_cookie_reply(body.sender_id,
                                                self._cookies.make(source, now + self.wall_offset)),
                              addr))
            return
        # 3. a repeated HELLO gets the same RESPONSE, not a second pending handshake
        hello_key = (addr, body.noise)
        existing = self._pending_hello.get(hello_key)
        if existing is not None:
            pending = self.sessions.get(existing)
            if pending is not None and pending.state is SessionState.RESPONSE_SENT:
                stats.packets_sent += 1
                self._out.append((pending.hs_datagram, addr))
            return
        # MAX_HANDSHAKES_PER_IP counts an IPv6 source per prefix (a /64 by
        # default): one host holds a whole /64, and would otherwise have 2^64
        # sources. A full MAX_HANDSHAKES_IN_FLIGHT makes room, as a SYN cache
        # does, by dropping the oldest pending handshake: holding every slot then
        # takes a fresh cookie-valid HELLO per slot per round trip of the genuine
        # clients, from enough sources (docs/security.md, "Handshake lockout").
        ip = self._source_key(addr, source)
        if (len(self.sessions) >= cfg.max_connections
                or self._pending_per_ip.get(ip, 0) >= cfg.max_handshakes_per_ip):
            stats.handshakes_rejected += 1
            return
        if body.noise in LOW_ORDER_POINTS:
            stats.packets_dropped_crypto += 1  # could never complete; refused before any DH
            return
        if self._pending_count >= cfg.max_handshakes_in_flight:
            oldest = self.sessions.get(next(iter(self._pending_order), 0))
            if oldest is None:  # pragma: no cover - the order lists exactly the pending
                stats.handshakes_rejected += 1
                return
            stats.handshakes_rejected += 1
            self._remove(oldest)
        hs = ResponderHandshake.create(self._static, self._rng(KEY_LEN), body.noise)
        if hs is None:
            stats.packets_dropped_crypto += 1
            return
        conn_id = self._new_conn_id()
        session = Session(conn_id, addr, False, now, cfg, stats, self._out, self._events,
                          self._rng, self.credit_budget,
                          self.reassembly_budget)
        session.remote_id = body.sender_id
        session.responder_hs = hs
        session.hello_key = hello_key
        session.pending_ip = ip
        session.pending = True
        session.hs_datagram = pack_response(body.sender_id, conn_id, hs.msg2)
        self.sessions[conn_id] = session
        self._pending_hello[hello_key] = conn_id
        self._pending_per_ip[ip] = self._pending_per_ip.get(ip, 0) + 1
        self._pending_count += 1
        self._pending_order[conn_id] = None
        stats.packets_sent += 1
        self._out.append((session.hs_datagram, addr))
        self._touch(session)

    def _on_cookie(self, session: Session, body: HsBody, addr: Address, now: float) -> None:
        # COOKIE is not authenticated (docs/protocol.md section 7 gives it no MAC), and an
        # attacker who sees our HELLO can flood forged ones. Accept them only from
        # the address the HELLO went to, for our own random conn_id, and keep each
        # as a counted candidate (InitiatorGuard): the genuine cookie comes back
        # once per HELLO we send with a wrong one, so it soon leads. At most once
        # per handshake RTO, without resetting the backoff, a COOKIE that changes
        # the best candidates sends HELLOs with them (a bounded exception to "no
        # reply larger than its cause": only to the session's own address).
        hs = session.initiator_hs
        guard = self._guards.get(session.conn_id)
        if (session.state is not SessionState.HELLO_SENT or hs is None or guard is None
                or addr != session.addr or body.cookie == _NO_COOKIE
                or hmac.compare_digest(body.cookie, session.cookie)):
            self.stats.packets_dropped_unknown += 1  # the cookie in use changes nothing
            return
        cfg = self.config
        guard.see_cookie(bytes(body.cookie), cfg.cookie_candidates, self._rng)
        best = guard.best(cfg.cookie_hellos)
        if now < session.cookie_taken_at + session.hs_rto or best == guard.sent_with:
            self.stats.packets_dropped_unknown += 1
            return
        session.cookie_taken_at = now
        self._send_hellos(session, hs.msg1, guard, best)
        self._touch(session)

    def _send_hellos(self, session: Session, msg1: bytes, guard: InitiatorGuard,
                     best: tuple[bytes, ...]) -> None:
        """One HELLO per cookie candidate in ``best``; the first is the one resent alone."""
        guard.sent_with = best
        session.cookie = best[0]
        hellos = [pack_hello(session.conn_id, c, msg1) for c in best]
        session.hs_datagram = hellos[0]
        for hello in hellos:
            self.stats.packets_sent += 1
            self._out.append((hello, session.addr))

    def _authorised(self, peer_key: bytes, pinned: bytes | None) -> bool:
        ok = True
        if pinned is not None and not hmac.compare_digest(peer_key, pinned):
            ok = False
        if self.allowed_peers is not None and not any(
                hmac.compare_digest(peer_key, k) for k in self.allowed_peers):
            ok = False
        return ok

    def _on_response(self, session: Session, body: HsBody, addr: Address, now: float) -> None:
        stats = self.stats
        hs = session.initiator_hs
        guard = self._guards.get(session.conn_id)
        if (session.state is not SessionState.HELLO_SENT or hs is None or guard is None
                or addr != session.addr):
            stats.packets_dropped_unknown += 1
            return
        # A forged or wrong-key RESPONSE must not cost the genuine one its place:
        # each is read on a fork of the Noise state (core/noise.py) and the
        # handshake goes on until HANDSHAKE_TIMEOUT. The reads that fail are
        # paid from a small budget per handshake, and a body already tried (the
        # responder resends the same one) costs nothing more.
        tried = bytes(body.noise) + body.sender_id.to_bytes(4, "big")
        if guard.already_tried(tried):
            stats.packets_dropped_crypto += 1
            return
        if not guard.attempts.ready(now):
            stats.packets_dropped_rate_limit += 1
            return
        result = hs.consume_response(body.noise)
        if result is None:
            guard.attempts.charge()
            guard.tried_and_failed(tried)
            stats.packets_dropped_crypto += 1
            return
        # 4. authenticated: check the responder's static key (section 7). A key we
        # refuse is counted and remembered (the handshake then fails with
        # "authentication" at its timeout), but the genuine RESPONSE may follow.
        if not self._authorised(result.remote_static, session.pinned_key):
            guard.attempts.charge()
            guard.tried_and_failed(tried)
            guard.refused = True
            stats.handshakes_rejected += 1
            return
        del self._guards[session.conn_id]
        session.initiator_hs = None
        session.finish_datagram = pack_finish(body.sender_id, session.conn_id, result.msg3)
        session.hs_datagram = b""  # the HELLO is never resent once RESPONSE arrived
        session.cookie = b""
        session.establish(body.sender_id, result.remote_static, result.send_key,
                          result.receive_key, now, self._aead,
                          self._packer)
        session.hs_rto = self.config.initial_rto
        session.hs_retransmit_at = now + session.hs_rto
        session.hs_deadline_at = now + self.config.handshake_timeout  # to be confirmed
        stats.handshakes_completed += 1
        stats.packets_sent += 1
        self._out.append((session.finish_datagram, addr))
        # Then an ACK: the initiator's first credit (docs/protocol.md section 5 step 4).
        session.send_ack(now)
        self._events.append(HandshakeCompleted(session.conn_id, result.remote_static, addr, True))
        self._touch(session)

    def _on_finish(self, session: Session, body: HsBody, data: bytes, addr: Address,
                   now: float) -> None:
        stats = self.stats
        if session.state is _ESTABLISHED and not session.initiator:
            # 6. a duplicate of the FINISH that established this session: answer with an ACK
            # Only while the initiator may still be resending it (its handshake
            # timeout), only from the session's address, at most once per RTO:
            # replayed copies cannot drain the bucket or pace our ACKs.
            if (session.finish_body and addr == session.addr
                    and now < session.finish_answer_until
                    and now >= session.finish_answered_at + session.rtt.rto
                    and hmac.compare_digest(data, session.finish_body)):
                session.finish_answered_at = now
                session.send_ack(now, eliciting=True)
                self._settle(session)
            else:
                stats.packets_dropped_unknown += 1
            return
        hs = session.responder_hs
        if (session.state is not SessionState.RESPONSE_SENT or hs is None
                or body.sender_id != session.remote_id):
            stats.packets_dropped_unknown += 1
            return
        # The ids are visible in the RESPONSE, so anyone may send FINISH-shaped
        # garbage here. No lockout (a forger would trigger it against the genuine
        # FINISH): a forgery fails one AES-GCM open of the encrypted static key
        # against the saved state, before any Noise state is built or any DH is
        # done, and leaves the handshake untouched (core/noise.py).
        if not hs.could_be_genuine(body.noise):
            stats.packets_dropped_crypto += 1
            return
        result = hs.consume_finish(body.noise)
        if result is None:
            stats.packets_dropped_crypto += 1
            return
        # 5. authenticated: check the initiator's static key (section 7)
        self._end_pending(session)
        if not self._authorised(result.remote_static, None):
            stats.handshakes_rejected += 1
            self._remove(session)
            return
        session.responder_hs = None
        session.hs_datagram = b""  # the RESPONSE is resent only while pending
        session.finish_body = bytes(data)
        session.finish_answered_at = now
        session.finish_answer_until = now + self.config.handshake_timeout
        session.addr = addr
        session.validated_addr = addr
        session.establish(session.remote_id, result.remote_static, result.send_key,
                          result.receive_key, now, self._aead,
                          self._packer)
        old_id = self._by_peer_key.get(result.remote_static)
        if old_id is not None:
            old = self.sessions.get(old_id)
            if old is not None:
                old.close(CloseReason.REPLACED, now)
                self._remove(old)
        self._by_peer_key[result.remote_static] = session.conn_id
        stats.handshakes_completed += 1
        self._events.append(HandshakeCompleted(session.conn_id, result.remote_static, addr,
                                               False))
        # Confirm at once so the initiator stops resending FINISH (an ACK is
        # smaller than the FINISH that caused it). It carries our first credit and
        # asks for an answer (A = 1): the answer carries the initiator's credit
        # even if the ACK it sent after FINISH was lost, and gives an RTT sample.
        session.send_ack(now, eliciting=True)
        self._settle(session)

    def _new_path(self, session: Session, addr: Address, size: int, now: float) -> None:
        """Step 7: an authenticated newest packet from another address."""
        if addr == session.validated_addr:
            # Back to the address already validated (a raced packet had moved us).
            session.addr = addr
            session.path_budget = None
            self._flush.add(session)
            return
        session.addr = addr
        session.path_budget = 3 * size
        session.ack_now = True
        session.ack_probe = True            # the probe: answered from there, it validates
        session.path_probe_pn = session.pn_next
        self._flush.add(session)

    def _settle(self, session: Session) -> None:
        """After acting on a session: forget it if it closed, else re-arm and flush."""
        if session.state is SessionState.CLOSED:
            self._remove(session)
        else:
            self._touch(session)

    def _end_pending(self, session: Session) -> None:
        # The HELLO stays in _pending_hello for the session's whole life (removed
        # in _remove): a late or replayed copy of it must not open a second
        # pending handshake (docs/protocol.md section 7 step 3).
        if not session.pending:
            return
        session.pending = False
        self._pending_order.pop(session.conn_id, None)
        ip = session.pending_ip
        left = self._pending_per_ip.get(ip, 0) - 1
        if left > 0:
            self._pending_per_ip[ip] = left
        else:
            self._pending_per_ip.pop(ip, None)
        self._pending_count -= 1

    def _source_key(self, addr: Address, source: bytes) -> object:
        """What MAX_HANDSHAKES_PER_IP counts: an IPv4 address, or an IPv6 prefix."""
        ip = source[:-2]
        if len(ip) != 16 or ip.startswith(_V4_MAPPED):
            return addr[0]
        return str(ipaddress.IPv6Network((ip, self.config.ipv6_prefix), strict=False))

    def _new_conn_id(self) -> int:
        count = self._id_count
        while True:
            conn_id = int.from_bytes(self._rng(4), "big")
            if count > 1:
                conn_id = conn_id - conn_id % count + self._id_index
                if conn_id > 0xFFFFFFFF:
                    continue  # past the top multiple of count: draw again
            if conn_id and conn_id not in self.sessions:
                return conn_id

    def _remove(self, session: Session) -> None:
        self._end_pending(session)
        self._guards.pop(session.conn_id, None)
        self._failed_opens.pop(session.conn_id, None)
        if session.hello_key is not None:
            self._pending_hello.pop(session.hello_key, None)
            session.hello_key = None
        if session.state is not SessionState.CLOSED:
            session.close(CloseReason.NORMAL, session.last_recv_at, send=False)
        self.sessions.pop(session.conn_id, None)
        if session.peer_key is not None and self._by_peer_key.get(session.peer_key) == \
                session.conn_id:
            del self._by_peer_key[session.peer_key]
        self._dirty.discard(session)
        self._flush.discard(session)

    # ---------------------------------------------------------------- API

    def connect(self, addr: Address, now: float, server_key: bytes | None = None,
                idle_timeout: float | None = None) -> int:
        """Start a handshake as initiator; HandshakeCompleted or HandshakeFailed follows.

        ``idle_timeout`` overrides the configured one for this session (a
        shorter silence to detect a dead peer, e.g. for reconnecting).

        Returns:
            The new session's conn_id.

        Raises:
            ConnectionLimitError: the endpoint is at MAX_CONNECTIONS.
        """
        if len(self.sessions) >= self.config.max_connections:
            raise ConnectionLimitError(
                f"this endpoint already holds {len(self.sessions)} sessions and handshakes "
                f"(max_connections); close some or raise EndpointConfig.max_connections")
        if server_key is not None and len(server_key) != KEY_LEN:
            raise ValueError("server_key is the 32 raw bytes of an X25519 public key")
        conn_id = self._new_conn_id()
        session = Session(conn_id, addr, True, now, self.config, self.stats, self._out,
                          self._events, self._rng, self.credit_budget,
                          self.reassembly_budget)
        session.pinned_key = server_key
        if idle_timeout is not None:
            if not idle_timeout > 0:
                raise ValueError("idle_timeout must be positive")
            session.idle_limit = idle_timeout
        hs = InitiatorHandshake(self._static, self._rng(KEY_LEN))
        session.initiator_hs = hs
        cfg = self.config
        self._guards[conn_id] = InitiatorGuard(cfg.handshake_attempt_rate,
                                               cfg.handshake_attempt_burst, now)
        session.hs_datagram = pack_hello(conn_id, session.cookie, hs.msg1)
        self.sessions[conn_id] = session
        self.stats.packets_sent += 1
        self._out.append((session.hs_datagram, addr))
        self._touch(session)
        return conn_id

    def _established(self, conn_id: int) -> Session:
        session = self.sessions.get(conn_id)
        if session is None or session.state is not _ESTABLISHED:
            raise PeerClosedError(
                f"session {conn_id:#010x} is not established (closed or never opened); "
                "connect again", int(CloseReason.NORMAL), False)
        return session

    def check_message(self, data: bytes, intent: int, priority: int, lane: int = 0) -> None:
        """Validate a message before it is queued (raises; changes nothing)."""
        if (type(data) is bytes and 0 < len(data) <= self._max_message
                and intent in {0, 1} and type(priority) is int
                and 0 <= priority <= MAX_PRIORITY and lane == 0):
            return  # the common case, checked in one expression
        if type(lane) is not int or not 0 <= lane <= MAX_LANE:
            raise InvalidMessageError(f"lane must be an integer 0..{MAX_LANE}, got {lane!r}")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidMessageError(f"a message is bytes, got {type(data).__name__}")
        size = memoryview(data).nbytes  # len() of a memoryview counts items, not bytes
        if intent not in (0, 1):
            raise InvalidMessageError("intent must be Intent.RELIABLE or Intent.REALTIME")
        if not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidMessageError(f"priority must be an integer 0..7, got {priority!r}")
        if size == 0:
            raise InvalidMessageError("a message must be at least 1 byte")
        if size > self._max_message:
            raise MessageTooLargeError(self._too_large_advice(size))

    def _too_large_advice(self, size: int) -> str:
        """What a user can do about a message above max_message_size."""
        text = (f"message of {size} bytes exceeds max_message_size ({self._max_message} "
                "bytes)")
        if size <= MAX_MESSAGE_LIMIT:
            queue = (f", max_send_queue_bytes={size} or more"
                     if size > self.config.max_send_queue_bytes else "")
            text += (f"; create both endpoints with EndpointConfig(max_message_size={size}, "
                     f"max_reorder_buffer={size + self.config.max_datagram} or more{queue}) "
                     "to allow it, or split it into smaller messages")
        else:
            text += (f"; the most any endpoint allows is {MAX_MESSAGE_LIMIT} bytes (64 MiB): "
                     "split it into smaller messages")
        return text

    def send(self, conn_id: int, data: bytes, intent: int, priority: int, now: float,
             lane: int = 0, bounded: bool = True) -> bool:
        """Queue a message for the next flush.

        ``lane`` (0..255) chooses the message's order of delivery: RELIABLE messages
        are delivered in the order sent within a lane, independently of other
        lanes (docs/protocol.md section 14). A message longer than a datagram
        carries is fragmented. ``bounded`` False skips the send queue's bounds (a
        reconnect carrying over what the previous session had queued or in flight).

        Returns:
            False if a REALTIME message was dropped because the queue is full
            (max_send_queue messages or max_send_queue_bytes bytes).

        Raises:
            PeerClosedError: the session is not established.
            SendQueueFullError: a RELIABLE message found the queue full.
            InvalidMessageError, MessageTooLargeError: bad arguments.
        """
        self.check_message(data, intent, priority, lane)
        session = self.sessions.get(conn_id)
        if session is None or session.state is not _ESTABLISHED:
            session = self._established(conn_id)  # raises with the explanation
        if type(data) is not bytes:
            data = memoryview(data).tobytes()
        if not session.enqueue(data, intent, priority, now, lane, bounded):
            if intent == _REALTIME:
                self.stats.messages_dropped_queue_full += 1
                return False
            raise SendQueueFullError(self._queue_full_advice(session, conn_id))
        self._flush.add(session)
        return True

    def _queue_full_advice(self, session: Session, conn_id: int) -> str:
        """What a user can do about a full send queue, in messages or in bytes."""
        cfg = self.config
        if session.queued >= cfg.max_send_queue:
            return (f"the send queue of session {conn_id:#010x} is full "
                    f"({cfg.max_send_queue} messages); wait for room (await send) "
                    "or raise EndpointConfig.max_send_queue")
        return (f"the send queue of session {conn_id:#010x} is full "
                f"({session.rel_bytes + session.rt_bytes} of "
                f"{cfg.max_send_queue_bytes} bytes queued, max_send_queue_bytes); wait "
                "for room (await send) or raise EndpointConfig.max_send_queue_bytes")

    def broadcast(self, data: bytes, intent: int, priority: int, now: float,
                  exclude: int | None = None, lane: int = 0) -> int:
        """Queue one message for every established session (but ``exclude``).

        Validates once, then enqueues directly: a hub's fan-out costs one
        append per peer. Sessions whose queue is full are skipped (REALTIME
        drops are counted; RELIABLE ones too, as queue-full drops).

        Returns:
            How many sessions the message was queued for.
        """
        self.check_message(data, intent, priority, lane)
        if type(data) is not bytes:
            data = memoryview(data).tobytes()
        count = 0
        flush = self._flush
        for conn_id, session in self.sessions.items():
            if session.state is not _ESTABLISHED or conn_id == exclude:
                continue
            if session.enqueue(data, intent, priority, now, lane):
                flush.add(session)
                count += 1
            else:
                self.stats.messages_dropped_queue_full += 1
        return count

    def reliable_capacity(self, conn_id: int) -> int:
        """RELIABLE messages that can be queued now without exceeding the window."""
        return self._established(conn_id).reliable_capacity

    def queue_room(self, conn_id: int) -> int:
        """Bytes of messages the session's send queue takes now (max_send_queue_bytes)."""
        session = self._established(conn_id)
        return self.config.max_send_queue_bytes - session.rel_bytes - session.rt_bytes

    def can_send_reliable(self, conn_id: int, size: int) -> bool:
        """Whether a RELIABLE message of ``size`` bytes may be queued now: the window
        has room (:meth:`reliable_capacity`) and the send queue has ``size`` bytes
        (``max_send_queue_bytes``). What ``await send`` waits for."""
        session = self._established(conn_id)
        return session.reliable_capacity > 0 and (
            session.rel_bytes + session.rt_bytes + size <= self.config.max_send_queue_bytes)

    def close(self, conn_id: int, now: float, reason: CloseReason = CloseReason.NORMAL) -> None:
        """Close a session (sends CLOSE if established); a no-op if it is gone."""
        session = self.sessions.get(conn_id)
        if session is None:
            return
        if session.state is _ESTABLISHED:
            session.flush(now)
        session.close(reason, now)
        self._remove(session)

    def close_all(self, now: float, reason: CloseReason = CloseReason.NORMAL) -> None:
        for conn_id in list(self.sessions):
            self.close(conn_id, now, reason)

    def responder_conn_id(self, peer_key: bytes) -> int | None:
        """The conn_id of the session this endpoint answered for ``peer_key``, if any."""
        return self._by_peer_key.get(peer_key)

    def peer_key(self, conn_id: int) -> bytes | None:
        session = self.sessions.get(conn_id)
        return session.peer_key if session is not None else None

    def address(self, conn_id: int) -> Address | None:
        session = self.sessions.get(conn_id)
        return session.addr if session is not None else None

    # ---------------------------------------------------------------- timers

    def _touch(self, session: Session) -> None:
        self._dirty.add(session)
        if session.has_output:
            self._flush.add(session)

    def _rearm(self) -> None:
        # Deadlines only move earlier here. One that moved later (the idle
        # deadline moves on every authenticated packet) keeps its old heap
        # entry: when that fires, the session finds nothing due and re-arms.
        # This keeps the heap and the adapter's timer still under load.
        for session in self._dirty:
            t = session.next_timer()
            if t is not None and (session.timer_at is None or t < session.timer_at):
                session.timer_at = t
                self._timer_tick += 1
                heapq.heappush(self._timers, (t, self._timer_tick, session.conn_id))
        self._dirty.clear()

    def get_timer(self) -> float | None:
        """The earliest deadline over the whole endpoint, or None."""
        self._rearm()
        timers = self._timers
        sessions = self.sessions
        while timers:
            t, _, conn_id = timers[0]
            session = sessions.get(conn_id)
            if session is not None and session.timer_at == t:
                return t
            heapq.heappop(timers)  # stale entry
        return None

    def handle_timer(self, now: float) -> None:
        """Run every deadline at or before ``now``."""
        self._rearm()
        timers = self._timers
        while timers and timers[0][0] <= now:
            t, _, conn_id = heapq.heappop(timers)
            session = self.sessions.get(conn_id)
            if session is None or session.timer_at != t:
                continue
            session.timer_at = None
            self._on_session_timer(session, now)
        # No re-arm here: what the timers made due (an ACK above all) is sent by
        # the datagrams_to_send that follows, and a deadline taken before that
        # would still name it and fire again for nothing; get_timer re-arms.

    def _on_session_timer(self, session: Session, now: float) -> None:
        state = session.state
        if state is SessionState.RESPONSE_SENT:
            if now >= session.hs_deadline_at:
                self._remove(session)  # the application never knew of it
                return
        elif state is SessionState.HELLO_SENT:
            guard = self._guards.get(session.conn_id)
            if now >= session.hs_deadline_at:
                self.stats.handshakes_failed += 1
                refused = guard is not None and guard.refused
                self._remove(session)
                self._events.append(HandshakeFailed(session.conn_id, session.addr,
                                                    "authentication" if refused else "timeout"))
                return
            if session.hs_retransmit_at is not None and now >= session.hs_retransmit_at:
                hs = session.initiator_hs
                best = guard.best(self.config.cookie_hellos) if guard is not None else ()
                if hs is not None and guard is not None and best:
                    self._send_hellos(session, hs.msg1, guard, best)
                else:
                    self.stats.packets_sent += 1
                    self._out.append((session.hs_datagram, session.addr))
                session.hs_rto = min(session.hs_rto * 2, self.config.handshake_max_rto)
                session.hs_retransmit_at = now + session.hs_rto
        elif state is _ESTABLISHED:
            session.on_timer(now)
            if session.state is SessionState.CLOSED:
                self._remove(session)
                return
        self._touch(session)

    # ---------------------------------------------------------------- output

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Flush every session with queued output; return what to send, in order."""
        if self._flush:
            dirty = self._dirty
            for session in list(self._flush):
                # A flush that can only send a non-eliciting ACK moves no deadline
                # earlier (the ACK timer stops, keepalive moves later): no re-arm.
                rearm = (session.queued or session.retransmit or session.ack_probe
                         or session.timer_at is None)
                session.flush(now)
                if session.state is SessionState.CLOSED:
                    self._remove(session)
                elif rearm:
                    dirty.add(session)
            self._flush.clear()
        out = self._out
        if not out:
            return []
        batch = out[:]
        out.clear()  # sessions hold this same list; it is never replaced
        return batch

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        if not self._events:
            return None
        event = self._events.popleft()
        if self._release_on_take and type(event) is MessageReceived and \
                event.intent is Intent.RELIABLE:
            self.release(event.conn_id, len(event.data))
        return event

    def events(self) -> list[Event]:
        """Every pending event, oldest first (see :meth:`take_events`)."""
        return self.take_events()

    def take_events(self) -> list[Event]:
        """Every pending event, oldest first, in one list (an adapter's bulk hand-over)."""
        evs = list(self._events)
        self._events.clear()
        if self._release_on_take:
            # One release per session for the whole hand-over: the credit and the
            # ACK decision come out the same as message by message, at a fraction
            # of the cost.
            read: dict[int, int] = {}
            for event in evs:
                if type(event) is MessageReceived and event.intent is Intent.RELIABLE:
                    read[event.conn_id] = read.get(event.conn_id, 0) + len(event.data)
            for conn_id, nbytes in read.items():
                self.release(conn_id, nbytes)
        return evs

    @property
    def pending_events(self) -> int:
        """How many events wait for :meth:`take_events`."""
        return len(self._events)

    def release(self, conn_id: int, nbytes: int) -> None:
        """The application read ``nbytes`` of RELIABLE messages from ``conn_id``.

        Their room returns to the session's credit; an ACK tells the peer once
        the edge can move by a quarter of MAX_RELIABLE_IN_FLIGHT. Unknown or
        closed sessions are ignored.
        """
        session = self.sessions.get(conn_id)
        if session is not None and session.state is _ESTABLISHED and session.release(nbytes):
            self._flush.add(session)
