"""The native datapath against the pure-Python reference (docs/native.md).

Differential tests: two responder endpoints, twins made from the same seeds, one
on the pure-Python core (``native=False``) and one on ``intentra._native``, get
the same inputs in lock step: the same datagrams at the same times, valid,
forged, replayed, reordered, malformed, from other addresses, across key updates
and the 2^32 wrap of the packet number, with the same API calls and timers in
between. After every input both must have sent the same datagrams, reported the
same events, counted the same counters and hold the same state (every session
field an attacker could try to move, as the adversarial suite's snapshot takes
it). The initiator talks to the Python twin; the native twin's output is only
compared.

Skipped (with the reason) where the extension was not built.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packets import snapshot

import intentra.native
from corelink import seeded_key, seeded_rng
from intentra.config import EndpointConfig
from intentra.constants import HEADER_LEN, TAG_LEN, Intent, PacketType
from intentra.core.aead import SendKeys
from intentra.core.endpoint import Endpoint
from intentra.core.wire import pack_header
from intentra.events import Address, Event

pytestmark = pytest.mark.skipif(not intentra.native.available(),
                                reason="intentra._native is not built")

A_ADDR: Address = ("10.0.0.1", 4001)
A_ROAMED: Address = ("10.0.0.7", 4007)
B_ADDR: Address = ("10.0.0.2", 4002)
ATTACKER: Address = ("203.0.113.9", 4444)

CONFIGS = {
    "default": EndpointConfig(),
    # key updates every 24 packets, a short minimum interval, and a catch-up window
    "rekeying": EndpointConfig(key_update_packets=24, key_update_min_interval=0.05,
                               key_update_catch_up=2),
    # packet numbers cross 2^32 within the run
    "wrap": EndpointConfig(initial_pn=(1 << 32) - 40, key_update_packets=30,
                           key_update_min_interval=0.05),
    # a small bucket: the rate limits of step 3 and the message charge are hit
    "tight": EndpointConfig(rate_limit_pps=200.0, rate_limit_burst=12.0, message_cost=1.0,
                            failed_open_pps=100.0, failed_open_burst=4.0, replay_window=128),
}


def endpoint(name: str, config: EndpointConfig, native: bool) -> Endpoint:
    return Endpoint(seeded_key(name).to_bytes(), seeded_rng(name), config, native=native,
                    release_on_take=False)


@dataclass
class Twins:
    """The Python and the native responder, driven in lock step, and their initiator."""

    config: EndpointConfig
    now: float = 0.0
    a: Endpoint = field(init=False)
    py: Endpoint = field(init=False)
    nat: Endpoint = field(init=False)
    cid_a: int = 0
    wire: list[tuple[bytes, Address]] = field(default_factory=list)  # a's datagrams so far
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.a = endpoint("a", self.config, False)
        self.py = endpoint("b", self.config, False)
        self.nat = endpoint("b", self.config, True)
        assert not self.py.native and self.nat.native

    # ---------------------------------------------------------- lock step

    def both(self, act: Callable[[Endpoint], object]) -> None:
        """Apply ``act`` to both twins and require the same outcome in every respect."""
        act(self.py)
        act(self.nat)
        self.compare()

    def compare(self) -> None:
        py, nat = self.py, self.nat
        assert py.stats.as_dict() == nat.stats.as_dict()
        assert {s.conn_id for s in py._dirty} == {s.conn_id for s in nat._dirty}
        assert {s.conn_id for s in py._flush} == {s.conn_id for s in nat._flush}
        out_py, out_nat = py.datagrams_to_send(self.now), nat.datagrams_to_send(self.now)
        assert out_py == out_nat
        events_py, events_nat = py.take_events(), nat.take_events()
        assert events_py == events_nat
        assert snapshot(py) == snapshot(nat)
        assert [type(s.recv_keys._cur) for s in nat.sessions.values()  # the C AEAD in use
                if s.recv_keys is not None] == [intentra.native.module().AESGCM] * sum(
            1 for s in nat.sessions.values() if s.recv_keys is not None)
        self.events.extend(events_py)
        for data, _ in out_py:
            self.a.receive_datagram(data, B_ADDR, self.now)
        self.pump_a()

    def pump_a(self) -> None:
        out = self.a.datagrams_to_send(self.now)
        self.a.take_events()
        self.wire.extend(out)

    def deliver(self, data: bytes, addr: Address = A_ADDR) -> None:
        self.both(lambda ep: ep.receive_datagram(data, addr, self.now))

    def deliver_batch(self, batch: list[tuple[bytes, Address]]) -> None:
        self.both(lambda ep: ep.receive_datagrams(list(batch), self.now))

    def tick(self, dt: float) -> None:
        self.now += dt
        self.a.handle_timer(self.now)
        self.pump_a()
        self.both(lambda ep: ep.handle_timer(self.now))

    def establish(self) -> None:
        old, self.wire = self.wire, []
        self.cid_a = self.a.connect(B_ADDR, self.now)
        self.pump_a()
        for _ in range(8):
            self.now += 0.005
            batch, self.wire = self.wire, []
            if not batch:
                break
            self.deliver_batch([(d, A_ADDR) for d, _ in batch])
        assert any(s.established for s in self.py.sessions.values())
        self.wire = old  # the earlier sessions' datagrams, for replays


def twins(config: str) -> Twins:
    t = Twins(CONFIGS[config])
    t.establish()
    return t


# ------------------------------------------------------------- the inputs

def mutate(data: bytes, how: int, where: int) -> bytes:
    """Corruptions of a genuine datagram: forged bodies, bad headers, the X bit."""
    b = bytearray(data)
    if how == 0:                                   # a forged body (tag fails)
        b[HEADER_LEN + where % max(len(b) - HEADER_LEN, 1)] ^= 0x01
    elif how == 1:                                 # a header bit: AAD or a rule of section 3
        b[where % HEADER_LEN] ^= 1 << (where % 8)
    elif how == 2:                                 # truncated
        del b[max(len(b) - 1 - where % 8, 0):]
    elif how == 3:                                 # bit 2 of byte 1 (issue 10's X)
        b[1] |= 0x04
    elif how == 4:                                 # the other key phase
        b[1] ^= 0x01
    elif how == 5:                                 # random bytes of the same length
        b = bytearray(random.Random(where).randbytes(len(b)))
    elif how == 6:                                 # a shifted seq (another pn)
        b[11] ^= (where % 7) + 1
    return bytes(b)


SEND = st.tuples(st.just("send"), st.sampled_from([Intent.REALTIME, Intent.RELIABLE]),
                 st.lists(st.integers(1, 300), min_size=1, max_size=12), st.integers(0, 7))
# large messages (fragments) and lanes travel in extended DATA (X = 1), which the
# native path hands to the Python core whole
SEND_EXTENDED = st.tuples(st.just("send"), st.sampled_from([Intent.REALTIME, Intent.RELIABLE]),
                          st.lists(st.integers(1, 5000), min_size=1, max_size=3),
                          st.integers(0, 7), st.integers(0, 3))
DELIVER = st.tuples(st.just("deliver"), st.integers(0, 10_000), st.sampled_from(
    [A_ADDR, A_ADDR, A_ADDR, A_ROAMED, ATTACKER]))
ACTIONS = st.one_of(
    SEND, SEND, SEND_EXTENDED, DELIVER, DELIVER, DELIVER,
    st.tuples(st.just("batch"), st.integers(0, 10_000), st.integers(1, 12), st.booleans(),
              st.sampled_from([A_ADDR, A_ADDR, A_ROAMED]), st.integers(0, 6)),
    st.tuples(st.just("a_close")),
    st.tuples(st.just("a_reconnect")),
    st.tuples(st.just("mutate"), st.integers(0, 10_000), st.integers(0, 6),
              st.integers(0, 4096), st.sampled_from([A_ADDR, ATTACKER])),
    st.tuples(st.just("garbage"), st.binary(min_size=0, max_size=80), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("tick"), st.sampled_from([0.0005, 0.003, 0.02, 0.06, 0.3])),
    st.tuples(st.just("b_send"), st.sampled_from([Intent.REALTIME, Intent.RELIABLE]),
              st.integers(1, 200)),
    st.tuples(st.just("release"), st.integers(1, 4000)),
)


def run(t: Twins, actions: list[tuple[Any, ...]]) -> None:
    delivered = 0  # a's datagrams are delivered in order by default; others pick any
    for action in actions:
        kind = action[0]
        if kind == "send":
            _, intent, sizes, prio, *lane = action
            for i, size in enumerate(sizes):
                data = bytes([i & 0xFF]) * size
                try:
                    t.a.send(t.cid_a, data, int(intent), int(prio), t.now, *lane)
                except Exception:  # a full window or queue: the sender's business
                    break
            t.pump_a()
        elif kind == "deliver" and t.wire:
            _, index, addr = action
            if delivered < len(t.wire):  # the next one in order, most of the time
                i = delivered if int(index) % 4 else int(index) % len(t.wire)
            else:
                i = int(index) % len(t.wire)  # a replay
            delivered = max(delivered, i + 1)
            t.now += 0.0005
            t.deliver(t.wire[i][0], addr)
        elif kind == "batch" and t.wire:
            # consecutive datagrams in one batch (a GRO buffer), from one address,
            # sometimes reversed, sometimes with a corrupted one among them
            _, start, count, reverse, addr, spoil = action
            first = delivered if start % 3 else start % len(t.wire)
            chunk = [(d, addr) for d, _ in t.wire[first:first + count]]
            delivered = max(delivered, first + len(chunk))
            if reverse:
                chunk.reverse()
            if spoil < len(chunk):
                chunk[spoil] = (mutate(chunk[spoil][0], spoil, start), addr)
            t.now += 0.0005
            t.deliver_batch(chunk)
        elif kind == "a_close":
            # CLOSE lands in the wire: later batches carry DATA after it
            t.a.close(t.cid_a, t.now)
            t.pump_a()
        elif kind == "a_reconnect" and t.cid_a not in t.a.sessions:
            t.establish()  # a second session (the first one's datagrams stay replayable)
            delivered = 0
        elif kind == "mutate" and t.wire:
            _, index, how, where, addr = action
            data = t.wire[int(index) % len(t.wire)][0]
            t.deliver(mutate(data, int(how), int(where)), addr)
        elif kind == "garbage":
            _, body, conn_id = action
            live = list(t.py.sessions)
            if live and conn_id % 2:
                conn_id = live[0]  # aimed at the live session, half the time
            raw = pack_header(PacketType.DATA, Intent.REALTIME, 0, 0, max(len(body) - TAG_LEN, 3),
                              conn_id, len(body), 0) + body
            t.deliver(raw, ATTACKER)
            t.deliver(bytes(body), A_ADDR)
        elif kind == "tick":
            t.tick(float(action[1]))
        elif kind == "b_send":
            _, intent, size = action
            cids = [cid for cid, s in t.py.sessions.items() if s.established]
            if cids:
                def send(ep: Endpoint, cid: int = cids[0], size: int = size,
                         intent: int = int(intent)) -> None:
                    with contextlib.suppress(Exception):  # the same refusal on both twins
                        ep.send(cid, b"b" * size, intent, 3, t.now)
                t.both(send)
        elif kind == "release":
            cids = list(t.py.sessions)
            if cids:
                def release(ep: Endpoint, cid: int = cids[0], n: int = action[1]) -> None:
                    ep.release(cid, n)
                t.both(release)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(actions=st.lists(ACTIONS, min_size=1, max_size=50))
def test_both_paths_agree_on_any_sequence(config: str, actions: list[tuple[Any, ...]]) -> None:
    t = twins(config)
    # something on the wire from the start, so that every action has matter to work on
    run(t, [("send", Intent.REALTIME, [20, 30, 40], 3), ("send", Intent.RELIABLE, [9, 10], 5),
            *actions])
    t.tick(0.5)


@pytest.mark.parametrize("config", ["default", "rekeying", "wrap"])
def test_both_paths_agree_on_a_long_packed_stream(config: str) -> None:
    """Thousands of packed REALTIME and RELIABLE messages in order, GRO-sized batches,
    across key updates (and the wrap): the common path, at length."""
    t = twins(config)
    rng = random.Random(config)
    extended = 0
    for _round in range(60):
        for _ in range(rng.randrange(1, 40)):
            intent = Intent.REALTIME if rng.random() < 0.7 else Intent.RELIABLE
            large = rng.random() < 0.05  # fragments, in extended DATA, on a lane
            try:
                t.a.send(t.cid_a, rng.randbytes(rng.randrange(1500, 4000) if large else
                                                rng.randrange(1, 200)), intent,
                         rng.randrange(8), t.now, rng.randrange(4) if large else 0)
            except Exception:
                break
        t.pump_a()
        batch, t.wire = [(d, A_ADDR) for d, _ in t.wire], []
        extended += sum(1 for d, _ in batch if d[0] & 0x0F == 0 and d[1] & 0x04)
        # reordered within a few places (late packets of the previous key phase),
        # one in 30 lost, one in 30 delivered twice
        for i in range(len(batch) - 1):
            if rng.random() < 0.2:
                j = min(i + rng.randrange(1, 5), len(batch) - 1)
                batch[i], batch[j] = batch[j], batch[i]
        batch = [item for item in batch if rng.random() > 1 / 30]
        batch += [item for item in batch if rng.random() < 1 / 30]
        for i in range(0, len(batch), 16):
            t.now += 0.0002
            t.deliver_batch(batch[i:i + 16])
        t.tick(0.012)
    delivered = [e for e in t.events if type(e).__name__ == "MessageReceived"]
    assert len(delivered) > 500
    if config != "default":
        assert t.py.stats.key_updates_receive > 3
    assert t.py.stats.replay_rejections > 0
    assert extended > 20  # X = 1: the Python core's, on both twins
    nat = next(iter(t.nat.sessions.values()))
    if config == "wrap":
        assert nat.replay.highest > 1 << 32


def test_x_bit_and_handshakes_go_to_the_python_core() -> None:
    """A datagram with bit 2 of byte 1 set is the Python core's to judge (today: malformed,
    counted once); so is every HS datagram."""
    t = twins("default")
    t.a.send(t.cid_a, b"x", Intent.REALTIME, 0, t.now)
    t.pump_a()
    data = t.wire[-1][0]
    before = t.nat.stats.packets_dropped_malformed
    received = t.nat.stats.packets_received
    t.deliver(mutate(data, 3, 0))
    assert t.nat.stats.packets_dropped_malformed == before + 1
    assert t.nat.stats.packets_received == received + 1


def test_native_sealing_never_repeats_a_key_nonce_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every packet both twins' sessions seal, across key updates and the 2^32 wrap,
    has its own (key, nonce): the native path seals through the same SendKeys and
    the session's one pn counter as the Python path."""
    seen: list[tuple[int, bytes, int, int]] = []
    real_seal = SendKeys.seal

    def seal(self: SendKeys, conn_id: int, pn: int, header: bytes, plaintext: bytes) -> bytes:
        seen.append((id(self), self._key, conn_id, pn))
        return real_seal(self, conn_id, pn, header, plaintext)

    monkeypatch.setattr(SendKeys, "seal", seal)
    t = twins("wrap")
    cid = next(iter(t.py.sessions))
    for round_ in range(40):
        for i in range(10):
            t.a.send(t.cid_a, bytes([i]) * 40, Intent.REALTIME, 1, t.now)
        def back(ep: Endpoint, r: int = round_) -> None:
            ep.send(cid, b"back-%d" % r, int(Intent.RELIABLE), 2, t.now)
        t.both(back)
        t.pump_a()
        batch, t.wire = [(d, A_ADDR) for d, _ in t.wire], []
        t.deliver_batch(batch)
        t.tick(0.02)
    session = t.nat.sessions[cid]
    assert session.send_keys is not None and session.recv_keys is not None
    assert session.send_keys.phase or session.send_keys.updated_at is not None
    mine = [(key, conn_id, pn) for owner, key, conn_id, pn in seen
            if owner == id(session.send_keys)]
    assert len(mine) > 40
    assert len(set(mine)) == len(mine), "a (key, nonce) pair repeated on the native path"
    assert max(pn for _, _, pn in mine) > 1 << 32  # across the wrap


