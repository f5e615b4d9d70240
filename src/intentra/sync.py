"""A blocking API for scripts and control loops that do not run asyncio.

The same concepts as :mod:`intentra` (``Transport.bind``, ``connect``,
``peer.send``, ``peer.send_nowait``, ``receive``, ``receive_many``, iteration,
``batches``, ``close``, context managers), each call blocking the calling
thread. Every sync ``Transport`` runs an asyncio event loop in a background
thread of its own, where the real :class:`intentra.Transport` lives; calls are
handed to it and their results, or their exceptions, come back to the caller's
thread. Blocking calls take a ``timeout`` in seconds (None: no limit) and raise
a ``TimeoutError`` that is also an :class:`~intentra.errors.IntentraError` when
it runs out::

    from intentra import PrivateKey, sync

    with sync.Transport.bind("127.0.0.1:0", PrivateKey.generate()) as t:
        peer = t.connect("127.0.0.1:9000", server_key=server_public_key)
        peer.send(b"hello")                      # RELIABLE: waits while the window is full
        peer.send_nowait(b"pose 1 2", "realtime")
        msg = t.receive(timeout=1.0)             # ReceiveTimeoutError if nothing came
        batch = t.receive_many(256, timeout=1.0)  # 1 to 256 messages, one call
        for msg in t:                            # ends when the transport is closed
            ...

Several threads may share one Transport. Do not call it from inside a running
event loop: use :class:`intentra.Transport` there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Self, TypeVar

from intentra.aio import transport as aio
from intentra.aio.args import CloseReasonLike, IntentLike, check_batch_size
from intentra.config import EndpointConfig
from intentra.constants import CloseReason, Intent
from intentra.errors import (
    InvalidArgumentError,
    OperationTimeoutError,
    TransportClosedError,
)
from intentra.events import Address
from intentra.keys import PrivateKey, PublicKey

__all__ = ["Message", "Peer", "Transport"]

T = TypeVar("T")


class Message(NamedTuple):
    """A delivered message; ``peer`` is a sync :class:`Peer`, ``lane`` its lane."""

    peer: Peer
    data: bytes
    intent: Intent
    priority: int
    lane: int = 0


class _LoopThread:
    """An event loop running forever in a daemon thread; coroutines are handed to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="intentra-sync", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None,
             what: str = "the call") -> T:
        """Run ``coro`` on the loop and wait for it; its exception is raised here."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise InvalidArgumentError("intentra.sync was called from its own event loop; "
                                       "inside async code use intentra.Transport")
        if timeout is not None:
            _check_timeout(timeout)
            coro = _within(coro, timeout, what)
        if not self.thread.is_alive():
            coro.close()
            raise TransportClosedError("the transport is closed; bind a new one")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self.stopping:  # close() in another thread ended this call
                raise TransportClosedError("the transport was closed") from None
            raise
        except BaseException:
            future.cancel()  # KeyboardInterrupt in the caller: stop the work as well
            raise

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.stopping = True

        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if threading.current_thread() is not self.thread:
            asyncio.run_coroutine_threadsafe(finish(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


def _check_timeout(timeout: float) -> None:
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
        raise InvalidArgumentError(f"timeout is a number of seconds >= 0 (or None: no "
                                   f"limit), got {timeout!r}")


async def _within(coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise OperationTimeoutError(f"{what} did not finish within {timeout:g} s") \
                from None
        raise  # a TimeoutError of its own (HandshakeTimeoutError): as it is


class Peer:
    """One peer of a sync :class:`Transport` (a thin handle on :class:`intentra.Peer`)."""

    def __init__(self, transport: Transport, peer: aio.Peer) -> None:
        self._transport = transport
        self._peer = peer

    @property
    def public_key(self) -> PublicKey:
        return self._peer.public_key

    @property
    def address(self) -> Address:
        return self._peer.address

    @property
    def closed(self) -> bool:
        return self._peer.closed

    @property
    def connected(self) -> bool:
        return self._peer.connected

    @property
    def close_reason(self) -> CloseReason | None:
        return self._peer.close_reason

    def send(self, data: bytes, intent: IntentLike = Intent.RELIABLE, priority: int = 0,
             timeout: float | None = None, *, lane: int = 0) -> None:
        """Queue a message; for RELIABLE, block while the window (or the send queue) is full.

        Raises:
            OperationTimeoutError: no window room within ``timeout`` (not queued).
            PeerClosedError, MessageTooLargeError, InvalidMessageError: as
                :meth:`intentra.Peer.send`.
        """
        self._transport._runner.call(self._peer.send(data, intent, priority, lane=lane),
                                     timeout, "send (waiting for window room)")

    def send_many(self, messages: Iterable[bytes], intent: IntentLike = Intent.RELIABLE,
                  priority: int = 0, timeout: float | None = None, *, lane: int = 0) -> None:
        """Queue many messages in order (see :meth:`intentra.Peer.send_many`)."""
        batch = list(messages)
        self._transport._runner.call(self._peer.send_many(batch, intent, priority, lane=lane),
                                     timeout, "send_many")

    def send_nowait(self, data: bytes, intent: IntentLike = Intent.REALTIME,
                    priority: int = 0, *, lane: int = 0) -> bool:
        """Queue a message without waiting for window room (see :meth:`intentra.Peer.send_nowait`).

        Returns:
            False if a REALTIME message was dropped on a full send queue.
        """
        async def go() -> bool:
            return self._peer.send_nowait(data, intent, priority, lane=lane)
        return self._transport._runner.call(go())

    def close(self, reason: CloseReasonLike = CloseReason.NORMAL,
              flush_timeout: float = 1.0) -> int:
        """Close the session (see :meth:`intentra.Peer.close`); unacknowledged RELIABLE count."""
        return self._transport._runner.call(self._peer.close(reason, flush_timeout))

    def __repr__(self) -> str:
        return f"sync.{self._peer!r}"


class Transport:
    """A blocking :class:`intentra.Transport`. Create with :meth:`bind`."""

    def __init__(self, runner: _LoopThread, transport: aio.Transport) -> None:
        self._runner = runner
        self._transport = transport
        self._peers: weakref.WeakKeyDictionary[aio.Peer, Peer] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @classmethod
    def bind(cls, address: str | tuple[str, int], key: PrivateKey,
             allowed_peers: Iterable[PublicKey] | None = None, *,
             config: EndpointConfig | None = None,
             metrics_address: str | tuple[str, int] | None = None,
             receive_queue_size: int = 1024, datapath: str | None = None) -> Transport:
        """Bind a UDP socket and start serving, on a new background event loop.

        The arguments are those of :meth:`intentra.Transport.bind`.
        """
        runner = _LoopThread()
        allowed = None if allowed_peers is None else list(allowed_peers)

        async def go() -> aio.Transport:
            return await aio.Transport.bind(
                address, key, allowed, config=config, metrics_address=metrics_address,
                receive_queue_size=receive_queue_size, datapath=datapath)
        try:
            transport = runner.call(go())
        except BaseException:
            runner.stop()
            raise
        return cls(runner, transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wrap(self, peer: aio.Peer) -> Peer:
        with self._lock:
            mine = self._peers.get(peer)
            if mine is None:
                mine = self._peers[peer] = Peer(self, peer)
            return mine

    @property
    def local_address(self) -> tuple[str, int]:
        return self._transport.local_address

    @property
    def public_key(self) -> PublicKey:
        return self._transport.public_key

    @property
    def peers(self) -> list[Peer]:
        """Established peers, in the order their sessions began."""
        return [self._wrap(p) for p in self._transport.peers]

    @property
    def closed(self) -> bool:
        return self._transport.closed

    def connect(self, address: str | tuple[str, int] | Sequence[str | tuple[str, int]],
                server_key: PublicKey | None = None, reconnect: bool = False,
                timeout: float | None = None) -> Peer:
        """Handshake (see :meth:`intentra.Transport.connect`); blocks until established.

        ``address`` may be a list of responders, tried in order (as the asyncio API).

        Raises:
            HandshakeTimeoutError, AuthenticationError: as the asyncio API.
            OperationTimeoutError: not established within ``timeout``.
        """
        peer = self._runner.call(self._transport.connect(address, server_key, reconnect),
                                 timeout, "connect")
        return self._wrap(peer)

    def receive(self, timeout: float | None = None) -> Message:
        """The next delivered message, from any peer.

        Raises:
            ReceiveTimeoutError: nothing within ``timeout`` (a ``TimeoutError``).
            TransportClosedError: the transport was closed.
        """
        if timeout is not None:
            _check_timeout(timeout)
        msg = self._runner.call(self._transport.receive(timeout))
        return Message(self._wrap(msg.peer), msg.data, msg.intent, msg.priority, msg.lane)

    def receive_nowait(self) -> Message | None:
        """A delivered message if one is waiting, else None."""
        async def go() -> aio.Message | None:
            return self._transport.receive_nowait()
        msg = self._runner.call(go())
        return None if msg is None else Message(self._wrap(msg.peer), msg.data, msg.intent,
                                                msg.priority, msg.lane)

    def receive_many(self, max: int = aio.RECEIVE_MANY,
                     timeout: float | None = None) -> list[Message]:
        """Up to ``max`` delivered messages, from any peers: at least one.

        One call (one hand-over to the background loop) for the whole batch,
        which is what makes it worth it here: see
        :meth:`intentra.Transport.receive_many` for the fairness among peers
        and the credit.

        Raises:
            InvalidArgumentError: ``max`` is not an integer >= 1, or a bad ``timeout``.
            ReceiveTimeoutError: nothing within ``timeout`` (a ``TimeoutError``).
            TransportClosedError: the transport was closed.
        """
        limit = check_batch_size(max)
        if timeout is not None:
            _check_timeout(timeout)
        batch = self._runner.call(self._transport.receive_many(limit, timeout))
        mine: dict[aio.Peer, Peer] = {}
        out: list[Message] = []
        for msg in batch:
            peer = mine.get(msg.peer)
            if peer is None:
                peer = mine[msg.peer] = self._wrap(msg.peer)
            out.append(Message(peer, msg.data, msg.intent, msg.priority))
        return out

    def batches(self, max: int = aio.RECEIVE_MANY) -> Iterator[list[Message]]:
        """``for batch in t.batches(max=256)``: :meth:`receive_many` until the transport
        is closed.

        Raises:
            InvalidArgumentError: ``max`` is not an integer >= 1 (at once).
        """
        return self._iterate_batches(check_batch_size(max))

    def _iterate_batches(self, limit: int) -> Iterator[list[Message]]:
        while True:
            try:
                yield self.receive_many(limit)
            except TransportClosedError:
                return

    def __iter__(self) -> Iterator[Message]:
        """``for msg in t``: every message until the transport is closed."""
        while True:
            try:
                yield self.receive()
            except TransportClosedError:
                return

    def broadcast(self, data: bytes, intent: IntentLike = Intent.REALTIME, priority: int = 0,
                  timeout: float | None = None, *, lane: int = 0) -> int:
        """Send to every established peer (see :meth:`intentra.Transport.broadcast`)."""
        return self._runner.call(self._transport.broadcast(data, intent, priority, lane=lane),
                                 timeout, "broadcast")

    def unacked_reliable(self, peer: Peer | None = None) -> int:
        async def go() -> int:
            return self._transport.unacked_reliable(None if peer is None else peer._peer)
        return self._runner.call(go())

    def metrics_text(self) -> str:
        async def go() -> str:
            return self._transport.metrics_text()
        return self._runner.call(go())

    def close(self, flush_timeout: float = 1.0) -> int:
        """Close every session and the socket, then stop the background loop. Idempotent.

        Returns:
            RELIABLE messages still unacknowledged (see :meth:`intentra.Transport.close`).
        """
        if not self._runner.thread.is_alive():
            return 0
        try:
            return self._runner.call(self._transport.close(flush_timeout))
        finally:
            self._runner.stop()

    def __repr__(self) -> str:
        return "sync.Transport(closed)" if self.closed else \
            f"sync.Transport({self.local_address!r})"
