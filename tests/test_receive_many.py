"""The batch API: ``Transport.receive_many``, ``Transport.batches`` and their sync forms.

Real UDP sockets on 127.0.0.1 (no mocks). What a batch must keep from
``receive()``: peers served round-robin (a busy peer cannot crowd another out of
a batch, and the next batch starts after the last peer served), each peer's
messages in order and exactly once, RELIABLE credit given back when the
application reads, the REALTIME bound per peer, and clear errors.
"""

from __future__ import annotations

import asyncio
import struct
import threading

import pytest

from aiohelp import run, step, wait_until
from intentra import (
    EndpointConfig,
    Intent,
    InvalidArgumentError,
    Message,
    Peer,
    PrivateKey,
    PublicKey,
    ReceiveTimeoutError,
    Transport,
    TransportClosedError,
    sync,
)

LOCAL = "127.0.0.1:0"
SEQ = struct.Struct("!I")


def numbered(count: int, size: int = 20) -> list[bytes]:
    return [SEQ.pack(i) + bytes(size - SEQ.size) for i in range(count)]


def by_sender(batch: list[Message], keys: dict[PublicKey, str]) -> dict[str, list[int]]:
    """The sequence numbers of ``batch``, per sender name, in batch order."""
    out: dict[str, list[int]] = {name: [] for name in keys.values()}
    for msg in batch:
        out[keys[msg.peer.public_key]].append(SEQ.unpack_from(msg.data)[0])
    return out


async def unread(server: Transport, expected: dict[PublicKey, int]) -> None:
    """Wait until every sender's messages wait, unread, at the server (peer.status())."""
    def arrived() -> bool:
        waiting = {p.public_key: p.status().received_unread for p in server.peers}
        return all(waiting.get(key) == n for key, n in expected.items())
    await wait_until(arrived, what=f"{sum(expected.values())} messages waiting unread")


async def clients(server: Transport, count: int,
                  config: EndpointConfig | None = None) -> tuple[list[Transport], list[Peer]]:
    transports = [await Transport.bind(LOCAL, PrivateKey.generate(), config=config)
                  for _ in range(count)]
    peers = [await step(t.connect(server.local_address, server.public_key)) for t in transports]
    return transports, peers


def test_a_busy_peer_cannot_crowd_the_others_out_of_a_batch() -> None:
    """200 messages of A wait beside 5 of B and 2 of C: a batch of 40 holds all of
    B's and C's, and A's first 33, each peer's in order; the next takes the rest."""

    async def body() -> None:
        async with Transport.bind(LOCAL, PrivateKey.generate()) as server:
            transports, (a, b, c) = await clients(server, 3)
            try:
                names = {t.public_key: n for t, n in zip(transports, "ABC", strict=True)}
                await a.send_many(numbered(200))  # within the credit (218 x 1200 bytes)
                await b.send_many(numbered(5))
                await c.send_many(numbered(2))
                await unread(server, {t.public_key: n for t, n in
                                      zip(transports, (200, 5, 2), strict=True)})

                first = await step(server.receive_many(40))
                got = by_sender(first, names)
                assert len(first) == 40
                assert got == {"A": list(range(33)), "B": list(range(5)), "C": [0, 1]}
                assert all(m.intent is Intent.RELIABLE for m in first)

                rest = await step(server.receive_many(1000))
                assert by_sender(rest, names) == {"A": list(range(33, 200)), "B": [], "C": []}
                with pytest.raises(ReceiveTimeoutError, match="no message within 0 s"):
                    await server.receive_many(10, timeout=0)
            finally:
                for t in transports:
                    await t.close(flush_timeout=0)

    run(body())


def test_the_next_batch_starts_after_the_last_peer_served() -> None:
    """Three peers with two messages each, batches of two: every batch serves two
    different peers, each batch begins where the last one stopped, and no peer
    waits a second turn while another gets its second message."""

    async def body() -> None:
        async with Transport.bind(LOCAL, PrivateKey.generate()) as server:
            transports, peers = await clients(server, 3)
            try:
                names = {t.public_key: n for t, n in zip(transports, "ABC", strict=True)}
                for peer in peers:
                    await peer.send_many(numbered(2))
                await unread(server, {t.public_key: 2 for t in transports})
                order = []
                for _ in range(3):
                    batch = await step(server.receive_many(2))
                    assert len(batch) == 2 and batch[0].peer is not batch[1].peer
                    order += [names[m.peer.public_key] for m in batch]
                assert order[:3] == order[3:] and sorted(order[:3]) == ["A", "B", "C"], order
                assert server.receive_nowait() is None
            finally:
                for t in transports:
                    await t.close(flush_timeout=0)

    run(body())


