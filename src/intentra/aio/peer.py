"""Peer, Message and PeerEvent: what the application holds of one remote endpoint.

A :class:`Peer` is the application's handle on a session (or, with
``reconnect=True``, on a line of sessions with one remote key): sending, status,
close. Its inbox of delivered messages is filled and served by the
:class:`~intentra.aio.transport.Transport` that owns it; :class:`Message` is one
delivered message and :class:`PeerEvent` one thing that happened to a peer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from intentra.aio.args import CloseReasonLike, IntentLike, as_close_reason, as_intent
from intentra.constants import CloseReason, Intent
from intentra.errors import InvalidArgumentError, PeerClosedError, SendQueueFullError
from intentra.keys import PublicKey
from intentra.status import PeerStatus

if TYPE_CHECKING:
    from intentra.aio.transport import Transport
    from intentra.events import Address

_now = time.monotonic  # the core's clock (see intentra.aio.transport)


class Message(NamedTuple):
    """A message delivered to the application (a NamedTuple: one per message, kept cheap).

    ``priority`` is the priority of the packet that carried it: the highest
    priority among the messages packed together (for a large message, the packet
    that completed it). ``lane`` is the lane it was sent on (0..255): RELIABLE
    messages arrive in the order sent within their lane.
    """

    peer: Peer
    data: bytes
    intent: Intent
    priority: int
    lane: int = 0


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """Something the application may want to know about a peer (``Transport.peer_event``).

    ``kind`` is one of:
      - ``"connected"``: a new session accepted from an initiator (``connect()``
        returns the initiator's own Peer and posts nothing);
      - ``"disconnected"``: a reconnecting peer lost its session (``reason``);
        it is reconnecting, with ``pending`` RELIABLE messages to resend;
      - ``"reconnected"``: it has a new session; ``pending`` were resent;
      - ``"rejected"``: a reconnect attempt was answered with a static key that is
        not the Peer's (its pinned key, or the key of its first session): the
        answer is refused and the Peer keeps trying;
      - ``"closed"``: the peer is gone for good (``reason``).
    """

    kind: str
    peer: Peer
    reason: CloseReason | None = None
    pending: int = 0


#: Reasons after which a reconnecting peer does not try again.
_NO_RECONNECT: Final = frozenset({CloseReason.REPLACED, CloseReason.PROTOCOL_VIOLATION})
RECONNECT_FIRST_DELAY: Final = 0.5
RECONNECT_MAX_DELAY: Final = 30.0
PEER_EVENT_QUEUE: Final = 4096


class Peer:
    """One peer, as the application sees it: a session, or a line of them (reconnect=True)."""

    def __init__(self, transport: Transport, conn_id: int, public_key: PublicKey,
                 initiator: bool) -> None:
        self._transport = transport
        self.conn_id = conn_id
        self.public_key = public_key
        self.initiator = initiator
        self.close_reason: CloseReason | None = None
        self.closed_by_peer = False
        self._closing = False
        self._room: asyncio.Event | None = None  # made when a send first waits
        self._need = 0  # bytes of the RELIABLE message a send waits to queue
        self.reconnect = False
        self.reconnects = 0
        self._targets: list[Address] = []  # responders to reconnect to, in turn
        self._target_index = 0
        self._server_key: bytes | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._backlog: list[tuple[bytes, int, int]] = []  # RELIABLE sent while reconnecting
        self._backlog_bytes = 0
        self._last_address: Address = transport._endpoint.address(conn_id) or ("", 0)
        self._inbox: deque[Message] = deque()       # delivered, not yet received
        self._inbox_realtime = 0                    # how many of them are REALTIME
        self._rate_mark: tuple[int, float] = (0, 0.0)  # (bytes sent, time) at the last status()

    def _wake(self) -> None:
        if self._room is not None:
            self._room.set()

    @property
    def address(self) -> Address:
        """The peer's current address (it changes when the peer roams)."""
        addr = self._transport._endpoint.address(self.conn_id)
        if addr is not None:
            self._last_address = addr
        return self._last_address

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def connected(self) -> bool:
        """True while it has an established session (False while reconnecting)."""
        return self.close_reason is None and self._reconnecting is None

    def _check_open(self) -> None:
        if self.close_reason is None and (self._closing or self._transport._closing):
            raise PeerClosedError(
                f"session with {self.public_key.to_base64()} is closing (this side, NORMAL); "
                "messages not yet queued are refused", int(CloseReason.NORMAL), False)
        if self.close_reason is not None:
            who = "the peer" if self.closed_by_peer else "this side"
            raise PeerClosedError(
                f"session with {self.public_key.to_base64()} was closed by {who} "
                f"({self.close_reason.name}); connect again to send",
                int(self.close_reason), self.closed_by_peer)
        self._transport._check_open()

    async def send(self, data: bytes, intent: IntentLike = Intent.RELIABLE,
                   priority: int = 0, *, lane: int = 0) -> None:
        """Queue a message; for RELIABLE, wait while the window is full.

        ``intent`` is an :class:`Intent` or its name (``"reliable"``, ``"realtime"``).
        ``priority`` (0..7) decides what leaves first; ``lane`` (0..255) what waits for
        what: RELIABLE messages are delivered in the order sent within a lane, and
        lanes are independent (a loss or a large message on one never delays
        another). A message may be up to ``EndpointConfig.max_message_size`` (1 MiB by
        default); longer than a datagram, it travels in fragments, and a large
        RELIABLE one waits here for window room as a run of messages would. A
        RELIABLE message also waits while the send queue holds too many bytes to take
        it (``EndpointConfig.max_send_queue_bytes``).

        Raises:
            PeerClosedError: the session ended (also while waiting).
            MessageTooLargeError, InvalidMessageError: bad arguments.
        """
        intent = as_intent(intent)
        self._transport._endpoint.check_message(data, int(intent), priority, lane)
        if intent == Intent.RELIABLE:
            size = len(data) if type(data) is bytes else memoryview(data).nbytes
            while True:
                self._check_open()
                if self._reconnecting is None and \
                        self._transport._endpoint.can_send_reliable(self.conn_id, size):
                    break
                self._need = size
                room = self._room
                if room is None:
                    room = self._room = asyncio.Event()
                room.clear()
                self._transport._waiting.add(self)
                await room.wait()
        self.send_nowait(data, intent, priority, lane=lane)

    async def send_many(self, messages: Iterable[bytes], intent: IntentLike = Intent.RELIABLE,
                        priority: int = 0, *, lane: int = 0) -> None:
        """Queue many messages in order, waiting for window room as :meth:`send` does.

        The same as ``for m in messages: await peer.send(m, intent, priority)``,
        for a fraction of the cost per message: one wait per window of room
        rather than one coroutine per message. Every message is checked first;
        a bad one raises before any is queued. REALTIME messages never wait
        (a full queue, in messages or bytes, drops them, as :meth:`send_nowait` does).

        Raises:
            PeerClosedError: the session ended (also while waiting); messages
                queued before it are in :meth:`Transport.unacked_reliable`.
            MessageTooLargeError, InvalidMessageError: a bad message.
        """
        intent = as_intent(intent)
        batch = messages if isinstance(messages, list | tuple) else list(messages)
        endpoint = self._transport._endpoint
        for data in batch:
            endpoint.check_message(data, int(intent), priority, lane)
        if intent != Intent.RELIABLE:
            for data in batch:
                self.send_nowait(data, intent, priority, lane=lane)
            return
        done = 0
        while done < len(batch):
            # waits for room, then queues one
            await self.send(batch[done], intent, priority, lane=lane)
            done += 1
            if self._reconnecting is not None or self.close_reason is not None:
                continue
            room = min(endpoint.reliable_capacity(self.conn_id), len(batch) - done)
            if room <= 0:
                continue
            left = endpoint.queue_room(self.conn_id)  # and the send queue's bytes
            for data in batch[done:done + room]:
                left -= len(data) if type(data) is bytes else memoryview(data).nbytes
                if left < 0:
                    break
                self.send_nowait(data, intent, priority, lane=lane)
                done += 1

    def send_nowait(self, data: bytes, intent: IntentLike = Intent.REALTIME,
                    priority: int = 0, *, lane: int = 0) -> bool:
        """Queue a message without waiting; it leaves in this loop turn's flush.

        ``lane`` as for :meth:`send`. A large RELIABLE message is queued whole at
        once (prefer ``await send``, which waits for window room). The send queue
        takes up to ``EndpointConfig.max_send_queue`` messages and
        ``max_send_queue_bytes`` bytes (4 MiB); beyond either, RELIABLE raises and
        REALTIME is dropped.

        Returns:
            False if a REALTIME message was dropped because the send queue is
            full (counted in ``intentra_messages_dropped_queue_full_total``).

        Raises:
            SendQueueFullError: a RELIABLE message found the queue full, in
                messages or in bytes (``await send`` waits for room instead).
            PeerClosedError: the session ended.
        """
        if type(intent) is not Intent:
            intent = as_intent(intent)
        transport = self._transport
        if (self.close_reason is not None or self._closing or self._reconnecting is not None
                or transport._closing or transport._closed):
            self._check_open()  # raises with the explanation, unless reconnecting
        if self._reconnecting is not None:
            # Between sessions: RELIABLE waits for the next one, REALTIME is late anyway.
            transport._endpoint.check_message(data, int(intent), priority, lane)
            if intent != Intent.RELIABLE:
                return False
            config = transport._endpoint.config
            data = bytes(data)
            if len(self._backlog) >= config.max_send_queue or \
                    self._backlog_bytes + len(data) > config.max_send_queue_bytes:
                raise SendQueueFullError(
                    f"the peer is reconnecting and its backlog is full ({len(self._backlog)} "
                    f"messages, {self._backlog_bytes} bytes; max_send_queue "
                    f"{config.max_send_queue}, max_send_queue_bytes "
                    f"{config.max_send_queue_bytes}); wait for room (await send waits for "
                    "the reconnect) or raise those EndpointConfig fields")
            self._backlog.append((data, priority, lane))
            self._backlog_bytes += len(data)
            return True
        ok = transport._endpoint.send(self.conn_id, data, intent, priority,
                                      _now(), lane)
        transport._schedule_flush()
        return ok

    def status(self) -> PeerStatus:
        """A snapshot of the session's path and queues (see :class:`PeerStatus`).

        Read it to adapt: a falling ``send_rate`` or growing ``rtt`` says the path
        is full, so lower the update rate rather than have REALTIME dropped.

        Raises:
            PeerClosedError: the session has ended (or is between sessions).
        """
        transport = self._transport
        session = transport._endpoint.sessions.get(self.conn_id)
        if session is None or self._reconnecting is not None or self.close_reason is not None:
            self._check_open()
            raise PeerClosedError("the peer is reconnecting; no session to report on",
                                  int(CloseReason.NORMAL), False)
        now = _now()
        since_bytes, since = self._rate_mark
        if since_bytes > session.sent_bytes or since < session.created_at:
            since_bytes, since = 0, session.created_at  # a new session (reconnected)
        rate = (session.sent_bytes - since_bytes) / (now - since) if now > since else 0.0
        self._rate_mark = (session.sent_bytes, now)
        return PeerStatus.of(session, len(self._inbox), rate)

    async def close(self, reason: CloseReasonLike = CloseReason.NORMAL,
                    flush_timeout: float = 1.0) -> int:
        """Send CLOSE with ``reason`` and forget the session (idempotent).

        ``reason`` is a :class:`CloseReason` or its name (``"normal"``). First
        waits up to ``flush_timeout`` seconds for this peer's queued and
        in-flight RELIABLE messages to be acknowledged (0: do not wait).

        Returns:
            How many RELIABLE messages were still unacknowledged.

        Raises:
            InvalidArgumentError: a bad reason or timeout (nothing is changed).
        """
        reason = as_close_reason(reason)
        if not isinstance(flush_timeout, int | float) or isinstance(flush_timeout, bool):
            raise InvalidArgumentError(f"flush_timeout is a number of seconds (0: do not "
                                       f"wait), got {flush_timeout!r}")
        transport = self._transport
        if self.close_reason is not None or transport._closed or self._closing:
            return 0
        self._closing = True
        if self._reconnecting is not None:  # between sessions: nothing to flush or CLOSE
            self._reconnecting.cancel()
            self._reconnecting = None
            transport._finish_peer(self, reason, False)
            return len(self._backlog)
        transport._wake_senders()  # a sender waiting for room now fails: its message never left
        left = await transport._drain(self, flush_timeout) if flush_timeout > 0 else \
            transport.unacked_reliable(self)
        if self.close_reason is None and not transport._closed:
            transport._close_peer(self, reason)
        return left

    def __repr__(self) -> str:
        return (f"Peer({self.public_key.to_base64()[:12]}…, {self.address!r}, "
                f"{'closed' if self.closed else 'open'})")
