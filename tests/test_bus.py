"""intentra.bus without a cluster: the bus message codec, the Sequencer under a fake
clock, the configuration's checks and the CLI's refusals (one line, exit 2)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentra.bus import OVERHEAD, BusConfig, BusError, Sequencer, pack, unpack
from intentra.testing.nats import free_tcp_ports
from test_cli import assert_usage_error, intentra, keygen

HUB = bytes(range(8))
KEY = bytes(range(32, 64))


def sequencer(**overrides: float) -> Sequencer:
    values = {"hub_timeout": 3.0, "gap_timeout": 30.0, "max_held": 100,
              "forget_after": 180.0, **overrides}
    return Sequencer(hub_timeout=values["hub_timeout"], gap_timeout=values["gap_timeout"],
                     max_held=int(values["max_held"]), forget_after=values["forget_after"])


# ------------------------------------------------------------------ codec

@given(intent=st.sampled_from([0, 1]), priority=st.integers(0, 7), lane=st.integers(0, 255),
       seq=st.integers(0, 2**64 - 1), stamp=st.integers(0, 2**64 - 1),
       data=st.binary(min_size=1, max_size=300))
def test_bus_messages_round_trip(intent: int, priority: int, lane: int, seq: int, stamp: int,
                                 data: bytes) -> None:
    payload = pack(intent, priority, lane, HUB, seq, stamp, KEY, data)
    assert len(payload) == OVERHEAD + len(data) and payload[0] == 0xB1
    m = unpack(payload)
    assert m is not None
    assert (m.intent, m.priority, m.lane, m.hub, m.seq, m.stamp_us, m.origin, m.data) == \
        (intent, priority, lane, HUB, seq, stamp, KEY, data)


@given(st.binary(max_size=200))
def test_arbitrary_payloads_are_refused_never_raised(payload: bytes) -> None:
    m = unpack(payload)
    if m is not None:  # only a well-formed one passes
        assert payload[0] == 0xB1 and m.intent in (0, 1) and m.priority <= 7


def test_malformed_bus_messages_are_refused() -> None:
    good = pack(0, 3, 0, HUB, 1, 0, KEY, b"x")
    assert unpack(good) is not None
    assert unpack(good[:OVERHEAD]) is None, "an empty message"
    assert unpack(b"\xb2" + good[1:]) is None, "another version"
    assert unpack(good[:1] + b"\x02" + good[2:]) is None, "no such intent"
    assert unpack(good[:2] + b"\x08" + good[3:]) is None, "priority above 7"


# ------------------------------------------------------------------ sequencer

@settings(max_examples=200)
@given(n=st.integers(1, 60), seed=st.integers(0, 2**32 - 1),
       dups=st.lists(st.integers(1, 60), max_size=30))
def test_sequencer_delivers_each_seq_once_in_order(n: int, seed: int, dups: list[int]) -> None:
    """Any arrival order with any duplicates, the first seq first: 1..n once, in order."""
    arrivals = list(range(2, n + 1)) + [d for d in dups if d <= n]
    random.Random(seed).shuffle(arrivals)
    seq = sequencer(max_held=1000)
    out: list[int] = []
    for s in [1, *arrivals]:
        out += seq.offer(HUB, s, s, now=0.0)
    assert out == list(range(1, n + 1))
    assert seq.duplicates == len(arrivals) - (n - 1)
    assert seq.gaps == 0


def test_sequencer_keeps_origins_apart() -> None:
    seq = sequencer()
    other = bytes(8)
    assert seq.offer(HUB, 5, "a5", 0.0) == ["a5"]
    assert seq.offer(other, 1, "b1", 0.0) == ["b1"]
    assert seq.offer(HUB, 7, "a7", 0.0) == []
    assert seq.offer(other, 2, "b2", 0.0) == ["b2"], "a gap of one hub holds no other"
    assert seq.offer(HUB, 6, "a6", 0.0) == ["a6", "a7"]


def test_a_gap_of_a_live_hub_is_waited_for() -> None:
    seq = sequencer()
    seq.offer(HUB, 1, 1, 0.0)
    assert seq.offer(HUB, 3, 3, 0.0) == []
    for t in (1.0, 5.0, 29.0):
        seq.heard(HUB, t)  # heartbeats: alive, its resend will come
        assert seq.expire(t) == []
    assert seq.offer(HUB, 2, 2, 29.5) == [2, 3]
    assert seq.gaps == 0


def test_a_gap_of_a_silent_hub_is_skipped_and_counted() -> None:
    seq = sequencer()
    seq.heard(HUB, 0.0)
    seq.offer(HUB, 1, 1, 0.0)
    assert seq.offer(HUB, 4, 4, 0.5) == []
    assert seq.offer(HUB, 5, 5, 0.5) == []
    assert seq.expire(3.0) == [], "silent for 3 s: not yet past hub_timeout"
    assert seq.expire(3.6) == [4, 5]
    assert seq.gaps == 2
    assert seq.offer(HUB, 2, 2, 4.0) == [], "too late: dropped as already passed"


def test_gaps_are_skipped_after_gap_timeout_or_max_held() -> None:
    seq = sequencer(gap_timeout=10.0, max_held=3)
    seq.offer(HUB, 1, 1, 0.0)
    seq.offer(HUB, 3, 3, 0.0)
    seq.heard(HUB, 10.5)
    assert seq.expire(10.5) == [3], "alive, but past gap_timeout"
    seq.offer(HUB, 5, 5, 11.0)
    seq.offer(HUB, 6, 6, 11.0)
    seq.offer(HUB, 7, 7, 11.0)
    assert seq.offer(HUB, 8, 8, 11.0) == [5, 6, 7, 8], "more than max_held wait"
    assert seq.gaps == 2


def test_a_hub_known_by_heartbeat_starts_at_its_first_message() -> None:
    seq = sequencer(forget_after=100.0)
    seq.heard(HUB, 0.0)
    assert seq.alive(1.0) == 1 and seq.alive(3.5) == 0
    assert seq.offer(HUB, 42, "x", 1.0) == ["x"]
    seq.expire(200.0)
    assert seq.origins == {}, "a hub silent beyond forget_after is forgotten"


# ------------------------------------------------------------------ configuration

@pytest.mark.parametrize(("overrides", "message"), [
    ({"subject": "a.*"}, "no wildcards"),
    ({"subject": ""}, "no wildcards"),
    ({"storage": "disk"}, "'file' or 'memory'"),
    ({"replicas": 0}, "positive integer"),
    ({"ack_timeout": 0}, "seconds > 0"),
    ({"duplicate_window": 500.0}, "must not exceed max_age"),
])
def test_bad_bus_settings_say_what_to_do(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(BusError, match=message):
        BusConfig(**overrides)  # type: ignore[arg-type]


def test_the_stream_is_named_after_the_subject() -> None:
    assert BusConfig().stream == "INTENTRA"
    assert BusConfig(subject="plant.robots-2").stream == "PLANT_ROBOTS-2"


# ------------------------------------------------------------------ CLI refusals

@pytest.mark.parametrize(("extra", "message"), [
    (["--echo", "--bus", "nats://127.0.0.1:4222"], "cannot be used with --echo or --sink"),
    (["--bus", "http://127.0.0.1:4222"], "bad NATS server URL"),
    (["--bus", "nats://127.0.0.1:4222", "--bus-subject", "a.>"], "no wildcards"),
    (["--bus-subject", "fleet"], "--bus-subject needs --bus"),
    (["--workers", "2"], "--workers needs --echo, --sink or --bus"),
    (["--conn-id-class", "3/3"], "expected I/N with 0 <= I < N <= 256"),
])
def test_serve_refuses_bad_bus_arguments(tmp_path: Path, extra: list[str], message: str) -> None:
    key = tmp_path / "hub.key"
    keygen(key)
    result = intentra("serve", "--bind", "127.0.0.1:0", "--key", str(key), *extra, cwd=tmp_path)
    assert message in assert_usage_error(result)


def test_serve_with_no_nats_server_fails_at_once(tmp_path: Path) -> None:
    key = tmp_path / "hub.key"
    keygen(key)
    port = free_tcp_ports(1)[0]
    result = intentra("serve", "--bind", "127.0.0.1:0", "--key", str(key), "--bus",
                      f"nats://127.0.0.1:{port}", cwd=tmp_path, timeout=20)
    assert assert_usage_error(result) == (
        f"intentra: error: cannot reach any NATS server (nats://127.0.0.1:{port}: Connection "
        "refused); is a nats-server running there?")


def test_without_nats_py_the_bus_says_which_extra_to_install(tmp_path: Path) -> None:
    key = tmp_path / "hub.key"
    keygen(key)
    # A real interpreter in which nats-py cannot be imported (as without the extra).
    code = ("import sys; sys.modules['nats'] = None; from intentra.cli import main; "
            f"sys.exit(main(['serve', '--bind', '127.0.0.1:0', '--key', {str(key)!r}, "
            "'--bus', 'nats://127.0.0.1:4222']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert "intentra: error: intentra.bus needs nats-py: pip install 'intentra[bus]'" in \
        result.stderr.splitlines()


# Alone ("serial"): under the parallel pass the --workers 2 hub's connects hung twice,
# most likely another test's socket sharing the port the workers re-bind with
# SO_REUSEPORT (a race of `--bind :0 --workers N`, not yet fixed).
@pytest.mark.serial
@pytest.mark.parametrize("workers", [1, 2])
def test_conn_id_class_names_the_hub_for_a_balancer(tmp_path: Path, workers: int) -> None:
    """``--conn-id-class 1/3``: every conn_id the hub hands out says "hub 1 of 3", so a
    balancer can route by conn_id (with workers, ``(c % 3W) // W`` is the hub and
    ``c % W`` still the worker)."""
    import asyncio  # noqa: PLC0415

    from intentra import PrivateKey, PublicKey, Transport  # noqa: PLC0415
    from test_cli import Server  # noqa: PLC0415

    key = tmp_path / "hub.key"
    public = PublicKey.from_base64(keygen(key))
    server = Server(["--bind", "127.0.0.1:0", "--key", str(key), "--echo",
                     "--conn-id-class", "1/3", "--workers", str(workers)], tmp_path)
    try:
        port = int(server.expect(r"^intentra serving on 127\.0\.0\.1:(\d+)$").group(1))

        async def ids() -> list[int]:
            found = []
            for _ in range(4):
                async with Transport.bind("127.0.0.1:0", PrivateKey.generate()) as t:
                    peer = await t.connect(("127.0.0.1", port), public)
                    found.append(t.endpoint.sessions[peer.conn_id].remote_id)
            return found

        # Bounded: a connect that never completes fails the test instead of hanging it
        # (one fresh-clone run under the parallel pass hung here once, cause not found).
        for conn_id in asyncio.run(asyncio.wait_for(ids(), 60)):
            assert (conn_id % (3 * workers)) // workers == 1, hex(conn_id)
    finally:
        server.kill()


def test_a_bridge_publishes_only_once_started() -> None:
    import asyncio  # noqa: PLC0415

    from intentra import Intent, PrivateKey, Transport  # noqa: PLC0415
    from intentra.aio.peer import Message  # noqa: PLC0415
    from intentra.bus import Bridge  # noqa: PLC0415

    async def body() -> None:
        async with Transport.bind("127.0.0.1:0", PrivateKey.generate()) as hub, \
                Transport.bind("127.0.0.1:0", PrivateKey.generate()) as client:
            peer = await client.connect(hub.local_address, hub.public_key)
            await peer.send(b"x", Intent.RELIABLE)
            msg: Message = await hub.receive(timeout=5)
            bridge = Bridge(hub, "nats://127.0.0.1:4222")
            with pytest.raises(BusError, match="start the Bridge before publishing"):
                bridge.publish(msg)
            assert await bridge.close() == 0, "closing a bridge never started is a no-op"

    asyncio.run(body())
