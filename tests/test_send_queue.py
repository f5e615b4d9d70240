"""The sender's byte bound: ``EndpointConfig.max_send_queue_bytes`` (issue 10).

Large messages (up to max_message_size, 64 MiB at most) made the send queue's
count bound (``max_send_queue``, 4096 messages) no bound on memory: 4096 queued
1 MiB messages are 4 GiB. The queue now also holds at most
``max_send_queue_bytes`` bytes of messages (both intents; a large one counts until
its last fragment has left): beyond it ``send_nowait`` of RELIABLE raises
SendQueueFullError saying what to do, REALTIME is dropped and counted, ``await
send`` and ``send_many`` wait for room, broadcasts skip the full session. The core
first (fake clock), then the same through real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aiohelp import run, step, wait_until
from corelink import connected_pair
from intentra import (
    ConfigError,
    EndpointConfig,
    Intent,
    Peer,
    PrivateKey,
    SendQueueFullError,
    Transport,
)
from intentra.core.endpoint import Endpoint

RELIABLE, REALTIME = Intent.RELIABLE, Intent.REALTIME
BIG = 100_000
SENDER = EndpointConfig(max_message_size=BIG, max_send_queue_bytes=3 * BIG,
                        max_reliable_in_flight=4096)
"""Three large messages fill the queue; a window wider than them, so that it is the
queue's bytes, not the window, that stop a sender."""
RECEIVER = EndpointConfig(max_message_size=BIG, max_reorder_buffer=8 << 20,
                          rate_limit_pps=1e5, rate_limit_burst=1e4)


def queued_bytes(ep: Endpoint, conn_id: int) -> int:
    s = ep.sessions[conn_id]
    return s.rel_bytes + s.rt_bytes


def test_the_default_and_the_validation() -> None:
    assert EndpointConfig().max_send_queue_bytes == 4 << 20
    EndpointConfig(max_message_size=BIG, max_send_queue_bytes=BIG)  # the least allowed
    with pytest.raises(ConfigError, match="max_send_queue_bytes must be at least "
                                          "max_message_size"):
        EndpointConfig(max_message_size=BIG, max_send_queue_bytes=BIG - 1)
    with pytest.raises(ConfigError, match="max_send_queue_bytes"):
        EndpointConfig(max_message_size=8 << 20, max_reorder_buffer=9 << 20)


def test_reliable_beyond_the_byte_bound_raises_changes_nothing_and_all_arrive_later() -> None:
    link, a, b, cid, _ = connected_pair(seed=3, config=SENDER, config_b=RECEIVER)
    ep = a.endpoint
    msgs = [bytes([i]) * BIG for i in range(3)]
    for m in msgs:
        assert ep.send(cid, m, RELIABLE, 0, link.now)
    assert queued_bytes(ep, cid) == 3 * BIG and ep.queue_room(cid) == 0
    assert ep.reliable_capacity(cid) > 0, "the window has room: the bytes are the limit"
    assert not ep.can_send_reliable(cid, 1)
    session = ep.sessions[cid]
    before = (session.queued, session.queued_reliable, session.rel_bytes, session.rel_extra)
    with pytest.raises(SendQueueFullError) as info:
        ep.send(cid, b"x" * BIG, RELIABLE, 0, link.now)
    text = str(info.value)
    assert f"{3 * BIG} of {3 * BIG} bytes" in text
    assert "await send" in text and "EndpointConfig.max_send_queue_bytes" in text
    assert (session.queued, session.queued_reliable, session.rel_bytes,
            session.rel_extra) == before, "the refused message changed nothing"
    # A small message does not fit either: the bound is on bytes, whatever the count.
    with pytest.raises(SendQueueFullError):
        ep.send(cid, b"small", RELIABLE, 0, link.now)

    # The messages leave; a large one counts until its last fragment has a position.
    seen = set()
    while queued_bytes(ep, cid):
        link.advance(0.001)
        seen.add(queued_bytes(ep, cid))
        if session.frag_lane is not None:  # a message is part sent: it still counts whole
            assert session.rel_bytes % BIG == 0 and session.rel_bytes > 0
    assert 3 * BIG in seen and seen <= {3 * BIG, 2 * BIG, BIG, 0}, seen
    link.advance(2.0, lambda: len(b.payloads()) == 3)
    assert b.payloads(RELIABLE) == msgs
    assert queued_bytes(ep, cid) == 0 and ep.queue_room(cid) == 3 * BIG
    assert ep.can_send_reliable(cid, BIG)
    assert ep.send(cid, b"after", RELIABLE, 0, link.now)
    link.advance(1.0, lambda: len(b.payloads()) == 4)
    assert b.payloads(RELIABLE) == [*msgs, b"after"]


