"""Origin envelopes through a real hub: ``intentra serve --envelope`` and intentra.hub.relay.

Real sockets on 127.0.0.1: the hub is a real ``intentra serve`` process, or a
Transport running :func:`intentra.hub.relay` in this process.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from aiohelp import run, step
from intentra import EndpointConfig, Intent, IntentraError, PrivateKey, PublicKey, Transport
from intentra.envelope import MAGIC, OVERHEAD, Envelope, EnvelopeError, is_envelope, unwrap, wrap
from intentra.hub import RelayStats, relay
from test_cli import Server, keygen


def test_wrap_and_unwrap_follow_the_documented_format() -> None:
    origin = PrivateKey.generate().public_key
    wrapped = wrap(origin, b"pose 1 2")
    assert wrapped == bytes([0xE1]) + origin.to_bytes() + b"pose 1 2"
    assert MAGIC == 0xE1 and OVERHEAD == 33 and len(wrapped) == 33 + 8
    assert is_envelope(wrapped) and not is_envelope(b"pose 1 2")
    assert unwrap(wrapped) == Envelope(origin, b"pose 1 2")
    assert unwrap(bytearray(wrapped)).origin == origin


@pytest.mark.parametrize(("data", "match"), [
    (b"", "at least 34 bytes"),
    (bytes([0xE1]) + bytes(32), "at least 34 bytes"),
    (b"\x00" + bytes(40), "first byte 0x00"),
    ("text", "data is bytes"),
])
def test_unwrap_refuses_what_is_not_an_envelope(data: bytes, match: str) -> None:
    with pytest.raises(EnvelopeError, match=match) as info:
        unwrap(data)
    assert isinstance(info.value, IntentraError) and isinstance(info.value, ValueError)


def test_wrap_refuses_a_bad_origin() -> None:
    with pytest.raises(EnvelopeError, match="PublicKey"):
        wrap(b"k" * 32, b"x")  # type: ignore[arg-type]


def test_serve_envelope_tells_receivers_who_sent_each_message(tmp_path: Path) -> None:
    hub_key = tmp_path / "hub.key"
    keygen(hub_key)
    hub = Server(["--bind", "127.0.0.1:0", "--key", str(hub_key), "--envelope"], tmp_path)
    try:
        hub.started()
        hub.expect(r"^relayed messages carry an origin envelope")
        hub_pub = PublicKey.from_base64(hub.public_key)

        async def scenario() -> None:
            async with Transport.bind("127.0.0.1:0", PrivateKey.generate()) as a, \
                    Transport.bind("127.0.0.1:0", PrivateKey.generate()) as b, \
                    Transport.bind("127.0.0.1:0", PrivateKey.generate()) as c:
                links = [await step(t.connect(hub.address, hub_pub)) for t in (a, b, c)]
                # Make sure the hub has all three sessions: C hears from A.
                await links[0].send(b"a here")
                assert unwrap((await step(c.receive())).data).origin == a.public_key
                assert unwrap((await step(b.receive())).data).origin == a.public_key

                await links[1].send(b"state from b", Intent.RELIABLE, 4)
                links[2].send_nowait(b"tick from c", Intent.REALTIME, 6)
                got_a = [await step(a.receive()) for _ in range(2)]
                seen = {(unwrap(m.data), m.intent, m.priority) for m in got_a}
                assert seen == {(Envelope(b.public_key, b"state from b"), Intent.RELIABLE, 4),
                                (Envelope(c.public_key, b"tick from c"), Intent.REALTIME, 6)}
                assert all(m.peer.public_key == hub_pub for m in got_a)  # the hub, as before

        run(scenario())
        assert hub.interrupt() == 0
        assert any(re.match(r"closed \d+ session\(s\); relay drops on full queues: 0; too large "
                            r"for an envelope: 0$", line) for line in hub.stdout_lines), \
            hub.stdout_lines
    finally:
        hub.kill()


def test_relay_helper_wraps_echoes_and_counts_what_no_longer_fits() -> None:
    async def scenario() -> None:
        config = EndpointConfig()
        limit = config.max_message_size
        async with Transport.bind("127.0.0.1:0", PrivateKey.generate()) as hub, \
                Transport.bind("127.0.0.1:0", PrivateKey.generate()) as a, \
                Transport.bind("127.0.0.1:0", PrivateKey.generate()) as b:
            stats = RelayStats()
            task = asyncio.create_task(relay(hub, envelope=True, stats=stats))
            la = await step(a.connect(hub.local_address, hub.public_key))
            lb = await step(b.connect(hub.local_address, hub.public_key))
            await la.send(b"hello b")
            assert unwrap((await step(b.receive())).data) == Envelope(a.public_key, b"hello b")
            # The largest message that still fits once wrapped, then one byte more.
            await lb.send(bytes(limit - OVERHEAD))
            assert len((await step(a.receive())).data) == limit
            await lb.send(bytes(limit - OVERHEAD + 1))
            await lb.send(b"after")
            assert unwrap((await step(a.receive())).data).data == b"after"
            assert stats == RelayStats(dropped_queue_full=0, dropped_too_large=1)
            await hub.close()
            assert await step(task) is stats  # ends when the transport closes

        async with Transport.bind("127.0.0.1:0", PrivateKey.generate()) as hub, \
                Transport.bind("127.0.0.1:0", PrivateKey.generate()) as a:
            task = asyncio.create_task(relay(hub, echo=True, envelope=True))
            la = await step(a.connect(hub.local_address, hub.public_key))
            await la.send(b"me")
            assert unwrap((await step(a.receive())).data) == Envelope(a.public_key, b"me")
            task.cancel()

    run(scenario())
