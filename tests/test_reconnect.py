"""A responder restarted: initiators that asked for it reconnect, and nothing is lost."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from aiohelp import step
from intentra import CloseReason, EndpointConfig, Intent, PeerEvent, PrivateKey, Transport

T = TypeVar("T")
# Short timers: the keepalive horizon is 2 x 0.2 + 0.5 = 0.9 s.
FAST = EndpointConfig(keepalive_interval=0.2, max_rto=0.5, idle_timeout=10.0,
                      handshake_timeout=2.0)


async def next_kind(t: Transport, kind: str) -> PeerEvent:
    while True:
        event = await step(t.peer_event())
        if event.kind == kind:
            return event


async def receive_n(t: Transport, n: int) -> list[bytes]:
    return [(await t.receive()).data for _ in range(n)]


def test_initiator_reconnects_to_a_restarted_responder_and_resends() -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        server = await Transport.bind("127.0.0.1:0", server_key, config=FAST)
        address = server.local_address
        client = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=FAST)
        try:
            peer = await step(client.connect(address, server_key.public_key, reconnect=True))
            for i in range(20):
                await peer.send(b"a%d" % i, Intent.RELIABLE)
            assert await step(receive_n(server, 20)) == [b"a%d" % i for i in range(20)]
            while client.unacked_reliable(peer):  # acknowledged, so not resent later
                await asyncio.sleep(0.005)

            server.abort()  # the responder crashes: silence, no CLOSE
            for i in range(5):  # sent into the void: kept for the next session
                peer.send_nowait(b"b%d" % i, Intent.RELIABLE)
            lost = await next_kind(client, "disconnected")
            assert lost.peer is peer and lost.reason is CloseReason.TIMEOUT
            assert not peer.connected and not peer.closed
            peer.send_nowait(b"c0", Intent.RELIABLE)  # between sessions: backlog
            assert peer.send_nowait(b"rt", Intent.REALTIME) is False  # realtime: dropped

            server = await Transport.bind(f"127.0.0.1:{address[1]}", server_key, config=FAST)
            back = await next_kind(client, "reconnected")
            assert back.peer is peer and peer.connected and peer.reconnects == 1
            assert back.pending == 6
            await peer.send(b"d0", Intent.RELIABLE)
            got = await step(receive_n(server, 7))
            assert got == [b"b0", b"b1", b"b2", b"b3", b"b4", b"c0", b"d0"]
        finally:
            await client.close()
            await server.close()

    asyncio.run(body())


def test_without_reconnect_the_peer_closes_for_good() -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        server = await Transport.bind("127.0.0.1:0", server_key, config=FAST)
        client = await Transport.bind("127.0.0.1:0", PrivateKey.generate(),
                                      config=EndpointConfig(keepalive_interval=0.2,
                                                            idle_timeout=1.0))
        try:
            peer = await step(client.connect(server.local_address, server_key.public_key))
            server.abort()
            closed = await next_kind(client, "closed")
            assert closed.peer is peer and peer.close_reason is CloseReason.TIMEOUT
        finally:
            await client.close()

    asyncio.run(body())


def test_a_reconnecting_peer_can_be_closed_while_it_waits() -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        server = await Transport.bind("127.0.0.1:0", server_key, config=FAST)
        client = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=FAST)
        try:
            peer = await step(client.connect(server.local_address, server_key.public_key,
                                             reconnect=True))
            server.abort()
            await next_kind(client, "disconnected")
            await step(peer.close())
            assert peer.closed
            await asyncio.sleep(0.7)  # past the first reconnect delay: nothing happens
            assert peer.reconnects == 0
        finally:
            await client.close()

    asyncio.run(body())


def test_responders_report_new_peers() -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        async with await Transport.bind("127.0.0.1:0", server_key) as server, \
                await Transport.bind("127.0.0.1:0", PrivateKey.generate()) as client:
            peer = await step(client.connect(server.local_address, server_key.public_key))
            event = await next_kind(server, "connected")
            assert event.peer.public_key == client.public_key
            await peer.close()
            closed = await next_kind(server, "closed")
            assert closed.peer is event.peer and closed.reason is CloseReason.NORMAL

    asyncio.run(body())
