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
from collections import deque
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
from intentra.core.lanes import OutLane
from intentra.core.packing import Packer
from intentra.core.reliable import SendWindow
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
    the session's one pn counter as the Python path (DATA and ACKs through
    ``seal_packet``, whole in C; CLOSE through ``seal``)."""
    seen: list[tuple[int, bytes, int, int]] = []
    real_seal = SendKeys.seal
    real_seal_packet = SendKeys.seal_packet

    def seal(self: SendKeys, conn_id: int, pn: int, header: bytes, plaintext: bytes) -> bytes:
        seen.append((id(self), self._key, conn_id, pn))
        return real_seal(self, conn_id, pn, header, plaintext)

    def seal_packet(self: SendKeys, b0: int, b1: int, conn_id: int, pn: int, ack: int,
                    plaintext: bytes) -> bytes:
        seen.append((id(self), self._key, conn_id, pn))
        datagram = real_seal_packet(self, b0, b1, conn_id, pn, ack, plaintext)
        # in C exactly where the key is the extension's AEAD (the native twin)
        assert self._packets == (type(self._aead) is intentra.native.module().AESGCM)
        return datagram

    monkeypatch.setattr(SendKeys, "seal", seal)
    monkeypatch.setattr(SendKeys, "seal_packet", seal_packet)
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
                intent = Intent.REALTIME if rng.random() < 0.9 else Intent.RELIABLE
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


# ------------------------------------------------------------- the send path

SEND_CONFIGS = {
    "default": EndpointConfig(),
    # key updates every 10 packets, the shortest minimum interval: one within a
    # flush (its clock stands still), at whichever packet the 10th falls on
    "rekeying": EndpointConfig(key_update_packets=10, key_update_min_interval=1e-6),
    # packet numbers cross 2^32 (and the random pn skip comes every 256-511 pns)
    "wrap": EndpointConfig(initial_pn=(1 << 32) - 200, key_update_packets=40,
                           key_update_min_interval=1e-6),
    # the pn limit is reached within a flush: KEY_EXHAUSTED
    "pn_limit": EndpointConfig(pn_limit=260),
    # no congestion control: every flush sends all that is queued
    "no_cc": EndpointConfig(congestion_control=False, max_send_queue=4096),
}


def send_state(ep: Endpoint) -> dict[int, tuple[object, ...]]:
    """What sending changes in each session, beyond the adversarial snapshot: bytes and
    packets counted, the path budget, the REALTIME accounting, the elicit state,
    every packet recovery holds, the pacer, the send keys and the queues."""
    state: dict[int, tuple[object, ...]] = {}
    for cid, s in ep.sessions.items():
        rec, cc, keys = s.recovery, s.cc, s.send_keys
        state[cid] = (
            s.sent_bytes, s.path_budget, s.path_probe_pn, s.rt_bytes, s.queued,
            s.queued_reliable, s.unelicited, s.elicited_at, s.pushing, s.dropped_deadline,
            s.dropped_congestion, s.dropped_queue_full, s.rt_mid, dict(s.rt_frags),
            s.last_send_at, s.skip_at, s.rel_extra, s.other_last,
            [list(q) if q is not None else None for q in s.rt_queue],
            {n: list(lane.queue) for n, lane in s.lanes_out.items()},
            None if keys is None else (keys._key, keys.phase, keys.packets_under_key,
                                       keys.key_started_at, keys.updated_at),
            None if rec is None else (
                rec.in_flight, rec.eliciting, rec.eliciting_sent_at, rec.first_sent_at,
                rec.delivered_at, rec.app_limited_mark, tuple(rec.skipped),
                [(pn, tuple(getattr(p, f) for f in type(p).__slots__))
                 for pn, p in rec.sent.items()]),
            None if cc is None else (cc.tokens, cc.tokens_at, cc.pacing_rate, cc.cwnd),
        )
    return state


BURST = st.tuples(
    st.just("burst"),
    st.lists(st.tuples(
        st.sampled_from([Intent.REALTIME, Intent.REALTIME, Intent.REALTIME, Intent.RELIABLE]),
        st.one_of(st.integers(0, 200), st.integers(0, 1300), st.integers(1100, 3000)),
        st.integers(0, 7),
        st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2])), min_size=1, max_size=90))
SEND_ACTIONS = st.one_of(
    BURST, BURST, BURST,
    st.tuples(st.just("acks"), st.integers(1, 40)),      # a's ACKs reach the twins
    st.tuples(st.just("tick"), st.sampled_from([0.0002, 0.001, 0.01, 0.05, 0.15])),
    st.tuples(st.just("roam")),                           # a moves: path_budget binds
    st.tuples(st.just("read")),                           # a's application reads
)


def run_sends(t: Twins, actions: list[tuple[Any, ...]]) -> None:
    """Bursts the twins queue and flush in lock step (``Twins.both`` compares the
    datagrams, events, counters and state after each), with the send state too."""
    for action in actions:
        kind = action[0]
        cids = [cid for cid, s in t.py.sessions.items() if s.established]
        if kind == "burst" and cids:
            def burst(ep: Endpoint, cid: int = cids[0],
                      messages: list[tuple[Intent, int, int, int]] = action[1]) -> None:
                for i, (intent, size, prio, lane) in enumerate(messages):
                    with contextlib.suppress(Exception):  # the same refusal on both twins
                        ep.send(cid, bytes([i & 0xFF]) * size, int(intent), prio, t.now, lane)
            t.both(burst)
        elif kind == "acks" and t.wire:
            batch, t.wire = t.wire[:action[1]], t.wire[action[1]:]
            t.now += 0.0003
            t.deliver_batch([(d, A_ADDR) for d, _ in batch])
        elif kind == "tick":
            t.tick(float(action[1]))
        elif kind == "roam" and t.wire:
            t.now += 0.0003
            t.deliver(t.wire.pop(0)[0], A_ROAMED)
        elif kind == "read":
            t.a.take_events()
        assert send_state(t.py) == send_state(t.nat)


@pytest.mark.parametrize("config", sorted(SEND_CONFIGS))
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(actions=st.lists(SEND_ACTIONS, min_size=1, max_size=30))
def test_both_paths_send_the_same_datagrams(config: str,
                                            actions: list[tuple[Any, ...]]) -> None:
    """The same messages queued at the same times give byte-identical datagrams on both
    paths (the packing of small REALTIME messages and the sealing in C on the native
    one), the same counters and the same send state: across key updates within a
    flush, the pn skip, the 2^32 wrap, the pn limit, a path budget and the congestion
    controller's window and pacer."""
    t = Twins(SEND_CONFIGS[config])
    t.establish()
    run_sends(t, actions)
    t.tick(0.5)
    assert send_state(t.py) == send_state(t.nat)


