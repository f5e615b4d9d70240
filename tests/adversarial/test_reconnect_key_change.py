"""Adversarial: a reconnecting Peer meets a responder whose key changed (issue 9 items 2c, 7).

Over real sockets on 127.0.0.1. A Peer made with ``reconnect=True`` and no pinned
key used to accept whatever key answered its reconnect: it reported
``reconnected`` but kept a dead conn_id (its backlog lost, ``send()`` raising
PeerClosedError) while a new Peer the application never received appeared in
``peers``. With a pinned key, one wrong-key answer ended the Peer for good.

Now an unpinned reconnecting Peer pins the key of its first session; a changed
key is an AuthenticationError reported as a ``rejected`` PeerEvent, and the Peer
keeps trying until the right key answers again (or it is closed).
"""

from __future__ import annotations

import asyncio

import pytest

from aiohelp import run, step
from intentra import CloseReason, EndpointConfig, Intent, PeerEvent, PrivateKey, Transport

# Short timers; a refused key fails the handshake at its timeout (1 s here).
FAST = EndpointConfig(keepalive_interval=0.2, max_rto=0.5, idle_timeout=10.0,
                      handshake_timeout=1.0)


async def next_kind(t: Transport, kind: str, timeout: float = 10.0) -> PeerEvent:
    while True:
        event = await step(t.peer_event(), timeout)
        if event.kind == kind:
            return event
        assert event.kind != "closed", f"the Peer ended: {event}"


@pytest.mark.parametrize("pinned", [False, True])
def test_reconnecting_peer_refuses_a_changed_key_and_keeps_trying(pinned: bool) -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        server = await Transport.bind("127.0.0.1:0", server_key, config=FAST)
        port = server.local_address[1]
        client = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=FAST)
        impostor: Transport | None = None
        try:
            peer = await step(client.connect(
                server.local_address, server_key.public_key if pinned else None,
                reconnect=True))
            await step(peer.send(b"first", Intent.RELIABLE))
            assert (await step(server.receive())).data == b"first"
            while client.unacked_reliable(peer):  # acknowledged, so not resent later
                await asyncio.sleep(0.005)

            # The responder goes away; another key answers on its port.
            await server.close()
            await next_kind(client, "disconnected")
            impostor = await Transport.bind(f"127.0.0.1:{port}", PrivateKey.generate(),
                                            config=FAST)
            peer.send_nowait(b"backlog", Intent.RELIABLE)
            rejected = await next_kind(client, "rejected")
            assert rejected.peer is peer
            assert not peer.closed and not peer.connected
            assert client.peers == [] or client.peers == [peer]
            assert impostor.receive_nowait() is None
            await impostor.close()
            impostor = None

            # The genuine responder comes back: the same Peer resumes, backlog first.
            server = await Transport.bind(f"127.0.0.1:{port}", server_key, config=FAST)
            back = await next_kind(client, "reconnected", 15.0)
            assert back.peer is peer and peer.connected and not peer.closed
            assert client.peers == [peer]
            assert peer.public_key == server_key.public_key
            await step(peer.send(b"after", Intent.RELIABLE))
            got = [(await step(server.receive())).data for _ in range(2)]
            assert got == [b"backlog", b"after"]
        finally:
            if impostor is not None:
                await impostor.close()
            await client.close()
            await server.close()
    run(body(), 40.0)


def test_a_closed_reconnecting_peer_reports_closed_not_rejected() -> None:
    async def body() -> None:
        server_key = PrivateKey.generate()
        server = await Transport.bind("127.0.0.1:0", server_key, config=FAST)
        port = server.local_address[1]
        client = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=FAST)
        impostor: Transport | None = None
        try:
            peer = await step(client.connect(server.local_address, reconnect=True))
            await server.close()
            await next_kind(client, "disconnected")
            impostor = await Transport.bind(f"127.0.0.1:{port}", PrivateKey.generate(),
                                            config=FAST)
            await next_kind(client, "rejected")
            await step(peer.close())
            assert peer.closed and peer.close_reason is CloseReason.NORMAL
            await asyncio.sleep(0.1)
            assert client.peers == []
        finally:
            if impostor is not None:
                await impostor.close()
            await client.close()
    run(body(), 30.0)