def test_reading_in_batches_gives_the_credit_back() -> None:
    """A server holding 12,000 bytes of unread RELIABLE messages (40 of 300 bytes) stops
    its sender; reading with ``async for batch in t.batches(max=16)`` lets all 200
    through, in order, exactly once (if receive_many kept the credit, the sender
    would wait for ever)."""
    config = EndpointConfig(max_reorder_buffer=12_000, max_message_size=10_000)

    async def body() -> None:
        async with Transport.bind(LOCAL, PrivateKey.generate(), config=config) as server:
            transports, (peer,) = await clients(server, 1)
            try:
                msgs = numbered(200, 300)
                sender = asyncio.create_task(peer.send_many(msgs))
                await wait_until(lambda: bool(server.peers) and
                                 server.peers[0].status().received_unread >= 10,
                                 what="messages to wait unread")
                await asyncio.sleep(0.2)
                assert not sender.done(), "the sender went past the credit"
                assert server.peers[0].status().received_unread <= 12_000 // 300

                got: list[bytes] = []
                sizes = []
                async for batch in server.batches(max=16):
                    assert 1 <= len(batch) <= 16
                    sizes.append(len(batch))
                    got += [m.data for m in batch]
                    if len(got) >= len(msgs):
                        break
                await step(sender)
                assert got == msgs
                assert max(sizes) > 1, "messages waiting together come in one batch"
            finally:
                for t in transports:
                    await t.close(flush_timeout=0)

    run(body())


def test_realtime_taken_in_a_batch_frees_its_place_in_the_per_peer_bound() -> None:
    """receive_queue_size=10: 10 REALTIME wait, a batch takes 5, 10 more come: 15 would
    wait, so exactly the 5 oldest are dropped (a batch that forgot what it took
    would drop 10)."""

    async def body() -> None:
        async with Transport.bind(LOCAL, PrivateKey.generate(), receive_queue_size=10) as server:
            transports, (peer,) = await clients(server, 1)
            try:
                stats = server.endpoint.stats
                for data in numbered(10):
                    peer.send_nowait(data, Intent.REALTIME)
                await unread(server, {transports[0].public_key: 10})
                taken = await step(server.receive_many(5))
                assert [SEQ.unpack_from(m.data)[0] for m in taken] == [0, 1, 2, 3, 4]
                assert all(m.intent is Intent.REALTIME for m in taken)
                for data in numbered(20)[10:]:
                    peer.send_nowait(data, Intent.REALTIME)
                await wait_until(lambda: stats.messages_delivered_realtime == 20,
                                 what="20 REALTIME delivered")
                assert stats.messages_dropped_receive_queue == 5
                rest = await step(server.receive_many(100))
                assert [SEQ.unpack_from(m.data)[0] for m in rest] == list(range(10, 20))
            finally:
                for t in transports:
                    await t.close(flush_timeout=0)

    run(body())


