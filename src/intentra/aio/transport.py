"""Transport: the asyncio adapter around :class:`intentra.core.endpoint.Endpoint`.

Owns: the UDP socket, the event-loop timer, the application-facing queues and
futures. It reads the socket itself (``loop.add_reader``, then drains it until
it would block) and hands the core a batch per wake-up: asyncio's
``DatagramProtocol`` delivers one datagram per loop turn, which caps a
receiver near 30,000 datagrams/s. The syscalls themselves are in
:mod:`intentra.aio.datapath` (Linux UDP GSO/GRO batching, or one per datagram).

After every input the adapter drains, in this order: datagrams to send, then
events, then re-arms its one timer (STYLE: the sans-I/O contract). The
application's handles live in :mod:`intentra.aio.peer` (Peer, Message,
PeerEvent); argument checking in :mod:`intentra.aio.args`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import operator
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Generator, Iterable, Sequence
from typing import Any, Final, Self

import intentra.native
from intentra.aio.args import (
    IntentLike,
    address_family,
    as_intent,
    check_batch_size,
    parse_address,
)
from intentra.aio.datapath import Datapath, requested_mode
from intentra.aio.peer import (
    _NO_RECONNECT,
    PEER_EVENT_QUEUE,
    RECONNECT_FIRST_DELAY,
    RECONNECT_MAX_DELAY,
    Message,
    Peer,
    PeerEvent,
)
from intentra.config import EndpointConfig
from intentra.constants import CloseReason, Intent
from intentra.core.endpoint import Endpoint
from intentra.errors import (
    AuthenticationError,
    ConfigError,
    HandshakeTimeoutError,
    IntentraError,
    InvalidArgumentError,
    PeerClosedError,
    ReceiveTimeoutError,
    TransportClosedError,
)
from intentra.events import (
    Address,
    HandshakeCompleted,
    HandshakeConfirmed,
    HandshakeFailed,
    MessageReceived,
    SessionClosed,
)
from intentra.keys import PrivateKey, PublicKey
from intentra.metrics import make_registry, render, serve_http
from intentra.status import PeerStatus

#: Datagrams read per wake-up before the loop gets a turn (fairness with timers and senders).
RECEIVE_BATCH: Final = 512
#: Messages :meth:`Transport.receive_many` returns at most unless told otherwise.
RECEIVE_MANY: Final = 1024
_SOCKET_BUFFER: Final = 4 * 1024 * 1024


_tuple_new = tuple.__new__
_data_of = operator.itemgetter(1)  # Message.data, at C speed in a batch
_now = time.monotonic
"""The core's clock. Not ``loop.time()``: uvloop's is libuv's millisecond clock, cached
for a whole loop iteration, and RTT samples, pacing and the probe timeout need
microseconds (the same CLOCK_MONOTONIC, read when asked)."""
_ACK_CHUNK = 8
"""Datagrams of a received batch processed between two sends of what is due."""
_FAIR_CHUNK: Final = 64
"""Datagrams processed per turn of the event loop before the rest of a batch waits."""
_FAIR_MESSAGES: Final = 1024
"""Messages delivered per turn of the event loop after which the rest of a batch waits."""


class Binding:
    """What :meth:`Transport.bind` returns: await it for the Transport, or use it
    in ``async with`` to have the Transport closed on exit (as ``websockets.connect``)."""

    __slots__ = ("_coro", "_transport")

    def __init__(self, coro: Coroutine[Any, Any, Transport]) -> None:
        self._coro = coro
        self._transport: Transport | None = None

    def __await__(self) -> Generator[Any, None, Transport]:
        return self._coro.__await__()

    async def __aenter__(self) -> Transport:
        self._transport = await self._coro
        return self._transport

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            await self._transport.close()


class Transport:
    """One UDP socket, one static key, many peers. Create with :meth:`bind`."""

    def __init__(self, sock: socket.socket, key: PrivateKey, endpoint: Endpoint,
                 receive_queue_size: int, datapath: Datapath | None = None,
                 sink: bool = False) -> None:
        self._sock = sock
        self._sink = sink
        self.sink_messages = 0
        self._datapath = datapath if datapath is not None else Datapath(sock, "plain")
        self._key = key
        self._endpoint = endpoint
        self._loop = asyncio.get_running_loop()
        self._peers: dict[int, Peer] = {}
        self._connecting: dict[int, asyncio.Future[Peer]] = {}
        # Delivered messages wait in their Peer's inbox; ``_ready`` lists the
        # peers with something waiting, and receive() serves them in turn.
        self._ready: deque[Peer] = deque()
        self._queue_limit = receive_queue_size
        self._receivers: deque[asyncio.Future[None]] = deque()
        self._waiting: set[Peer] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_scheduled = False
        self._released: dict[int, int] = {}  # conn_id -> RELIABLE bytes read, not yet released
        self._rx_pending = False  # a received batch is being worked through in chunks
        self._closed = False
        self._closing = False
        self._metrics_server: Any = None
        self.send_errors = 0
        self._peer_events: deque[PeerEvent] = deque(maxlen=PEER_EVENT_QUEUE)
        self._event_waiters: deque[asyncio.Future[None]] = deque()
        self._resuming: dict[int, Peer] = {}  # conn_id of a reconnect attempt -> its Peer
        self._between: set[Peer] = set()      # reconnecting peers (not in _peers meanwhile)
        self.registry = make_registry(endpoint, self._extra_metrics, self._info_metrics)
        self._loop.add_reader(sock.fileno(), self._on_readable)

    # ---------------------------------------------------------------- creation

    @classmethod
    def bind(cls, address: str | tuple[str, int], key: PrivateKey,
             allowed_peers: Iterable[PublicKey] | None = None, *,
             config: EndpointConfig | None = None,
             metrics_address: str | tuple[str, int] | None = None,
             cookie_master: bytes | None = None, reuse_port: bool = False,
             receive_queue_size: int = 1024, datapath: str | None = None,
             sink: bool = False, sock: socket.socket | None = None,
             conn_id_class: tuple[int, int] = (0, 1)) -> Binding:
        """Bind a UDP socket and start serving.

        Use either ``t = await Transport.bind(...)`` (close it yourself) or
        ``async with Transport.bind(...) as t:`` (closed on exit); ``async with
        await Transport.bind(...)`` works too. The arguments are those of
        :meth:`_bind` below.
        """
        return Binding(cls._bind(
            address, key, allowed_peers, config=config, metrics_address=metrics_address,
            cookie_master=cookie_master, reuse_port=reuse_port,
            receive_queue_size=receive_queue_size, datapath=datapath, sink=sink, sock=sock,
            conn_id_class=conn_id_class))

    @classmethod
    async def _bind(cls, address: str | tuple[str, int], key: PrivateKey,
                    allowed_peers: Iterable[PublicKey] | None = None, *,
                    config: EndpointConfig | None = None,
                    metrics_address: str | tuple[str, int] | None = None,
                    cookie_master: bytes | None = None, reuse_port: bool = False,
                    receive_queue_size: int = 1024, datapath: str | None = None,
                    sink: bool = False, sock: socket.socket | None = None,
                    conn_id_class: tuple[int, int] = (0, 1)) -> Transport:
        """Bind a UDP socket and start serving (what :meth:`bind` awaits).

        Args:
            address: ``"host:port"`` (``"[::1]:0"`` for IPv6; port 0 picks one).
            key: this endpoint's private key.
            allowed_peers: public keys allowed to establish sessions (both roles);
                None allows any key.
            config: protocol tunables (docs/protocol.md section 2 defaults).
            metrics_address: serve Prometheus ``/metrics`` over HTTP there.
            cookie_master: 32 bytes shared by endpoints on one port (workers).
            reuse_port: set SO_REUSEPORT (several processes on one port).
            receive_queue_size: REALTIME messages held per peer for
                :meth:`receive`; beyond it the oldest are dropped and counted
                (``intentra_messages_dropped_receive_queue_total``). RELIABLE
                messages are never dropped: what the application has not read
                counts against the credit the peer is given (the
                ``max_reorder_buffer`` bytes of :class:`EndpointConfig`), so a
                slow reader makes the sender wait instead.
            datapath: ``"auto"`` (Linux UDP GSO/GRO batching where the socket
                supports it), ``"plain"`` (one syscall per datagram) or
                ``"gso"`` (batching, or OSError); None reads the environment
                variable ``INTENTRA_DATAPATH`` (same values), else ``"auto"``.
                See :mod:`intentra.aio.datapath` and :attr:`datapath`.
            sink: count received messages (``sink_messages``, the metric
                ``intentra_sink_messages_total``) instead of delivering them: a
                load-test server for the receive path. :meth:`receive` never returns.
            sock: serve on this already bound UDP socket instead of binding
                ``address`` (``intentra serve --workers`` hands each worker one).
            conn_id_class: ``(index, count)`` for worker ``index`` of ``count``
                on one port (see :mod:`intentra.workers`).

        Raises:
            OSError: the address cannot be bound (in use, not local, ...;
                ``filename`` names which: ``"UDP host:port"`` or ``"metrics HTTP
                host:port"``), or ``datapath="gso"`` and the socket refuses GSO or GRO.
            ValueError: the address or the datapath is malformed.
        """
        if not isinstance(key, PrivateKey):
            raise TypeError("key must be an intentra.PrivateKey (PrivateKey.generate() or .load())")
        mode = requested_mode(datapath)
        if sock is None:
            host, port = parse_address(address)
            sock = socket.socket(address_family(host), socket.SOCK_DGRAM)
        else:
            host, port = "", -1  # given, already bound
        try:
            sock.setblocking(False)
            if port >= 0:
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
                try:
                    sock.bind((host, port))
                except OSError as exc:  # say which address: there may be two (metrics)
                    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    raise OSError(exc.errno, exc.strerror, f"UDP {shown}") from exc
            endpoint = Endpoint(
                key.to_bytes(), os.urandom, config,
                allowed_peers=None if allowed_peers is None else
                [k.to_bytes() for k in allowed_peers],
                cookie_master=cookie_master, wall_offset=time.time() - _now(),
                conn_id_class=conn_id_class, release_on_take=False)
            path = Datapath(sock, mode, native=endpoint.native)
        except BaseException:
            sock.close()
            raise
        if not isinstance(receive_queue_size, int) or receive_queue_size < 1:
            sock.close()
            raise ConfigError(f"receive_queue_size is a number of messages per peer, at least "
                              f"1, got {receive_queue_size!r}")
        transport = cls(sock, key, endpoint, receive_queue_size, path, sink)
        if metrics_address is not None:
            mhost, mport = parse_address(metrics_address)
            try:
                transport._metrics_server = serve_http(transport.registry, mhost, mport)
            except OSError as exc:
                await transport.close()
                shown = f"[{mhost}]:{mport}" if ":" in mhost else f"{mhost}:{mport}"
                raise OSError(exc.errno, exc.strerror, f"metrics HTTP {shown}") from exc
            except BaseException:
                await transport.close()
                raise
        return transport

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -------------------------------------------------------------- properties

    @property
    def local_address(self) -> tuple[str, int]:
        name = self._sock.getsockname()
        return name[0], name[1]

    @property
    def datapath(self) -> str:
        """The socket path in use: ``"gso+gro"``, ``"gso"``, ``"gro"`` or ``"plain"``.

        GSO turns off by itself if the kernel refuses a batched send (the
        datagrams are then sent one by one); see :mod:`intentra.aio.datapath`.
        """
        return self._datapath.name

    @property
    def native(self) -> bool:
        """Whether the per-datagram path runs in C (``intentra._native``); see :attr:`engine`."""
        return self._endpoint.native

    @property
    def engine(self) -> str:
        """The datapath in use beside the socket path of :attr:`datapath`: for example
        ``"native (C, OpenSSL 3.0.19 27 Jan 2026)"`` or ``"python (INTENTRA_NATIVE=0)"``.

        ``INTENTRA_NATIVE=0`` in the environment (read at :meth:`bind`) forces the
        pure-Python path; both behave the same (docs/native.md).
        """
        return intentra.native.describe(self._endpoint.native)

    @property
    def public_key(self) -> PublicKey:
        return self._key.public_key

    @property
    def peers(self) -> list[Peer]:
        """Established peers, in the order their sessions began."""
        return list(self._peers.values())

    @property
    def endpoint(self) -> Endpoint:
        """The sans-I/O core (for counters and advanced use)."""
        return self._endpoint

    @property
    def closed(self) -> bool:
        return self._closed

    def metrics_text(self) -> str:
        """Every metric of docs/protocol.md section 11 in Prometheus text format."""
        return render(self.registry)

    def _extra_metrics(self) -> dict[str, tuple[str, int]]:
        return {
            "intentra_socket_send_errors": ("Datagrams the socket refused to send",
                                            self.send_errors),
            "intentra_sink_messages": ("Messages counted and discarded (serve --sink)",
                                       self.sink_messages),
            "intentra_socket_send_calls": ("Socket send syscalls (one per datagram, or per "
                                           "GSO batch)", self._datapath.send_calls),
            "intentra_socket_receive_calls": ("Socket receive syscalls, the empty last one of "
                                              "each drain included",
                                              self._datapath.receive_calls),
        }

    def _info_metrics(self) -> dict[str, tuple[str, dict[str, str]]]:
        return {"intentra_datapath": ("The socket path in use (plain, gso, gro, gso+gro)",
                                      {"path": self._datapath.name}),
                "intentra_engine": ("The per-datagram path in use: native (C) or python",
                                    {"engine": "native" if self.native else "python"})}

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise TransportClosedError("the transport is closed; bind a new one")

    # --------------------------------------------------------------- the API

    async def connect(self, address: str | tuple[str, int] | Sequence[str | tuple[str, int]],
                      server_key: PublicKey | None = None, reconnect: bool = False) -> Peer:
        """Handshake with the endpoint at ``address``; returns once established.

        Args:
            address: ``(host, port)`` or ``"host:port"``, or a list of them:
                responders that serve the same peers (hubs joined by
                :mod:`intentra.bus`, behind one key). They are tried in order
                until one answers; with ``reconnect=True`` the Peer moves on to
                the next one when its responder goes away.
            server_key: pin the responder's public key (recommended; with
                several addresses every responder must have this key).

        Raises:
            HandshakeTimeoutError: no handshake within the handshake timeout
                (with several addresses: with none of them; the last error).
            AuthenticationError: the responder's key is not the pinned one or
                not on the allow-list.
            InvalidArgumentError: an empty list of addresses.

        With ``reconnect=True`` the Peer outlives its session: when the
        responder falls silent (``EndpointConfig.peer_timeout`` after a packet it
        leaves unanswered, keepalives included) or closes the session (except REPLACED or
        PROTOCOL_VIOLATION), it reconnects with exponential backoff (0.5 s
        doubling to 30 s) until it succeeds or is closed, reporting
        ``disconnected`` and ``reconnected`` :class:`PeerEvent` s. With several
        addresses, each attempt goes to the next address in the list (wrapping
        around), starting with the one after the responder that went away; the
        backoff doubles once per round of the whole list. RELIABLE messages not
        acknowledged by the old session are resent on the new one in order,
        before newer ones: exactly once within a session, at least once across
        a reconnect (a restarted or other responder may have delivered a
        message whose ACK was lost). Without ``server_key``, a reconnecting Peer
        pins the key of its first session: every later session must be with
        that key. An answer with another key (a responder whose key changed, or
        someone else on its address) fails that attempt with a ``rejected``
        :class:`PeerEvent`; the Peer keeps trying, so it resumes when the right
        key answers again. Only ``close()`` ends it.

        A refused key does not end a handshake at once (a forger could send
        one): :class:`AuthenticationError` comes at the handshake timeout.
        """
        self._check_open()
        if isinstance(address, str | tuple):
            addresses: list[str | tuple[str, int]] = [address]
        else:
            addresses = list(address)
            if not addresses:
                raise InvalidArgumentError("connect() needs an address, or a non-empty list "
                                           "of them")
        targets = [await self._resolve(a) for a in addresses]
        key = None if server_key is None else server_key.to_bytes()
        failure: IntentraError | None = None
        for index, target in enumerate(targets):
            try:
                peer = await self._handshake(target, key, reconnect, None)
            except (HandshakeTimeoutError, PeerClosedError) as exc:
                failure = exc  # the next address may answer
                continue
            if reconnect:
                peer.reconnect = True
                peer._targets = targets
                peer._target_index = index
                # Unpinned, the first session's key is pinned for every reconnect: the
                # Peer is that key, not whoever answers on its address later.
                peer._server_key = key if key is not None else peer.public_key.to_bytes()
            return peer
        assert failure is not None
        raise failure

    async def _resolve(self, address: str | tuple[str, int]) -> Address:
        """``address`` as the tuple recvfrom reports for replies from it."""
        host, port = parse_address(address)
        lookup = host
        if self._sock.family == socket.AF_INET6:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(host).version == 4:
                    lookup = "::ffff:" + host  # an IPv4 peer on a dual-stack socket
        # Resolve into exactly the tuple recvfrom will report for replies
        # (IPv6 gives four fields), so replies match the session's address.
        try:
            infos = await self._loop.getaddrinfo(lookup, port, family=self._sock.family,
                                                 type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve {host!r}: {exc.strerror}") from None
        target: Address = infos[0][4]
        return target

    def peer_for_key(self, public_key: PublicKey | bytes) -> Peer | None:
        """The established peer that connected to this endpoint with ``public_key``, if any.

        Only sessions this endpoint answered (it was the responder) are found:
        a hub's own peers. A bridge uses it to never send a peer's message back
        to it after the peer moved to another hub.
        """
        raw = public_key.to_bytes() if isinstance(public_key, PublicKey) else public_key
        conn_id = self._endpoint.responder_conn_id(raw)
        return None if conn_id is None else self._peers.get(conn_id)

    def _horizon(self) -> float:
        cfg = self._endpoint.config
        return min(cfg.idle_timeout, 2 * cfg.keepalive_interval + cfg.max_rto)

    async def _handshake(self, target: Address, key: bytes | None, reconnect: bool,
                         resuming: Peer | None) -> Peer:
        fut: asyncio.Future[Peer] = self._loop.create_future()
        conn_id = self._endpoint.connect(target, _now(), key,
                                         idle_timeout=self._horizon() if reconnect else None)
        self._connecting[conn_id] = fut
        if resuming is not None:
            self._resuming[conn_id] = resuming
        self._process(_now())
        try:
            return await fut
        finally:
            self._connecting.pop(conn_id, None)
            self._resuming.pop(conn_id, None)

    async def peer_event(self) -> PeerEvent:
        """The next :class:`PeerEvent` (the oldest are dropped beyond 4096 unread).

        Raises:
            TransportClosedError: the transport was closed.
        """
        while not self._peer_events:
            await self._wake_up(self._event_waiters)
        return self._peer_events.popleft()

    async def peer_events(self) -> AsyncIterator[PeerEvent]:
        """``async for event in t.peer_events()``: every :class:`PeerEvent`, ending
        cleanly when the transport closes (as ``async for msg in t`` does)."""
        while True:
            try:
                yield await self.peer_event()
            except TransportClosedError:
                return

    def peer_event_nowait(self) -> PeerEvent | None:
        return self._peer_events.popleft() if self._peer_events else None

    def _post(self, event: PeerEvent) -> None:
        self._peer_events.append(event)
        while self._event_waiters:
            waiter = self._event_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next delivered message, from any peer.

        Args:
            timeout: seconds to wait at most (None: no limit; 0: only what is
                already queued).

        Raises:
            TransportClosedError: the transport was closed.
            ReceiveTimeoutError: nothing within ``timeout`` (a ``TimeoutError``).
        """
        if timeout is not None:
            return await self._receive_within(timeout)
        await self._until_ready()
        return self._take()

    async def _receive_within(self, timeout: float) -> Message:
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidArgumentError(f"timeout is a number of seconds >= 0 (or None: no "
                                       f"limit), got {timeout!r}")
        try:
            async with asyncio.timeout(timeout):
                return await self.receive()
        except TimeoutError:
            raise ReceiveTimeoutError(f"no message within {timeout:g} s") from None

    def receive_nowait(self) -> Message | None:
        """A delivered message if one is waiting, else None."""
        return self._take() if self._ready else None

    def _take(self) -> Message:
        """The next message, peers served round-robin (one busy peer delays no other)."""
        ready = self._ready
        peer = ready[0]
        inbox = peer._inbox
        msg = inbox.popleft()
        if inbox:
            ready.rotate(-1)
        else:
            ready.popleft()
        if msg[2] is Intent.RELIABLE:
            # Credit returns once per session and loop turn (_flush_soon), not per
            # message: an application reading thousands of messages a turn would
            # otherwise pay the credit arithmetic for each.
            released = self._released
            conn_id = peer.conn_id
            released[conn_id] = released.get(conn_id, 0) + len(msg[1])
            self._schedule_flush()
        else:
            peer._inbox_realtime -= 1
        return msg

    async def receive_many(self, max: int = RECEIVE_MANY,
                           timeout: float | None = None) -> list[Message]:
        """Up to ``max`` delivered messages, from any peers: at least one.

        Waits as :meth:`receive` does until a message is there, then returns
        every message waiting, up to ``max``, in one list: one await for the
        whole batch, so an application that takes many messages pays a tuple
        per message, not a coroutine step. The batch is as fair as
        :meth:`receive`: each peer with messages waiting gets an equal share
        of it (at least one while there is room; a share a peer cannot fill
        goes to the others), its own messages in the order they were
        delivered, and the next call starts with the peer after the last one
        served. RELIABLE messages give their room back to their sender's
        credit as they are taken, exactly as :meth:`receive` does.

        Args:
            max: the most messages returned, an integer >= 1 (1024).
            timeout: seconds to wait at most for the first message (None: no
                limit; 0: only what is already queued).

        Returns:
            A list of 1 to ``max`` :class:`Message` s.

        Raises:
            InvalidArgumentError: ``max`` or ``timeout`` is not what it should be.
            TransportClosedError: the transport was closed (and nothing is left
                to read).
            ReceiveTimeoutError: nothing within ``timeout`` (a ``TimeoutError``).
        """
        limit = check_batch_size(max)
        if timeout is None:
            if not self._ready:
                await self._until_ready()
            return self._take_many(limit)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidArgumentError(f"timeout is a number of seconds >= 0 (or None: no "
                                       f"limit), got {timeout!r}")
        try:
            async with asyncio.timeout(timeout):
                if not self._ready:
                    await self._until_ready()
                return self._take_many(limit)  # no suspension since the wait: not taken
        except TimeoutError:
            raise ReceiveTimeoutError(f"no message within {timeout:g} s") from None

    def batches(self, max: int = RECEIVE_MANY
                ) -> AsyncIterator[list[Message]]:
        """``async for batch in t.batches(max=256)``: :meth:`receive_many` in a loop.

        Each batch is a list of 1 to ``max`` messages; the iteration ends
        cleanly when the transport closes (as ``async for msg in t`` does).

        Raises:
            InvalidArgumentError: ``max`` is not an integer >= 1 (at once, not
                at the first iteration).
        """
        return self._iterate_batches(check_batch_size(max))

    async def _iterate_batches(self, limit: int) -> AsyncIterator[list[Message]]:
        while True:
            try:
                yield await self.receive_many(limit)
            except TransportClosedError:
                return

    async def _until_ready(self) -> None:
        """Wait until some peer has a message waiting."""
        while not self._ready:
            await self._wake_up(self._receivers)

    async def _wake_up(self, waiters: deque[asyncio.Future[None]]) -> None:
        """Wait on a future in ``waiters`` until it is woken (or raise if closed)."""
        self._check_open()
        fut = self._loop.create_future()
        waiters.append(fut)
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()

    def _take_many(self, limit: int) -> list[Message]:
        """Up to ``limit`` messages, shared round-robin among the peers with some waiting.

        Each round gives every ready peer an equal share of the room left (at
        least one); a peer whose inbox empties leaves the ready queue, one
        with more waiting goes to its back, so the next batch (or receive())
        starts after it. The RELIABLE bytes read are credited as receive()'s
        are: once per session and loop turn (_process).
        """
        ready = self._ready
        unreleased = self._released
        reliable = Intent.RELIABLE
        batch: list[Message] = []
        room = limit
        released = False
        while ready and room:
            share = room // len(ready) or 1
            for _ in range(len(ready)):
                peer = ready[0]
                inbox = peer._inbox
                waiting = len(inbox)
                realtime = peer._inbox_realtime
                if waiting <= share:
                    taken = list(inbox)
                    inbox.clear()
                    ready.popleft()
                else:
                    taken = [inbox.popleft() for _ in range(share)]
                    ready.rotate(-1)
                batch += taken
                n = len(taken)
                # The inbox's REALTIME count spares a scan when it holds one intent only.
                if realtime == waiting:          # all REALTIME
                    realtime, reliable_bytes = n, 0
                elif realtime == 0:              # all RELIABLE
                    reliable_bytes = sum(map(len, map(_data_of, taken)))
                else:
                    realtime = reliable_bytes = 0
                    for msg in taken:
                        if msg[2] is reliable:
                            reliable_bytes += len(msg[1])
                        else:
                            realtime += 1
                peer._inbox_realtime -= realtime
                if reliable_bytes:
                    conn_id = peer.conn_id
                    unreleased[conn_id] = unreleased.get(conn_id, 0) + reliable_bytes
                    released = True
                room -= n
                if not room:
                    break
        if released:
            self._schedule_flush()
        return batch

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive()
            except TransportClosedError:
                return

    def broadcast_nowait(self, data: bytes, intent: IntentLike = Intent.REALTIME,
                         priority: int = 0, exclude: Peer | None = None, *,
                         lane: int = 0) -> int:
        """Queue a message for every established peer except ``exclude``, without waiting.

        A peer whose send queue is full is skipped (counted in
        ``intentra_messages_dropped_queue_full_total``); for RELIABLE fan-out
        that cannot lose messages, use :meth:`broadcast`.

        Returns:
            How many peers it was queued for.
        """
        intent = as_intent(intent)
        self._check_open()
        count = self._endpoint.broadcast(data, int(intent), priority, _now(),
                                         None if exclude is None else exclude.conn_id, lane)
        self._schedule_flush()
        return count

    async def broadcast(self, data: bytes, intent: IntentLike = Intent.REALTIME,
                        priority: int = 0, *, lane: int = 0) -> int:
        """Send to every established peer; returns how many it was queued for.

        REALTIME is queued at once for all; RELIABLE waits, peer by peer,
        while a peer's window is full.
        """
        intent = as_intent(intent)
        self._check_open()
        if intent != Intent.RELIABLE:
            return self.broadcast_nowait(data, intent, priority, lane=lane)
        self._endpoint.check_message(data, int(intent), priority, lane)
        count = 0
        for peer in list(self._peers.values()):
            try:
                await peer.send(data, intent, priority, lane=lane)
                count += 1
            except PeerClosedError:
                continue
        return count

    def unacked_reliable(self, peer: Peer | None = None) -> int:
        """RELIABLE messages queued or in flight, not yet acknowledged (one peer or all)."""
        sessions = self._endpoint.sessions
        chosen = [sessions.get(peer.conn_id)] if peer is not None else list(sessions.values())
        return sum(s.unacked_reliable() for s in chosen if s is not None)

    def _wake_senders(self) -> None:
        for peer in self._waiting:
            peer._wake()
        self._waiting.clear()

    async def _drain(self, peer: Peer | None, timeout: float) -> int:
        """Wait until ``peer`` (or every peer) has no unacknowledged RELIABLE message."""
        deadline = _now() + timeout
        while (left := self.unacked_reliable(peer)) and _now() < deadline:
            await asyncio.sleep(0.005)  # shutdown only: a short poll keeps the hot path clean
        return left

    async def close(self, flush_timeout: float = 1.0) -> int:
        """Close every session with CLOSE NORMAL, then the socket. Idempotent.

        First waits up to ``flush_timeout`` seconds for queued and in-flight
        RELIABLE messages to be acknowledged (0: do not wait); new sends are
        refused meanwhile.

        Returns:
            How many RELIABLE messages were still unacknowledged when the
            sessions closed (they may or may not have arrived).
        """
        if self._closed or self._closing:
            return 0
        self._closing = True
        self._wake_senders()
        left = await self._drain(None, flush_timeout) if flush_timeout > 0 else \
            self.unacked_reliable()
        now = _now()
        self._endpoint.close_all(now)
        self._process(now)
        self._shutdown()
        if self._metrics_server is not None:
            server = self._metrics_server
            self._metrics_server = None
            await asyncio.to_thread(server.shutdown)
            server.server_close()
        return left

    def abort(self) -> None:
        """Close the socket at once: no CLOSE is sent, nothing is flushed.

        The peers see what a crash looks like (silence). Mostly for tests.
        """
        if self._closed:
            return
        self._shutdown()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None

    def _shutdown(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
        self._sock.close()
        err = TransportClosedError("the transport was closed")
        for fut in self._connecting.values():
            if not fut.done():
                fut.set_exception(err)
        for waiter in [*self._receivers, *self._event_waiters]:
            if not waiter.done():
                waiter.set_result(None)
        self._receivers.clear()
        self._event_waiters.clear()
        for peer in list(self._between):
            if peer._reconnecting is not None:
                peer._reconnecting.cancel()
                peer._reconnecting = None
            self._finish_peer(peer, CloseReason.NORMAL, False)
        for peer in self._waiting:
            peer._wake()
        self._waiting.clear()

    # ---------------------------------------------------------------- driving

    def _on_readable(self) -> None:
        if self._rx_pending:
            return  # the rest of the last batch goes first, in order
        batch = self._datapath.receive(RECEIVE_BATCH)
        if batch:
            self._work_through(batch, 0)

    def _work_through(self, batch: list[tuple[bytes, Address]], start: int) -> None:
        """Process at most _FAIR_CHUNK datagrams of ``batch``, then yield to the loop.

        One wake-up never holds the loop for a whole batch (512 datagrams, each
        possibly packed with messages): after each chunk the rest is scheduled
        behind the callbacks already waiting (timers, senders, other readers;
        issue 9 item 1), and the socket is not read again until it is done.
        """
        self._rx_pending = False
        if self._closed:
            return
        now = _now()
        endpoint = self._endpoint
        limit = min(len(batch), start + _FAIR_CHUNK)
        if limit - start <= _ACK_CHUNK:
            end = limit
            endpoint.receive_datagrams(batch[start:end], now)
        else:
            # A large batch (a GRO buffer is up to 64 datagrams) is taken in
            # chunks, and what is due to go out (acknowledgements above all)
            # leaves after each: the sender refills its window while this side
            # still works through the rest. A turn also ends after about
            # _FAIR_MESSAGES delivered messages: datagrams packed with tiny
            # messages cost per message.
            delivered = endpoint.pending_events
            end = start
            while end < limit:
                at, end = end, min(end + _ACK_CHUNK, limit)
                endpoint.receive_datagrams(batch[at:end], now)
                self._send_due(now)
                if endpoint.pending_events - delivered >= _FAIR_MESSAGES:
                    break
        self._process(now)
        if end < len(batch):
            self._rx_pending = True
            self._loop.call_soon(self._work_through, batch, end)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        now = _now()
        self._endpoint.handle_timer(now)
        self._process(now)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        if not self._closed:
            self._process(_now())

    def _send_due(self, now: float) -> None:
        out = self._endpoint.datagrams_to_send(now)
        if out and not self._closed:
            self.send_errors += self._datapath.send(out)  # full buffer, unreachable: UDP drops

    def _process(self, now: float) -> None:
        endpoint = self._endpoint
        # 0. credit the application's reads returned (ACKs may become due)
        if self._released:
            released = self._released
            self._released = {}
            for conn_id, nbytes in released.items():
                endpoint.release(conn_id, nbytes)
        # 1. datagrams
        self._send_due(now)
        # 2. events (messages first-class: one per delivered message)
        events = endpoint.take_events()
        peers = self._peers
        ready = self._ready
        limit = self._queue_limit
        last_id, last_peer = -1, None
        inbox: deque[Message] = deque()
        sunk: dict[int, int] = {}
        while events:
            for event in events:
                if type(event) is MessageReceived:
                    conn_id, data, intent, priority, lane = event
                    if self._sink:
                        self.sink_messages += 1
                        if intent is Intent.RELIABLE:
                            sunk[conn_id] = sunk.get(conn_id, 0) + len(data)
                        continue
                    if conn_id != last_id:
                        last_id, last_peer = conn_id, peers.get(conn_id)
                        if last_peer is not None:
                            inbox = last_peer._inbox
                    if last_peer is None:
                        continue
                    # RELIABLE messages are bounded by the credit and never dropped
                    # here; REALTIME beyond the peer's bound goes, oldest first.
                    if intent is Intent.REALTIME:
                        if last_peer._inbox_realtime >= limit:
                            self._drop_oldest_realtime(last_peer)
                        last_peer._inbox_realtime += 1
                    if not inbox:
                        ready.append(last_peer)
                    inbox.append(_tuple_new(Message, (last_peer, data, intent, priority,
                                                              lane)))
                    continue
                last_id = -1  # a session event may change what a conn_id maps to
                if type(event) is HandshakeCompleted:
                    self._on_established(event)
                elif type(event) is HandshakeConfirmed:
                    self._on_confirmed(event)
                elif type(event) is SessionClosed:
                    self._on_closed(event)
                elif type(event) is HandshakeFailed:
                    self._on_failed(event)
            events = endpoint.take_events()  # what handling these added
        for conn_id, nbytes in sunk.items():
            endpoint.release(conn_id, nbytes)
        if ready and self._receivers:
            while self._receivers:
                waiter = self._receivers.popleft()
                if not waiter.done():
                    waiter.set_result(None)
        # 3. wake senders waiting for window room
        if self._waiting:
            for peer in list(self._waiting):
                if peer.closed or endpoint.sessions.get(peer.conn_id) is None or \
                        endpoint.can_send_reliable(peer.conn_id, peer._need):
                    self._waiting.discard(peer)
                    peer._wake()
        # 4. one timer
        if self._closed:
            return
        # Re-arm only for an earlier deadline; a timer that fires early finds
        # nothing due and re-arms (see Endpoint._rearm).
        deadline = endpoint.get_timer()
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_later(max(deadline - _now(), 0.0), self._on_timer)

    def _drop_oldest_realtime(self, peer: Peer) -> None:
        """Drop the oldest REALTIME message waiting for ``peer`` (its inbox is at the bound)."""
        inbox = peer._inbox
        for i, msg in enumerate(inbox):
            if msg[2] is Intent.REALTIME:
                del inbox[i]
                break
        peer._inbox_realtime -= 1
        self._endpoint.stats.messages_dropped_receive_queue += 1
        if not inbox:
            with contextlib.suppress(ValueError):
                self._ready.remove(peer)

    def _on_established(self, event: HandshakeCompleted) -> None:
        peer = self._resuming.get(event.conn_id)
        if peer is not None and peer.public_key == PublicKey(event.peer_key):
            peer.conn_id = event.conn_id  # the same Peer, its next session
        else:
            peer = Peer(self, event.conn_id, PublicKey(event.peer_key), event.initiator)
            if not event.initiator:
                self._post(PeerEvent("connected", peer))
        self._peers[event.conn_id] = peer
        # connect() resolves on HandshakeConfirmed: until the responder answers,
        # it may still refuse our key (allow-list) without a word.

    def _on_confirmed(self, event: HandshakeConfirmed) -> None:
        fut = self._connecting.get(event.conn_id)
        peer = self._peers.get(event.conn_id)
        if fut is not None and not fut.done() and peer is not None:
            fut.set_result(peer)

    def _on_failed(self, event: HandshakeFailed) -> None:
        fut = self._connecting.get(event.conn_id)
        if fut is None or fut.done():
            return
        host = event.address[0]
        port = event.address[1]
        if event.reason == "authentication":
            fut.set_exception(AuthenticationError(
                f"{host}:{port} proved a static key that is not the pinned server key or "
                "not on the allow-list; check the key you expect"))
        else:
            fut.set_exception(HandshakeTimeoutError(
                f"no handshake with {host}:{port} within "
                f"{self._endpoint.config.handshake_timeout:g} s; is an intentra endpoint "
                "listening there?"))

    def _on_closed(self, event: SessionClosed) -> None:
        peer = self._peers.pop(event.conn_id, None)
        fut = self._connecting.get(event.conn_id)
        if fut is not None and not fut.done():
            if event.by_peer:
                fut.set_exception(PeerClosedError(
                    f"the responder closed the new session ({event.reason.name})",
                    int(event.reason), True))
            else:
                timeout = self._endpoint.config.handshake_timeout
                where = f"{peer.address[0]}:{peer.address[1]}" if peer is not None else "the peer"
                fut.set_exception(HandshakeTimeoutError(
                    f"handshake with {where} not confirmed within {timeout:g} s; the responder "
                    "may not allow this key (allow-list) or may be unreachable"))
        if peer is None or event.conn_id in self._resuming:
            return
        if (peer.reconnect and not peer._closing and not self._closing and not self._closed
                and event.reason not in _NO_RECONNECT):
            pending = list(event.pending)
            self._post(PeerEvent("disconnected", peer, event.reason, len(pending)))
            self._between.add(peer)
            peer._reconnecting = self._loop.create_task(self._reconnect(peer, pending))
            return
        self._finish_peer(peer, event.reason, event.by_peer)

    def _finish_peer(self, peer: Peer, reason: CloseReason, by_peer: bool) -> None:
        self._between.discard(peer)
        peer.close_reason = reason
        peer.closed_by_peer = by_peer
        self._waiting.discard(peer)
        peer._wake()
        self._post(PeerEvent("closed", peer, reason))

    async def _reconnect(self, peer: Peer, pending: list[tuple[bytes, int, int]]) -> None:
        delay = RECONNECT_FIRST_DELAY
        targets = peer._targets
        tried = 0
        while True:
            await asyncio.sleep(delay)
            if self._closed or self._closing or peer._closing:
                return
            # The responder went away: try the next address first (a single
            # address is tried again); the backoff grows once per round.
            peer._target_index = (peer._target_index + 1) % len(targets)
            tried += 1
            try:
                await self._handshake(targets[peer._target_index], peer._server_key, True,
                                      peer)
            except AuthenticationError:
                # Another key answered: refused, reported, and tried again later
                # (a forger's RESPONSE must not end the Peer; issue 9 items 2c, 7).
                if self._closed or self._closing or peer._closing:
                    return
                self._post(PeerEvent("rejected", peer))
                if tried % len(targets) == 0:
                    delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            except IntentraError:
                if tried % len(targets) == 0:
                    delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            break
        self._between.discard(peer)
        peer._reconnecting = None
        peer.reconnects += 1
        resend = pending + peer._backlog
        peer._backlog = []
        peer._backlog_bytes = 0
        now = _now()
        for data, priority, lane in resend:  # at least once: the old responder may have had them
            with contextlib.suppress(IntentraError):
                # Beyond the queue's bounds if need be: each part was within them
                # (the old session's queue and window, the backlog), and a message
                # dropped here would be lost without a word.
                self._endpoint.send(peer.conn_id, data, int(Intent.RELIABLE), priority, now,
                                    lane, bounded=False)
        self._process(now)
        self._post(PeerEvent("reconnected", peer, None, len(resend)))
        peer._wake()

    def _close_peer(self, peer: Peer, reason: CloseReason) -> None:
        now = _now()
        self._endpoint.close(peer.conn_id, now, reason)
        self._process(now)
        if peer.close_reason is None:  # the core reports it; keep the object consistent anyway
            peer.close_reason = reason
            self._peers.pop(peer.conn_id, None)


__all__ = ["Binding", "IntentraError", "Message", "Peer", "PeerEvent", "PeerStatus",
           "Transport",
           "parse_address"]
