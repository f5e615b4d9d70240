"""Graceful shutdown (flush, then CLOSE) and a crashed peer restarted with the same key."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from aiohelp import step
from intentra import CloseReason, Intent, PrivateKey, Transport
from intentra.testing import Faults, UdpProxy

T = TypeVar("T")
LOCAL = "127.0.0.1:0"


async def receive_n(t: Transport, n: int) -> list[bytes]:
    return [(await t.receive()).data for _ in range(n)]


def test_close_flushes_reliable_messages_through_loss_then_sends_close() -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        async with await Transport.bind(LOCAL, server_key) as server:
            faults = Faults(loss=0.2, jitter=0.01)
            async with await UdpProxy.start(server.local_address, forward=faults,
                                            backward=faults, seed=4) as proxy:
                client = await Transport.bind(LOCAL, PrivateKey.generate())
                peer = await step(client.connect(proxy.address, server_key.public_key))
                for i in range(300):
                    peer.send_nowait(b"m%d" % i, Intent.RELIABLE)
                left = await step(client.close(flush_timeout=8.0))
                assert left == 0
                got = await step(receive_n(server, 300))
                assert got == [b"m%d" % i for i in range(300)]
                # CLOSE itself may be lost on the way (20%); when it arrives it says NORMAL.
                await asyncio.sleep(0.2)
                for p in server.peers:
                    assert p.close_reason in (None, CloseReason.NORMAL)

    asyncio.run(body())


def test_close_without_flush_reports_what_was_left() -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        server = await Transport.bind(LOCAL, server_key)
        async with server, await UdpProxy.start(server.local_address) as proxy:
            client = await Transport.bind(LOCAL, PrivateKey.generate())
            peer = await step(client.connect(proxy.address, server_key.public_key))
            proxy.blackhole("forward", 5.0)  # nothing reaches the server any more
            for i in range(50):
                peer.send_nowait(b"m%d" % i, Intent.RELIABLE)
            await asyncio.sleep(0.05)
            assert client.unacked_reliable(peer) == 50
            assert await step(client.close(flush_timeout=0.2)) == 50

    asyncio.run(body())


def test_peer_close_flushes_then_the_other_side_sees_normal() -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        async with await Transport.bind(LOCAL, server_key) as server, \
                await Transport.bind(LOCAL, PrivateKey.generate()) as client:
            peer = await step(client.connect(server.local_address, server_key.public_key))
            for i in range(100):
                peer.send_nowait(b"x%d" % i, Intent.RELIABLE)
            assert await step(peer.close()) == 0
            assert await step(receive_n(server, 100)) == [b"x%d" % i for i in range(100)]
            for _ in range(100):
                if server.peers == []:
                    break
                await asyncio.sleep(0.01)
            assert server.peers == []

    asyncio.run(body())


def test_crashed_initiator_restarted_with_the_same_key_replaces_its_session() -> None:
    async def body() -> None:
        server_key, client_key = PrivateKey.generate(), PrivateKey.generate()
        async with await Transport.bind(LOCAL, server_key) as server:
            first = await Transport.bind(LOCAL, client_key)
            p1 = await step(first.connect(server.local_address, server_key.public_key))
            await p1.send(b"before", Intent.RELIABLE)
            assert (await step(server.receive())).data == b"before"
            [old] = server.peers
            first.abort()  # a crash: no CLOSE reaches the server
            await asyncio.sleep(0.05)
            assert old.close_reason is None  # the server cannot know yet

            async with await Transport.bind(LOCAL, client_key) as second:
                p2 = await step(second.connect(server.local_address, server_key.public_key))
                await p2.send(b"after", Intent.RELIABLE)
                msg = await step(server.receive())
                assert msg.data == b"after"
                assert msg.peer is not old and msg.peer.public_key == client_key.public_key
                assert old.close_reason is CloseReason.REPLACED
                assert server.peers == [msg.peer]

    asyncio.run(body())