@pytest.mark.parametrize("config", sorted(SEND_CONFIGS))
def test_both_paths_send_a_long_stream_the_same(config: str) -> None:
    """Thousands of small messages, REALTIME and lane-0 RELIABLE, with late ones, lanes
    and large ones among them, at length: every rule the native packer and sealer
    touch comes up (checked below), and the two paths stay byte for byte the same."""
    t = Twins(SEND_CONFIGS[config])
    t.establish()
    rng = random.Random(config)
    skips = key_updates = 0
    closed = False
    for _round in range(50):
        messages = [(Intent.REALTIME if rng.random() < 0.9 else Intent.RELIABLE,
                     rng.choice([rng.randrange(0, 140)] * 8 + [rng.randrange(0, 1200), 2500]),
                     rng.randrange(8), 0 if rng.random() < 0.95 else rng.randrange(1, 3))
                    for _ in range(rng.randrange(20, 200))]
        run_sends(t, [("burst", messages), ("acks", 1000), ("tick", 0.005), ("acks", 1000),
                      ("tick", rng.choice([0.01, 0.02, 0.03, 0.12]))])
        for s in t.nat.sessions.values():
            if s.recovery is not None:
                skips = max(skips, len(s.recovery.skipped))
        key_updates = t.nat.stats.key_updates_send
        if not any(s.established for s in t.py.sessions.values()):
            closed = True
            break
    stats = t.nat.stats
    assert stats.messages_sent_realtime > (100 if config == "pn_limit" else 400)
    assert stats.messages_dropped_deadline + stats.messages_dropped_congestion > 0 or \
        config == "no_cc"
    if config == "pn_limit":
        assert closed and any(type(e).__name__ == "SessionClosed" for e in t.events)
    if config in ("rekeying", "wrap"):
        assert key_updates > 5
    if config in ("default", "wrap", "no_cc"):
        assert skips > 0  # the random pn skip came up
    if config == "wrap":
        assert max(s.pn_next for s in t.nat.sessions.values()) > 1 << 32