def test_batches_mixing_both_intents_keep_both_accounts() -> None:
    """One peer's RELIABLE and REALTIME messages in one queue, taken in shares that
    cut through the mix: the REALTIME bound counts exactly what is left, and the
    RELIABLE credit comes back, so a sender held by 12,000 bytes of credit gets
    all its messages through."""
    config = EndpointConfig(max_reorder_buffer=12_000, max_message_size=10_000)

    async def body() -> None:
        async with Transport.bind(LOCAL, PrivateKey.generate(), config=config,
                                  receive_queue_size=10) as server:
            transports, (peer,) = await clients(server, 1)
            try:
                stats = server.endpoint.stats
                key = transports[0].public_key
                for i in range(10):
                    peer.send_nowait(SEQ.pack(i), Intent.RELIABLE)
                await unread(server, {key: 10})
                for i in range(10):
                    peer.send_nowait(SEQ.pack(100 + i), Intent.REALTIME)
                await unread(server, {key: 20})
                taken = await step(server.receive_many(13))  # R0-R9, T100-T102
                assert [SEQ.unpack(m.data)[0] for m in taken] == [*range(10), 100, 101, 102]
                assert [m.intent for m in taken] == [Intent.RELIABLE] * 10 + [Intent.REALTIME] * 3
                for i in range(6):  # 7 REALTIME wait: 13 > 10, so the 3 oldest go
                    peer.send_nowait(SEQ.pack(200 + i), Intent.REALTIME)
                await wait_until(lambda: stats.messages_delivered_realtime == 16,
                                 what="16 REALTIME delivered")
                assert stats.messages_dropped_receive_queue == 3

                async def sender() -> None:
                    for i in range(10, 130):
                        await peer.send(SEQ.pack(i) + bytes(296), Intent.RELIABLE)
                        peer.send_nowait(SEQ.pack(1000 + i), Intent.REALTIME)

                task = asyncio.create_task(sender())
                reliable: list[int] = list(range(10))
                async for batch in server.batches(max=7):
                    reliable += [SEQ.unpack_from(m.data)[0] for m in batch
                                 if m.intent is Intent.RELIABLE]
                    if len(reliable) == 130:
                        break
                await step(task)
                assert reliable == list(range(130))
            finally:
                for t in transports:
                    await t.close(flush_timeout=0)

    run(body())


def test_batch_api_misuse_and_close_are_clear() -> None:
    async def body() -> None:
        server = await Transport.bind(LOCAL, PrivateKey.generate())
        for bad in (0, -1, 1.5, True, "8", None):
            with pytest.raises(InvalidArgumentError, match="max is the most messages"):
                await server.receive_many(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError, match="max is the most messages"):
                server.batches(max=bad)  # type: ignore[arg-type]  # at once, not when iterated
        for bad_timeout in (-1, "1", True):
            with pytest.raises(InvalidArgumentError, match="timeout"):
                await server.receive_many(4, timeout=bad_timeout)  # type: ignore[arg-type]
        with pytest.raises(ReceiveTimeoutError, match=r"no message within 0\.05 s"):
            await server.receive_many(4, timeout=0.05)

        # A waiting receive_many ends with TransportClosedError, a batches() loop cleanly.
        waiter = asyncio.create_task(server.receive_many(4, timeout=10))
        batches: list[list[Message]] = []

        async def iterate() -> None:
            async for batch in server.batches():
                batches.append(batch)

        loop_task = asyncio.create_task(iterate())
        await asyncio.sleep(0.02)
        await server.close()
        with pytest.raises(TransportClosedError):
            await step(waiter)
        await step(loop_task)
        assert batches == []
        with pytest.raises(TransportClosedError):
            await server.receive_many()

    run(body())


def test_sync_receive_many_and_batches() -> None:
    with sync.Transport.bind(LOCAL, PrivateKey.generate()) as server, \
            sync.Transport.bind(LOCAL, PrivateKey.generate()) as client:
        peer = client.connect(server.local_address, server.public_key, timeout=10)
        peer.send_many(numbered(50))
        got: list[int] = []
        while len(got) < 50:
            batch = server.receive_many(64, timeout=5)
            assert 1 <= len(batch) <= 64
            assert all(isinstance(m, sync.Message) for m in batch)
            assert all(m.peer is batch[0].peer for m in batch)  # one sync Peer per peer
            got += [SEQ.unpack_from(m.data)[0] for m in batch]
        assert got == list(range(50))
        with pytest.raises(ReceiveTimeoutError):
            server.receive_many(8, timeout=0.05)
        with pytest.raises(InvalidArgumentError, match="max is the most messages"):
            server.receive_many(0)
        with pytest.raises(InvalidArgumentError, match="max is the most messages"):
            server.batches(max=-2)

        # for batch in t.batches(): ends when another thread closes the transport.
        reply_peer = server.peers[0]
        reply_peer.send_many([b"one", b"two", b"three"])
        seen: list[bytes] = []

        def read() -> None:
            for batch in client.batches(max=2):
                assert 1 <= len(batch) <= 2
                seen.extend(m.data for m in batch)

        reader = threading.Thread(target=read)
        reader.start()
        deadline = 100
        while len(seen) < 3 and deadline:
            threading.Event().wait(0.02)
            deadline -= 1
        client.close()
        reader.join(10)
        assert not reader.is_alive()
        assert seen == [b"one", b"two", b"three"]
