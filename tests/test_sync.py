"""intentra.sync, the blocking API, over real UDP sockets on 127.0.0.1 (no mocks).

A sync client against an asyncio server (in a thread of its own), a sync server
against a sync client, timeouts, exceptions re-raised in the caller's thread,
iteration ended by close() from another thread, and the context managers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from intentra import (
    CloseReason,
    EndpointConfig,
    HandshakeTimeoutError,
    Intent,
    IntentraError,
    InvalidArgumentError,
    OperationTimeoutError,
    PeerClosedError,
    PrivateKey,
    ReceiveTimeoutError,
    TransportClosedError,
    sync,
)
from intentra import Transport as AsyncTransport

LOCAL = "127.0.0.1:0"
STEP = 10.0


def _loop_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "intentra-sync")


@pytest.fixture
def asyncio_echo_server() -> Iterator[tuple[tuple[str, int], PrivateKey]]:
    """An asyncio Transport echoing every message, in a thread with its own loop."""
    key = PrivateKey.generate()
    ready: list[tuple[str, int]] = []
    started = threading.Event()
    stop: list[asyncio.Event] = []
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        async with AsyncTransport.bind(LOCAL, key) as server:
            stop.append(asyncio.Event())
            loop_box.append(asyncio.get_running_loop())
            ready.append(server.local_address)
            started.set()

            async def echo() -> None:
                async for msg in server:
                    msg.peer.send_nowait(msg.data, msg.intent, msg.priority)
            task = asyncio.create_task(echo())
            await stop[0].wait()
            task.cancel()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(STEP)
    yield ready[0], key
    loop_box[0].call_soon_threadsafe(stop[0].set)
    thread.join(STEP)


def test_sync_client_against_an_asyncio_server(
        asyncio_echo_server: tuple[tuple[str, int], PrivateKey]) -> None:
    address, key = asyncio_echo_server
    with sync.Transport.bind(LOCAL, PrivateKey.generate()) as client:
        peer = client.connect(address, server_key=key.public_key, timeout=STEP)
        assert peer.public_key == key.public_key and peer.connected
        peer.send(b"one")                          # RELIABLE by default
        assert peer.send_nowait(b"two", "realtime", 3)
        peer.send_many([b"three", b"four"], Intent.RELIABLE)
        got = [client.receive(timeout=STEP) for _ in range(4)]
        assert sorted(m.data for m in got) == [b"four", b"one", b"three", b"two"]
        assert all(m.peer is peer for m in got)    # the same sync Peer object
        assert {(m.data, m.intent, m.priority) for m in got if m.data == b"two"} == {
            (b"two", Intent.REALTIME, 3)}
        assert client.peers == [peer]
        assert "intentra_packets_received_total" in client.metrics_text()
        with pytest.raises(ReceiveTimeoutError):
            client.receive(timeout=0.05)
        assert peer.close("normal") == 0  # every RELIABLE message acknowledged
        assert peer.closed and client.unacked_reliable() == 0
    assert client.closed
    with pytest.raises(TransportClosedError):
        client.receive(timeout=0.1)


def test_sync_server_against_sync_client() -> None:
    before = _loop_threads()
    server_key = PrivateKey.generate()
    with sync.Transport.bind(LOCAL, server_key) as server, \
            sync.Transport.bind(LOCAL, PrivateKey.generate()) as client:
        assert _loop_threads() == before + 2
        peer = client.connect(server.local_address, server.public_key)
        peer.send(b"ping", priority=5)
        msg = server.receive(timeout=STEP)
        assert (msg.data, msg.intent, msg.priority) == (b"ping", Intent.RELIABLE, 5)
        assert msg.peer.public_key == client.public_key
        msg.peer.send(b"pong")
        assert client.receive(timeout=STEP).data == b"pong"
        assert server.broadcast(b"all", "reliable", timeout=STEP) == 1
        assert client.receive(timeout=STEP).data == b"all"

        # for msg in server: ends when another thread closes it.
        seen: list[bytes] = []

        def consume() -> None:
            seen.extend(m.data for m in server)

        consumer = threading.Thread(target=consume)
        consumer.start()
        for i in range(5):
            peer.send(b"m%d" % i)
        deadline = time.monotonic() + STEP
        while len(seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        server.close()
        consumer.join(STEP)
        assert not consumer.is_alive()

        # The server went away with CLOSE NORMAL: the client's peer learns it.
        deadline = time.monotonic() + STEP
        while not peer.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert peer.close_reason is CloseReason.NORMAL
        with pytest.raises(PeerClosedError):  # raised in this thread, from the loop's
            peer.send(b"late")
    assert _loop_threads() == before  # both loop threads stopped


def test_sync_errors_and_timeouts_reach_the_caller() -> None:
    fast = EndpointConfig(handshake_timeout=0.3)
    with sync.Transport.bind(LOCAL, PrivateKey.generate(), config=fast) as client:
        # Nobody listens there: the handshake times out; an IntentraError and a TimeoutError.
        with sync.Transport.bind(LOCAL, PrivateKey.generate()) as gone:
            dead = gone.local_address
        with pytest.raises(HandshakeTimeoutError):
            client.connect(dead)
        # The caller's own limit, shorter than the handshake's.
        with pytest.raises(OperationTimeoutError, match="connect did not finish within") as info:
            client.connect(dead, timeout=0.05)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, IntentraError)
        with pytest.raises(InvalidArgumentError, match="timeout"):
            client.receive(timeout=-1)
        with pytest.raises(ReceiveTimeoutError):
            client.receive(timeout=0)
    client.close()  # idempotent
    with pytest.raises(TransportClosedError):
        client.connect(dead)