def test_the_native_packer_and_sealer_match_the_reference() -> None:
    """``intentra._native.Packer`` and ``AESGCM.seal_packet`` against core/packing.py's
    Packer and SendKeys.seal_packet on cryptography's AESGCM: the same statuses, the
    same messages taken, the same plaintexts and datagrams, on hypothesis' queues."""
    native = intentra.native.module()

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.binary(max_size=300), st.floats(0.0, 1.0),
                              st.sampled_from([0, 0, 0, 1])), max_size=40),
           st.integers(0, 7), st.floats(0.0, 1.2), st.integers(2, 1168),
           st.integers(0, 1 << 32 - 1), st.integers(1, (1 << 62) - 1),
           st.integers(0, 1 << 32 - 1), st.integers(0, 0xFF), st.binary(min_size=32,
                                                                        max_size=32))
    def check(items: list[tuple[bytes, float, int]], level: int, now: float, limit: int,
              conn_id: int, pn: int, ack: int, b1: int, key: bytes) -> None:
        queues = [deque(items), deque(items)]
        packers = [Packer(), native.Packer()]
        for _ in range(len(items) + 2):
            statuses = [p.take(q, level, now, 0.5, limit, limit - 2)
                        for p, q in zip(packers, queues, strict=True)]
            assert statuses[0] == statuses[1]
            assert [list(q) for q in queues[:1]] == [list(queues[1])]
            assert [(p.size, p.prio, p.sent, p.taken) for p in packers[:1]] == \
                [(packers[1].size, packers[1].prio, packers[1].sent, packers[1].taken)]
            plaintexts = [p.plaintext() for p in packers]
            assert plaintexts[0] == plaintexts[1]
            keys = [SendKeys(key, 0.0), SendKeys(key, 0.0, native.AESGCM)]
            assert keys[1]._packets and not keys[0]._packets
            datagrams = [k.seal_packet(0x20, b1 & 0xFE, conn_id, pn, ack, plaintexts[0])
                         for k in keys]
            assert datagrams[0] == datagrams[1]
            header = datagrams[0][:HEADER_LEN]
            assert datagrams[0] == header + keys[0].seal(conn_id, pn, header, plaintexts[0])
            if statuses[0] == 1 and queues[0]:
                queues[0].popleft()  # the caller takes a head that is not plain
                queues[1].popleft()
            if statuses[0] == 0:
                break

    check()


def test_the_native_reliable_packer_matches_the_reference() -> None:
    """``Packer(reliable=True).take_reliable`` in C against core/packing.py's: the same
    statuses, messages taken, rseqs assigned (the send window's entries), lane counts
    and plaintexts, on hypothesis' lanes."""
    native = intentra.native.module()

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.binary(max_size=400), st.integers(0, 7)), min_size=1,
                    max_size=40),
           st.integers(1, 60), st.booleans(), st.integers(6, 1168), st.integers(0, 2**32 - 1))
    def check(items: list[tuple[bytes, int]], room: int, single: bool, limit: int,
              first_rseq: int) -> None:
        small = limit - 6
        lanes, windows = [], []
        for _ in range(2):
            olane = OutLane(0)
            for data, prio in items:
                olane.queue.append((data, prio))
                olane.counts[prio] += 1
            olane.level = max(prio for _, prio in items)
            lanes.append(olane)
            windows.append(SendWindow(1 << 16, first_rseq))
        packers = [Packer(reliable=True), native.Packer(reliable=True)]
        rooms = [room, room]
        for _ in range(len(items) + 2):
            if not lanes[0].queue or len(lanes[0].queue[0][0]) > small or rooms[0] <= 0:
                break
            results = [p.take_reliable(lane, w, 1.5, 0.2, r, single, small, limit)
                       for p, lane, w, r in zip(packers, lanes, windows, rooms, strict=True)]
            assert results[0] == results[1]
            rooms = [r - results[0][1] for r in rooms]
            state = [(p.size, p.prio, p.count, p.first, p.sent, p.taken, list(lane.queue),
                      list(lane.counts), w.next_rseq, w.rto_at,
                      [(k, v.data, v.priority, v.sent_at) for k, v in w.outstanding.items()])
                     for p, lane, w in zip(packers, lanes, windows, strict=True)]
            assert state[0] == state[1]
            if results[0][0] == 2 or not single or results[0][0] == 1:
                assert packers[0].plaintext() == packers[1].plaintext()
            if results[0][0] == 1:
                for lane in lanes:
                    lane.relevel()
        assert packers[0].plaintext() == packers[1].plaintext()

    check()