def test_realtime_beyond_the_byte_bound_is_dropped_and_counted_late_ones_go_first() -> None:
    link, a, _, cid, _ = connected_pair(seed=4, config=SENDER, config_b=RECEIVER)
    ep = a.endpoint
    session = ep.sessions[cid]
    assert ep.send(cid, b"r" * BIG, RELIABLE, 0, link.now)
    assert ep.send(cid, b"t" * BIG, REALTIME, 0, link.now)
    assert ep.send(cid, b"u" * (BIG - 10), REALTIME, 0, link.now)
    full = ep.stats.messages_dropped_queue_full
    assert not ep.send(cid, b"v" * 20, REALTIME, 0, link.now)  # 20 bytes over
    assert ep.stats.messages_dropped_queue_full == full + 1
    assert session.dropped_queue_full == 1
    # Once the queued REALTIME messages are late they make room (deadline drops),
    # as with a queue full in messages.
    late = ep.stats.messages_dropped_deadline
    later = link.now + SENDER.realtime_deadline + 0.001
    assert ep.send(cid, b"w" * BIG, REALTIME, 0, later)
    assert ep.stats.messages_dropped_deadline == late + 2
    assert queued_bytes(ep, cid) == BIG + 2 + BIG


def test_broadcast_skips_a_session_whose_queue_is_full_in_bytes() -> None:
    link, a, b, cid, _ = connected_pair(seed=5, config=SENDER, config_b=RECEIVER)
    ep = a.endpoint
    for _ in range(3):
        ep.send(cid, b"q" * BIG, RELIABLE, 0, link.now)
    full = ep.stats.messages_dropped_queue_full
    assert ep.broadcast(b"all", RELIABLE, 0, link.now) == 0
    assert ep.stats.messages_dropped_queue_full == full + 1
    link.advance(2.0, lambda: len(b.payloads()) == 3)
    assert ep.broadcast(b"all", RELIABLE, 0, link.now) == 1


def test_a_reconnect_carries_over_beyond_the_bound_rather_than_lose_a_message() -> None:
    """``bounded=False`` (what a reconnecting Peer resends) is queued whatever the bytes."""
    link, a, _, cid, _ = connected_pair(seed=6, config=SENDER, config_b=RECEIVER)
    ep = a.endpoint
    for _ in range(3):
        ep.send(cid, b"q" * BIG, RELIABLE, 0, link.now)
    assert ep.send(cid, b"carried" * 1000, RELIABLE, 0, link.now, bounded=False)
    assert queued_bytes(ep, cid) == 3 * BIG + 7000


# ------------------------------------------------------------------ real sockets

MIB = 1 << 20
T_SENDER = EndpointConfig(max_send_queue_bytes=MIB, max_reliable_in_flight=4096)
"""One largest message (1 MiB) fills the queue; the window is not what stops it."""
T_RECEIVER = EndpointConfig(max_reorder_buffer=8 * MIB, rate_limit_pps=1e5,
                            rate_limit_burst=1e4)


async def connected(stack: contextlib.AsyncExitStack) -> tuple[Transport, Transport, Peer]:
    """A server and a client on 127.0.0.1 with a session; (server, client, client's Peer)."""
    server = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=T_RECEIVER)
    stack.push_async_callback(server.close)
    client = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=T_SENDER)
    stack.push_async_callback(client.close)
    peer = await step(client.connect(server.local_address, server.public_key))
    await wait_until(lambda: bool(server.peers), what="the server's session")
    await asyncio.sleep(0.05)  # the server's first ACK: its credit
    return server, client, peer


async def receive_n(t: Transport, n: int) -> list[bytes]:
    return [(await t.receive()).data for _ in range(n)]


def test_transport_send_nowait_raises_await_send_waits_send_many_never_raises() -> None:
    async def body() -> None:
        async with contextlib.AsyncExitStack() as stack:
            server, client, peer = await connected(stack)
            ep = client._endpoint
            big = [bytes([i]) * MIB for i in range(6)]
            assert peer.send_nowait(big[0], RELIABLE)
            with pytest.raises(SendQueueFullError, match="max_send_queue_bytes"):
                peer.send_nowait(b"one byte more", RELIABLE)
            # await send waits for the bytes, although the window has room
            waiting = asyncio.create_task(peer.send(big[1], RELIABLE))
            await asyncio.sleep(0)
            assert not waiting.done()
            assert ep.reliable_capacity(peer.conn_id) > 0
            await step(waiting)
            # send_many of more than the queue takes waits as send does, never raises
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    s = ep.sessions.get(peer.conn_id)
                    if s is not None:
                        peak = max(peak, s.rel_bytes + s.rt_bytes)
                    await asyncio.sleep(0)

            watcher = asyncio.create_task(watch())
            await step(peer.send_many(big[2:], RELIABLE), 20.0)
            # a broadcast waits too (one peer here)
            assert await step(client.broadcast(b"tail", RELIABLE), 20.0) == 1
            got = await step(receive_n(server, 7), 20.0)
            watcher.cancel()
            assert got == [*big, b"tail"], "exactly once, in order"
            assert peak <= MIB
    run(body(), 60.0)
