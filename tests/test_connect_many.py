"""``connect()`` to several responders: the first that answers, and the next when it goes away."""

from __future__ import annotations

import asyncio
import socket

import pytest

from aiohelp import step
from intentra import (
    EndpointConfig,
    HandshakeTimeoutError,
    Intent,
    InvalidArgumentError,
    PrivateKey,
    Transport,
)
from test_reconnect import FAST, next_kind, receive_n

QUICK = EndpointConfig(keepalive_interval=0.2, max_rto=0.5, idle_timeout=10.0,
                       handshake_timeout=0.6)


def silent_address() -> tuple[str, int]:
    """A bound UDP port that never answers (held by the caller's socket)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    silent.append(sock)
    host, port = sock.getsockname()
    return host, port


silent: list[socket.socket] = []


def teardown_module() -> None:
    for sock in silent:
        sock.close()


def test_connect_goes_to_the_first_address_that_answers() -> None:
    async def body() -> None:
        key = PrivateKey.generate()
        async with await Transport.bind("127.0.0.1:0", key) as hub, \
                await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=QUICK) as c:
            peer = await step(c.connect([silent_address(), hub.local_address], key.public_key))
            assert peer.address == hub.local_address
            await peer.send(b"hello", Intent.RELIABLE)
            assert (await step(hub.receive())).data == b"hello"
            with pytest.raises(HandshakeTimeoutError):
                await c.connect([silent_address(), silent_address()], key.public_key)
            with pytest.raises(InvalidArgumentError, match="non-empty list"):
                await c.connect([], key.public_key)

    asyncio.run(body())


def test_a_reconnecting_peer_moves_to_the_next_hub_and_resends_what_was_unacknowledged() -> None:
    """The hub it is on crashes with messages in flight: the Peer moves to the next
    address in its list (not back to the dead one first) and resends them there."""
    async def body() -> None:
        key = PrivateKey.generate()  # hubs of one fleet share a key
        first = await Transport.bind("127.0.0.1:0", key, config=FAST)
        second = await Transport.bind("127.0.0.1:0", key, config=FAST)
        client = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=FAST)
        try:
            addresses = [first.local_address, second.local_address]
            peer = await step(client.connect(addresses, key.public_key, reconnect=True))
            assert peer.address == addresses[0]
            await peer.send(b"a0", Intent.RELIABLE)
            assert (await step(first.receive())).data == b"a0"
            while client.unacked_reliable(peer):
                await asyncio.sleep(0.005)
            first.abort()  # the hub crashes: silence
            for i in range(4):
                peer.send_nowait(b"b%d" % i, Intent.RELIABLE)  # never acknowledged
            lost = await next_kind(client, "disconnected")
            assert lost.pending == 4
            back = await next_kind(client, "reconnected")
            assert back.pending == 4 and peer.connected
            assert peer.address == addresses[1], "moved on to the next hub"
            assert await step(receive_n(second, 4)) == [b"b0", b"b1", b"b2", b"b3"]
            while client.unacked_reliable(peer):  # else resent again: at least once
                await asyncio.sleep(0.005)
            # The next loss wraps around the list: back to the first address.
            first = await Transport.bind(addresses[0], key, config=FAST)
            second.abort()
            await next_kind(client, "reconnected")
            assert peer.address == addresses[0]
            await peer.send(b"c0", Intent.RELIABLE)
            assert (await step(first.receive())).data == b"c0"
        finally:
            await client.close()
            await first.close()
            await second.close()

    asyncio.run(body())