def per_key(items: list[Any], key: Callable[[Any], object]) -> dict[object, list[Any]]:
    """``items`` split by ``key``, each part in its order."""
    parts: dict[object, list[Any]] = {}
    for item in items:
        parts.setdefault(key(item), []).append(item)
    return parts


def test_both_paths_agree_across_hundreds_of_interleaved_sessions() -> None:
    """300 peers (more than the extension's 256 cached replay bitmaps, so they share
    entries), their datagrams shuffled together into GRO-sized batches with replays
    and forgeries mixed in: the same outcome, batch after batch.

    The endpoint-wide credit bound is lifted here: sessions flush in set order (by
    object id), so where that bound binds, which session's ACK gets the last credit
    differs between any two endpoints, on either path."""
    config = EndpointConfig(max_reorder_total=1 << 40)
    py, nat = endpoint("b", config, False), endpoint("b", config, True)
    peers: dict[Address, tuple[Endpoint, int]] = {}
    rng = random.Random(7)
    clock = [0.0]

    def exchange(batch: list[tuple[bytes, Address]]) -> None:
        now = clock[0]
        py.receive_datagrams(list(batch), now)
        nat.receive_datagrams(list(batch), now)
        assert py.stats.as_dict() == nat.stats.as_dict()
        assert {s.conn_id for s in py._dirty} == {s.conn_id for s in nat._dirty}
        assert {s.conn_id for s in py._flush} == {s.conn_id for s in nat._flush}
        # Sessions flush in the order of a set of Session objects (by their ids), so
        # the two endpoints interleave their sessions' datagrams differently; each
        # session's own sequence must be the same.
        out = py.datagrams_to_send(now)
        assert per_key(out, lambda d: d[1]) == per_key(nat.datagrams_to_send(now),
                                                       lambda d: d[1])
        assert per_key(py.take_events(), lambda e: getattr(e, "conn_id", None)) == \
            per_key(nat.take_events(), lambda e: getattr(e, "conn_id", None))
        for data, addr in out:
            if addr in peers:
                peers[addr][0].receive_datagram(data, B_ADDR, now)

    def collect() -> list[tuple[bytes, Address]]:
        wire = []
        for addr, (ep, _) in peers.items():
            wire += [(d, addr) for d, _ in ep.datagrams_to_send(clock[0])]
            ep.take_events()
        return wire

    for group in range(6):  # handshakes, 50 at a time (MAX_HANDSHAKES_IN_FLIGHT)
        for i in range(50):
            addr = (f"10.1.{group}.{i + 1}", 5000 + i)
            ep = endpoint(f"peer-{group}-{i}", config, False)
            peers[addr] = (ep, ep.connect(B_ADDR, clock[0]))
        for _ in range(6):
            clock[0] += 0.002
            wire = collect()
            for start in range(0, len(wire), 64):
                exchange(wire[start:start + 64])
    assert sum(s.established for s in nat.sessions.values()) == 300
    assert snapshot(py) == snapshot(nat)
    sent: list[tuple[bytes, Address]] = []
    for _round in range(8):
        clock[0] += 0.004
        for ep, cid in peers.values():
            for _ in range(rng.randrange(0, 4)):
                intent = Intent.REALTIME if rng.random() < 0.8 else Intent.RELIABLE
                ep.send(cid, rng.randbytes(rng.randrange(1, 100)), intent, rng.randrange(8),
                        clock[0])
        wire = collect()
        sent += wire
        wire += rng.sample(sent, min(40, len(sent)))                  # replays
        wire += [(mutate(d, rng.randrange(7), rng.randrange(4096)), a)  # forgeries
                 for d, a in rng.sample(sent, min(40, len(sent)))]
        rng.shuffle(wire)
        for start in range(0, len(wire), 64):
            exchange(wire[start:start + 64])
        for ep, _ in peers.values():
            ep.handle_timer(clock[0])
        py.handle_timer(clock[0])
        nat.handle_timer(clock[0])
        exchange([])
    assert snapshot(py) == snapshot(nat)
    assert nat.stats.messages_delivered_realtime > 1000
    assert nat.stats.replay_rejections > 100
