"""Property tests (hypothesis): the codec and the endpoint's receive path under attack.

The attacker's inputs are real datagrams captured from a real handshake and
exchange (``packets.py``), mutated (bit flips, truncations, extensions, splices
of two datagrams, header and HS-body field rewrites, conn_ids aimed at live
sessions, well-formed headers with forged bodies), or plain random bytes, sent
from any address (the live peers' own included) at any time.

Codec (docs/protocol.md sections 3 and 7): ``parse_header`` accepts exactly the datagrams an
independent reading of section 3 accepts (plus the documented conn_id rule),
``unpack_hs`` exactly the bodies of the section 7 table; what they accept
re-packs to the same bytes; they never raise, on bytes or memoryviews.

Endpoint, for every input that is not byte-identical to a genuine datagram:

(a) no exception escapes ``receive_datagram(s)`` or ``handle_timer``;
(b) the replies it causes are no larger in total than it (docs/protocol.md section 10),
    the one exception being the protocol's own: a COOKIE from the address a
    HELLO went to is answered by that HELLO, to that address only;
(c) no session changes, beyond its token bucket (docs/protocol.md section 6 step 3) and the
    documented side effects of unauthenticated handshake packets: a HELLO whose
    cookie verifies may open one pending handshake; a failed FINISH delays the
    next try; a COOKIE (as above) replaces the initiator's cookie; and a previous
    key past its lifetime is erased, as its timer would have;
(d) the bounds of docs/protocol.md hold throughout: reliable in flight <= MAX_RELIABLE_IN_FLIGHT,
    reorder bytes <= MAX_REORDER_BUFFER, pending handshakes within
    MAX_HANDSHAKES_IN_FLIGHT and MAX_HANDSHAKES_PER_IP, sessions <= MAX_CONNECTIONS,
    replay window within REPLAY_WINDOW; and no forged message is ever delivered:
    what the responder delivers is exactly what the initiator sent, in order.

A state machine interleaves attacks with genuine traffic (lossy, reordered,
retransmitted) and timers, and checks that the genuine traffic still gets
through. Every run is derandomized (fixed examples, no example database).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from packets import (
    A_ADDR,
    ATTACKER,
    B_ADDR,
    ESTABLISHED,
    PACKETS,
    REALTIME_MESSAGES,
    RECEIVER,
    RELIABLE_MESSAGES,
    World,
    build,
    captured,
    counters,
    delta,
    diff,
    header_fields,
    rewrite,
    snapshot,
    total_size,
)

from intentra.config import EndpointConfig
from intentra.constants import HEADER_LEN, MAX_PACKET_SIZE, TAG_LEN, HsKind, Intent, PacketType
from intentra.core.endpoint import Endpoint
from intentra.core.session import SessionState
from intentra.core.wire import (
    LOW_ORDER_POINTS,
    Header,
    HsBody,
    pack_header,
    pack_hello,
    pack_hs,
    parse_header,
    unpack_hs,
)
from intentra.events import Address, Event, MessageReceived

DATA, ACK, HS, CLOSE = (int(t) for t in PacketType)
U32_MAX: Final = 0xFFFFFFFF
DETERMINISTIC: Final = settings(
    derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example])

CORPUS: Final = tuple(captured().values())
GENUINE: Final = frozenset(CORPUS)
LIVE_IDS: Final = (header_fields(captured()["cookie"])["conn_id"],
                   header_fields(captured()["finish"])["conn_id"])
ADDRESSES: Final[tuple[Address, ...]] = (
    A_ADDR, B_ADDR, ATTACKER, ("10.0.0.1", 4999), ("10.0.0.2", 4001),
    ("203.0.113.77", 53), ("2001:db8::5", 4433, 0, 0))
FIELD_BITS: Final = {"version": 4, "ptype": 4, "intent": 2, "priority": 3, "reserved": 1,
                     "ack_eliciting": 1, "key_phase": 1, "payload_len": 16, "conn_id": 32,
                     "seq": 32, "ack": 32}
MUTATIONS: Final = ("flip", "truncate", "extend", "splice", "field", "hs_field", "retarget",
                    "retarget", "forge", "forge", "random")
"""How a datagram is made; conn_ids aimed at live sessions count twice, so that many
inputs get past the header checks and the lookup, to the token bucket and the AEAD."""
DROPS: Final = frozenset({"packets_dropped_malformed", "packets_dropped_unknown",
                          "packets_dropped_rate_limit", "packets_dropped_crypto",
                          "replay_rejections", "handshakes_rejected"})
"""Counters that say a datagram was dropped (docs/protocol.md section 11)."""


# ------------------------------------------------------------------ strategies

@st.composite
def forged(draw: st.DrawFn, conn_ids: Sequence[int]) -> bytes:
    """A header that satisfies section 3, for a live conn_id, and a body that is noise."""
    ptype = draw(st.sampled_from([DATA, ACK, CLOSE]))
    intent = draw(st.integers(0, 1)) if ptype == DATA else 0
    priority = draw(st.integers(0, 7)) if ptype == DATA else 0
    if ptype == DATA:
        payload_len = draw(st.integers(7 if intent == 0 else 3, 120))
    else:
        payload_len = 28 if ptype == ACK else 1
    # the A bit: 1 in RELIABLE DATA, 0 in CLOSE, free in REALTIME DATA and ACK
    eliciting = (1 if intent == 0 else draw(st.integers(0, 1))) if ptype == DATA else \
        (draw(st.integers(0, 1)) if ptype == ACK else 0)
    conn_id = draw(st.sampled_from(conn_ids)) if conn_ids else draw(st.integers(1, U32_MAX))
    seq = draw(st.one_of(st.integers(0, 16), st.integers(0, U32_MAX)))
    ack = 0 if ptype == CLOSE else draw(st.one_of(st.integers(0, 8), st.integers(0, U32_MAX)))
    header = pack_header(ptype, intent, priority, draw(st.integers(0, 1)), payload_len,
                         conn_id, seq, ack, eliciting)
    size = payload_len + TAG_LEN
    return header + draw(st.binary(min_size=size, max_size=size))


@st.composite
def mutation(draw: st.DrawFn, corpus: Sequence[bytes], conn_ids: Sequence[int],
             favour: bytes | None = None) -> bytes:
    """One attacker datagram: a real one, damaged, or random bytes.

    ``favour``, if given, is the base of half the mutations (the datagram the
    receiver is waiting for).
    """
    how = draw(st.sampled_from(MUTATIONS))
    use_favour = favour is not None and draw(st.booleans())
    base = favour if favour is not None and use_favour else draw(st.sampled_from(corpus))
    if how == "flip":
        out = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if how == "truncate":
        return base[:draw(st.integers(0, len(base) - 1))]
    if how == "extend":
        return base + draw(st.binary(min_size=1, max_size=64))
    if how == "splice":
        other = draw(st.sampled_from(corpus))
        return base[:draw(st.integers(0, len(base)))] + other[draw(st.integers(0, len(other))):]
    if how == "field":
        name = draw(st.sampled_from(sorted(FIELD_BITS)))
        top = (1 << FIELD_BITS[name]) - 1
        value = draw(st.one_of(st.sampled_from([0, 1, top]), st.integers(0, top)))
        return rewrite(base, **{name: value})
    if how == "hs_field" and base[0] & 0x0F == HS and len(base) >= HEADER_LEN + 5:
        out = bytearray(base)
        if draw(st.booleans()):
            out[HEADER_LEN] = draw(st.one_of(st.sampled_from(list(HsKind)), st.integers(0, 255)))
        else:
            sender = draw(st.one_of(st.sampled_from([0, *conn_ids]), st.integers(0, U32_MAX)))
            out[HEADER_LEN + 1:HEADER_LEN + 5] = sender.to_bytes(4, "big")
        return bytes(out)
    if how == "retarget" and conn_ids:
        out = bytearray(rewrite(base, conn_id=draw(st.sampled_from(conn_ids))))
        if len(out) > HEADER_LEN and draw(st.booleans()):
            out[draw(st.integers(HEADER_LEN, len(out) - 1))] ^= draw(st.integers(1, 255))
        return bytes(out)
    if how == "forge":
        return draw(forged(conn_ids))
    if draw(st.booleans()):
        return draw(st.binary(max_size=96))
    # Large random datagrams, around MAX_PACKET_SIZE: seeded bytes (cheap to draw).
    size = draw(st.integers(MAX_PACKET_SIZE - 2, MAX_PACKET_SIZE + 2))
    return random.Random(draw(st.integers(0, U32_MAX))).randbytes(size)


# ------------------------------------------------------------------ oracles

def spec_header_ok(d: bytes) -> bool:
    """docs/protocol.md section 3, read independently of src; plus docs/protocol.md 12:
    conn_id 0 in DATA, ACK or CLOSE is malformed."""
    n = len(d)
    if not HEADER_LEN <= n <= MAX_PACKET_SIZE:
        return False
    version, ptype = d[0] >> 4, d[0] & 0x0F
    intent, priority, phase = d[1] >> 6, (d[1] >> 3) & 7, d[1] & 1
    reserved, eliciting = (d[1] >> 2) & 1, (d[1] >> 1) & 1
    payload_len = int.from_bytes(d[2:4], "big")
    conn_id, seq, ack = (int.from_bytes(d[i:i + 4], "big") for i in (4, 8, 12))
    if version != 2 or ptype > 3 or intent > 1 or (reserved and ptype != DATA):
        return False  # X (bit 2) only in DATA (section 14.4)
    if ptype != DATA and (intent != 0 or priority != 0):
        return False
    if (ptype in (HS, CLOSE) and eliciting) or (ptype == DATA and intent == 0 and not eliciting):
        return False
    if ptype == HS:
        return phase == 0 and n == HEADER_LEN + payload_len and seq == 0 and ack == 0
    if n != HEADER_LEN + payload_len + TAG_LEN or conn_id == 0:
        return False
    if ptype == DATA:
        if reserved:  # extended DATA: rseq and the smallest record (section 14.4)
            return payload_len >= (13 if intent == 0 else 5)
        return payload_len >= (7 if intent == 0 else 3)
    if ptype == ACK:
        return payload_len == 28
    return payload_len == 1 and ack == 0


PROTOCOL_HS_BODY: Final = {1: 112, 2: 21, 3: 101, 4: 69}  # the docs/protocol.md section 7 table


def spec_hs_ok(d: bytes) -> bool:
    """docs/protocol.md section 7 for a datagram that passed section 3 as HS."""
    body = d[HEADER_LEN:]
    if len(body) < 5:
        return False
    kind, sender = body[0], int.from_bytes(body[1:5], "big")
    conn_id = int.from_bytes(d[4:8], "big")
    if PROTOCOL_HS_BODY.get(kind) != len(body):
        return False
    if kind == 1:
        return conn_id == 0 and sender != 0
    if conn_id == 0:
        return False
    return sender == 0 if kind == 2 else sender != 0


# ------------------------------------------------------------------ codec

@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A datagram that satisfies sections 3 and 5, then (half the time) one field,
    the length or an HS body id moved to or next to a boundary of its rule."""
    ptype = draw(st.sampled_from([DATA, ACK, HS, HS, CLOSE]))
    f = {"version": 2, "ptype": ptype, "intent": 0, "priority": 0, "reserved": 0,
         "ack_eliciting": 0, "key_phase": 0, "payload_len": 0,
         "conn_id": draw(st.sampled_from([1, U32_MAX])), "seq": 0, "ack": 0}
    if ptype == HS:
        kind = draw(st.sampled_from([1, 2, 3, 4]))
        sender = 0 if kind == 2 else draw(st.sampled_from([1, U32_MAX]))
        f["conn_id"] = 0 if kind == 1 else f["conn_id"]
        body = bytes([kind]) + sender.to_bytes(4, "big") + bytes(PROTOCOL_HS_BODY[kind] - 5)
        f["payload_len"] = len(body)
        tail = body
    else:
        f["seq"], f["ack"] = draw(st.integers(0, U32_MAX)), draw(st.integers(0, U32_MAX))
        f["key_phase"] = draw(st.integers(0, 1))
        if ptype == DATA:
            f["intent"], f["priority"] = draw(st.integers(0, 1)), draw(st.integers(0, 7))
            f["payload_len"] = draw(st.sampled_from([7, 8, 40])) - 4 * f["intent"]
            f["ack_eliciting"] = 1 if f["intent"] == 0 else draw(st.integers(0, 1))
        elif ptype == ACK:
            f["payload_len"] = 28
            f["ack_eliciting"] = draw(st.integers(0, 1))
        else:
            f["payload_len"], f["ack"] = 1, 0
        tail = bytes(f["payload_len"] + TAG_LEN)
    what = draw(st.sampled_from(["none", "field", "field", "field", "length", "kind", "sender",
                                 "size"]))
    if what == "field":
        name = draw(st.sampled_from(sorted(FIELD_BITS)))
        top = (1 << FIELD_BITS[name]) - 1
        f[name] = draw(st.sampled_from(sorted({0, 1, top, min(top, f[name] + 1),
                                               max(0, f[name] - 1)})))
    elif what == "length":
        tail = tail[:-1] if draw(st.booleans()) and tail else tail + b"\x00"
    elif ptype == HS and what == "kind":
        tail = bytes([draw(st.sampled_from([0, 1, 2, 3, 4, 5, 255]))]) + tail[1:]
    elif ptype == HS and what == "sender":
        tail = tail[:1] + draw(st.sampled_from([0, 1, U32_MAX])).to_bytes(4, "big") + tail[5:]
    elif ptype == HS and what == "size":
        size = draw(st.sampled_from([0, 1, 4, 5, *PROTOCOL_HS_BODY.values()])) \
            + draw(st.sampled_from([0, -1, 1]))
        tail = (tail + bytes(200))[:max(0, size)]
        f["payload_len"] = len(tail)
    return rewrite(bytes(HEADER_LEN), **f) + tail


@settings(DETERMINISTIC, max_examples=1000)
@given(near_valid())
def test_codec_accepts_exactly_what_sections_3_and_5_allow_near_every_boundary(
        raw: bytes) -> None:
    check_codec(raw)


@settings(DETERMINISTIC, max_examples=400)
@given(st.one_of(mutation(CORPUS, LIVE_IDS), forged(LIVE_IDS), st.binary(max_size=64)))
def test_codec_on_damaged_real_datagrams_and_random_bytes(raw: bytes) -> None:
    check_codec(raw)


def check_codec(raw: bytes) -> None:
    """The codec accepts exactly what sections 3 and 5 allow; what it accepts re-packs
    to the same bytes; bytes and memoryviews decode alike; nothing raises."""
    fields = parse_header(raw)
    assert (fields is not None) == spec_header_ok(raw), header_fields(raw + bytes(16))
    assert parse_header(memoryview(raw)) == fields
    if fields is None:
        return
    assert pack_header(*fields) == raw[:HEADER_LEN]
    if fields[0] != HS:
        return
    header = Header._make(fields)
    body = unpack_hs(raw, header)
    assert (body is not None) == spec_hs_ok(raw)
    assert unpack_hs(memoryview(raw), header) == body
    if body is None:
        return
    rest = raw[HEADER_LEN + 5:]
    assert pack_hs(body.kind, header.conn_id, body.sender_id, rest) == raw
    assert body == expected_body(body.kind, body.sender_id, rest)


def expected_body(kind: HsKind, sender_id: int, rest: bytes) -> HsBody:
    if kind is HsKind.HELLO:
        return HsBody(kind, sender_id, rest[:16], rest[16:48])
    if kind is HsKind.COOKIE:
        return HsBody(kind, 0, rest, b"")
    return HsBody(kind, sender_id, bytes(16), rest)


# ------------------------------------------------------------------ the receive path

def hs_kind(raw: bytes) -> HsKind | None:
    fields = parse_header(raw)
    if fields is None or fields[0] != HS:
        return None
    body = unpack_hs(raw, Header._make(fields))
    return None if body is None else body.kind


def keys_expire(old: dict[str, object], now: float) -> bool:
    rk = old["recv_keys"]
    return isinstance(rk, tuple) and rk[2] is not None and now >= rk[2]


def same_session(old_snap: dict[str, object], new_snap: dict[str, object], now: float,
                 kind: HsKind | None, src: Address) -> list[str]:
    """Where a session changed beyond what an unauthenticated datagram may change."""
    old, new = dict(old_snap), dict(new_snap)
    if old["state"] is SessionState.RESPONSE_SENT:
        # A FINISH that fails delays the next try (docs/protocol.md 12).
        del old["finish_retry_at"], new["finish_retry_at"]
    rk = old["recv_keys"]
    if keys_expire(old, now) and isinstance(rk, tuple):
        old["recv_keys"] = (rk[0], rk[1], None, False)  # erased on expiry (protocol.md §6 step 5)
    if old["state"] is SessionState.HELLO_SENT and kind is HsKind.COOKIE and src == old["addr"]:
        # protocol.md section 7 step 2: COOKIE is unauthenticated by design; a new one changes the
        # HELLO, which goes back to the responder's address only (once per RTO:
        # docs/protocol.md 12, tests/test_hardening.py).
        for k in ("cookie", "hs_datagram"):
            del old[k], new[k]
    return diff(old, new)


def may_authenticate(ep: Endpoint, raw: bytes, src: Address, genuine: Collection[bytes]) -> bool:
    """Whether ``raw`` could authenticate (or otherwise legitimately act) at ``ep``.

    Only a genuine datagram can: a sealed one (DATA, ACK, CLOSE), or of the
    handshake kinds a RESPONSE to an initiator waiting for it from the address its
    HELLO went to, and a FINISH to a pending responder or, from the session's own
    address, the FINISH that established it (answered by an ACK, docs/protocol.md section 7 step 6).
    A genuine HELLO or COOKIE, or a replay from elsewhere, is judged like a forgery.
    """
    if raw not in genuine:
        return False
    fields = parse_header(raw)
    if fields is None:
        return False
    if fields[0] != HS:
        return True
    kind = hs_kind(raw)
    session = ep.sessions.get(fields[5])
    if session is None:
        return False
    if kind is HsKind.RESPONSE:
        return session.state is SessionState.HELLO_SENT and src == session.addr
    if kind is HsKind.FINISH:
        return session.state is SessionState.RESPONSE_SENT or (
            session.state is SessionState.ESTABLISHED and not session.initiator
            and src == session.addr)
    return False


def assert_hello_keys_unique(ep: Endpoint) -> None:
    """protocol.md §7 step 3: one HELLO (address, ephemeral key) opens at most one handshake."""
    keys = [s.hello_key for s in ep.sessions.values() if s.hello_key is not None]
    assert len(keys) == len(set(keys)), "one HELLO opened two handshakes"


def judge(ep: Endpoint, before: dict[str, object], before_counts: dict[str, int], raw: bytes,
          src: Address, now: float, out: list[tuple[bytes, Address]], events: list[Event],
          genuine: Collection[bytes]) -> bool:
    """Check (b) and (c) unless ``raw`` may have authenticated and was not dropped.

    Returns:
        True if the input was judged as unauthenticated.
    """
    if may_authenticate(ep, raw, src, genuine):
        moved = delta(before_counts, counters(ep))
        if not set(moved) & DROPS:
            return False
    check_unauthenticated(ep, before, raw, src, now, out, events)
    return True


def check_unauthenticated(ep: Endpoint, before: dict[str, object], raw: bytes, src: Address,
                          now: float, out: list[tuple[bytes, Address]],
                          events: list[Event]) -> None:
    """Properties (b) and (c) for one input that cannot have authenticated.

    ``before`` is ``snapshot(ep, bucket=False)`` taken just before the input.
    """
    after = snapshot(ep, bucket=False)
    kind = hs_kind(raw)
    assert events == [], events
    sb, sa = before["sessions"], after["sessions"]
    assert isinstance(sb, dict) and isinstance(sa, dict)
    added = set(sa) - set(sb)
    removed = set(sb) - set(sa)
    if removed:
        # Issue 9 item 3: a cookie-valid HELLO at a full MAX_HANDSHAKES_IN_FLIGHT makes
        # room by dropping the oldest pending handshake, and nothing else.
        assert kind is HsKind.HELLO and len(removed) == 1 and len(added) == 1, \
            "an unauthenticated datagram removed a session"
        [gone] = removed
        old_gone = sb[gone]
        assert isinstance(old_gone, dict) and old_gone["state"] is SessionState.RESPONSE_SENT
        pending_before = before["pending"]
        assert isinstance(pending_before, tuple)
        assert pending_before[0] == ep.config.max_handshakes_in_flight
    if added:
        # protocol.md section 7 step 3: a HELLO whose cookie verifies opens one pending handshake.
        assert kind is HsKind.HELLO and len(added) == 1
        [new_id] = added
        new = ep.sessions[new_id]
        assert new.state is SessionState.RESPONSE_SENT and new.pending and new.addr == src
        assert out == [(new.hs_datagram, src)]
        assert_hello_keys_unique(ep)
    cookie_taken = False
    for cid, old in sb.items():
        if cid in removed:
            continue
        assert same_session(old, sa[cid], now, kind, src) == [], f"session {cid:#x} changed"
        if old["cookie"] != sa[cid]["cookie"]:
            cookie_taken = True
            # One HELLO per best cookie candidate (issue 9 item 2b), to the session only.
            assert out[0] == (ep.sessions[cid].hs_datagram, src)
            assert len(out) <= ep.config.cookie_hellos
            assert all(dst == src and hs_kind(d) is HsKind.HELLO for d, dst in out)
    if not added:
        assert after["pending"] == before["pending"]
        if not any(keys_expire(old, now) for old in sb.values()):
            assert after["timer"] == before["timer"]
    assert after["by_peer_key"] == before["by_peer_key"]
    if not cookie_taken:
        assert total_size(out) <= len(raw), f"{total_size(out)} bytes sent for {len(raw)}"


STAGES: Final = (*PACKETS, ESTABLISHED)


@pytest.mark.parametrize("stage", STAGES)
@settings(DETERMINISTIC, max_examples=50)
@given(data=st.data(), src=st.sampled_from(ADDRESSES),
       dt=st.sampled_from([0.0, 0.005, 0.3, 4.0, 200.0]))
def test_one_datagram_at_each_stage_of_the_handshake(stage: str, data: st.DataObject,
                                                     src: Address, dt: float) -> None:
    """Each endpoint in each state of the script (initiator waiting for COOKIE, then
    RESPONSE; responder with a pending handshake; both established ...) gets one
    attacker datagram, often a damaged copy of the one it waits for: (a), (b), (c),
    then (a) again for the timers, whose deadlines may be long past."""
    w = build(stage)
    name = data.draw(st.sampled_from([RECEIVER.get(stage, "b"), "a", "b"]), label="target")
    favour = w.packets.get(stage)
    raw = data.draw(mutation(CORPUS, LIVE_IDS, favour), label="datagram")
    ep = w.endpoint(name)
    now = w.now + dt
    before, before_counts = snapshot(ep, bucket=False), counters(ep)
    ep.receive_datagram(raw, src, now)
    out = ep.datagrams_to_send(now)
    events = ep.events()
    judge(ep, before, before_counts, raw, src, now, out, events, GENUINE)
    ep.handle_timer(now)
    ep.datagrams_to_send(now)
    ep.events()


# ------------------------------------------------------------------ the state machine

def machine_config(max_connections: int, max_handshakes_in_flight: int) -> EndpointConfig:
    # Small windows and limits, so that the bounds are reached within a run. v2: the
    # reorder buffer is the credit (max_datagram reserved per message): 4 messages.
    return EndpointConfig(max_reliable_in_flight=8, max_reorder_buffer=2400, max_datagram=600,
                          max_message_size=1800, max_handshakes_per_ip=2,
                          max_connections=max_connections,
                          max_handshakes_in_flight=max_handshakes_in_flight)


MACHINE_CONFIGS: Final = (
    machine_config(max_connections=4, max_handshakes_in_flight=100),  # MAX_CONNECTIONS binds
    machine_config(max_connections=100, max_handshakes_in_flight=3),  # in-flight binds
)


class ReceivePathUnderAttack(RuleBasedStateMachine):
    """An established pair, a (initiator) and b (responder), an attacker, and the clock."""

    def __init__(self) -> None:
        super().__init__()
        self._world: World | None = None
        self.cfg = MACHINE_CONFIGS[0]
        self.now = 0.0
        self.corpus: list[bytes] = []
        self.genuine: set[bytes] = set()
        self.sent_reliable: list[bytes] = []
        self.sent_realtime: list[bytes] = []
        self.got_reliable: list[bytes] = []
        self.got_realtime: list[bytes] = []
        self.serial = 0
        # HELLO (node, source, ephemeral) -> the pending handshake it opened
        self.hellos: dict[tuple[str, Address, bytes], int] = {}

    @property
    def w(self) -> World:
        assert self._world is not None
        return self._world

    @initialize(config=st.sampled_from(MACHINE_CONFIGS))
    def establish(self, config: EndpointConfig) -> None:
        self.cfg = config
        self._world = build(ESTABLISHED, config=config)
        self.now = self.w.now
        self.corpus = list(captured(1, config).values())
        self.genuine = set(self.corpus)
        # What the script already sent and b delivered.
        self.sent_reliable = [m for m, _ in RELIABLE_MESSAGES]
        self.got_reliable = list(self.sent_reliable)
        self.sent_realtime = [m for m, _ in REALTIME_MESSAGES]
        self.got_realtime = list(self.sent_realtime)

    # ---- plumbing

    def live_ids(self) -> list[int]:
        return sorted({*self.w.a.sessions, *self.w.b.sessions})

    def take(self, name: str) -> list[tuple[bytes, Address]]:
        """Drain one endpoint: record its datagrams as genuine, its deliveries."""
        ep = self.w.endpoint(name)
        out = ep.datagrams_to_send(self.now)
        for data, _ in out:
            if data not in self.genuine:
                self.genuine.add(data)
                self.corpus.append(data)
        self.record(name, ep.events())
        return out

    def record(self, name: str, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, MessageReceived):
                assert name == "b" and e.conn_id == self.w.cid_b, f"{name} got {e}"
                got = self.got_reliable if e.intent is Intent.RELIABLE else self.got_realtime
                got.append(e.data)

    def pump(self) -> None:
        """Deliver everything a and b send each other, until they fall silent."""
        for _ in range(50):
            out_a, out_b = self.take("a"), self.take("b")
            if not out_a and not out_b:
                return
            self.deliver("b", [d for d, dst in out_a if dst == B_ADDR])
            self.deliver("a", [d for d, dst in out_b if dst == A_ADDR])
        raise AssertionError("a and b never fell silent")

    def deliver(self, name: str, datagrams: list[bytes]) -> None:
        """Genuine datagrams to ``name`` from its peer, one at a time, bounds checked after each."""
        ep = self.w.endpoint(name)
        src = A_ADDR if name == "b" else B_ADDR
        for data in datagrams:
            ep.receive_datagram(data, src, self.now)
            self.check_bounds()

    def established(self) -> bool:
        sa, sb = self.w.a.sessions.get(self.w.cid_a), self.w.b.sessions.get(self.w.cid_b)
        return (sa is not None and sb is not None and sa.state is SessionState.ESTABLISHED
                and sb.state is SessionState.ESTABLISHED)

    def attack_one(self, name: str, raw: bytes, src: Address) -> list[tuple[bytes, Address]]:
        ep = self.w.endpoint(name)
        before, before_counts = snapshot(ep, bucket=False), counters(ep)
        ep.receive_datagram(raw, src, self.now)
        assert counters(ep)["packets_received"] == before_counts["packets_received"] + 1
        out = ep.datagrams_to_send(self.now)
        events = ep.events()
        if not judge(ep, before, before_counts, raw, src, self.now, out, events, self.genuine):
            self.record(name, events)  # a genuine datagram not delivered yet may act
        self.check_bounds()
        return out

    # ---- the attacker

    @rule(node=st.sampled_from(["a", "b"]), src=st.sampled_from(ADDRESSES),
          dt=st.sampled_from([0.0, 0.0, 0.001, 0.2, 1.0]), data=st.data())
    def attack(self, node: str, src: Address, dt: float, data: st.DataObject) -> None:
        self.now += dt  # no timer runs: the datagram may find deadlines overdue
        self.attack_one(node, data.draw(mutation(self.corpus, self.live_ids())), src)

    @rule(node=st.sampled_from(["a", "b"]), src=st.sampled_from(ADDRESSES), data=st.data())
    def replay(self, node: str, src: Address, data: st.DataObject) -> None:
        """A genuine datagram seen on the wire, sent again, to either side, from anywhere."""
        self.attack_one(node, data.draw(st.sampled_from(self.corpus)), src)

    @rule(node=st.sampled_from(["a", "b"]), data=st.data())
    def attack_batch(self, node: str, data: st.DataObject) -> None:
        """A burst through the batch entry point, from several addresses at one instant."""
        batch = data.draw(st.lists(st.tuples(mutation(self.corpus, self.live_ids()),
                                             st.sampled_from(ADDRESSES)), min_size=1,
                                   max_size=8))
        forged_only = [(d, a) for d, a in batch if d not in self.genuine]
        ep = self.w.endpoint(node)
        before = snapshot(ep, bucket=False)["sessions"]
        ep.receive_datagrams(forged_only, self.now)
        out = ep.datagrams_to_send(self.now)
        assert ep.events() == []
        assert total_size(out) <= sum(len(d) for d, _ in forged_only)
        after = snapshot(ep, bucket=False)["sessions"]
        assert isinstance(before, dict) and isinstance(after, dict)
        for cid, old in before.items():
            assert cid in after
            if old["state"] is SessionState.ESTABLISHED:
                assert same_session(old, after[cid], self.now, None, B_ADDR) == []

    @rule(node=st.sampled_from(["a", "b"]), host=st.integers(1, 3),
          port=st.integers(1, 65535), ephemeral=st.binary(min_size=32, max_size=32),
          sender=st.integers(1, U32_MAX), again=st.booleans())
    def cookie_verified_hello(self, node: str, host: int, port: int, ephemeral: bytes,
                              sender: int, again: bool) -> None:
        """An attacker that receives at its addresses completes the cookie exchange:
        each such HELLO opens a pending handshake until a limit is reached
        (protocol.md §7 step 3)."""
        ep = self.w.endpoint(node)
        src: Address = (f"198.51.100.{host}", port)
        hello0 = pack_hello(sender, bytes(16), ephemeral)
        [(cookie_reply, dst)] = self.attack_one(node, hello0, src)  # a COOKIE, no state
        assert dst == src and hs_kind(cookie_reply) is HsKind.COOKIE
        hello = pack_hello(sender, cookie_reply[HEADER_LEN + 5:], ephemeral)
        cfg = ep.config
        room = (len(ep.sessions) < cfg.max_connections
                and ep.handshakes_in_flight < cfg.max_handshakes_in_flight
                and ep._pending_per_ip.get(src[0], 0) < cfg.max_handshakes_per_ip)
        # A repeat only while the handshake the first copy opened is still pending:
        # once it expired (HANDSHAKE_TIMEOUT) the same HELLO may rightly open another.
        opened_by_first = self.hellos.get((node, src, ephemeral))
        repeated = opened_by_first is not None and opened_by_first in ep.sessions
        sessions, before = len(ep.sessions), counters(ep)
        ids_before = set(ep.sessions)
        response = self.attack_one(node, hello, src)
        moved = delta(before, counters(ep))
        for new_id in set(ep.sessions) - ids_before:
            self.hellos[(node, src, ephemeral)] = new_id
        if again:  # protocol.md section 7 step 3: the same RESPONSE again, not a second handshake
            opened = len(ep.sessions)
            assert self.attack_one(node, hello, src) == response
            assert len(ep.sessions) == opened
        if repeated:  # the same HELLO again: the same RESPONSE at most, no second handshake
            assert len(ep.sessions) == sessions
        elif room and ephemeral not in LOW_ORDER_POINTS:
            assert len(ep.sessions) == sessions + 1, moved
        else:
            assert len(ep.sessions) == sessions
            assert moved.get("handshakes_rejected", 0) + moved.get("packets_dropped_crypto", 0)

    # ---- the legitimate traffic and the clock

    @rule(dt=st.sampled_from([0.01, 0.3, 1.0, 4.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.w.a.handle_timer(self.now)
        self.w.b.handle_timer(self.now)
        self.pump()

    @rule(sizes=st.lists(st.tuples(st.integers(1, 300), st.integers(0, 7)), max_size=12),
          realtime=st.integers(0, 3), data=st.data())
    def exchange(self, sizes: list[tuple[int, int]], realtime: int,
                 data: st.DataObject) -> None:
        """a sends; the network loses and reorders the first flight; retransmissions
        and acknowledgements then run to completion. Everything reliable arrives."""
        if not self.established():
            return
        w = self.w
        self.now += 0.1  # the token bucket refills after an attacker's burst
        batch: list[tuple[bytes, int]] = []
        for size, priority in sizes:
            self.serial += 1
            message = (b"r%d:" % self.serial).ljust(size, b".")
            w.a.send(w.cid_a, message, Intent.RELIABLE, priority, self.now)
            batch.append((message, priority))
        # One lane: they leave (and arrive) in the order sent, whatever their priorities
        # (protocol.md 14.8).
        self.sent_reliable.extend(m for m, _ in batch)
        for _ in range(realtime):
            self.serial += 1
            message = b"t%d" % self.serial
            w.a.send(w.cid_a, message, Intent.REALTIME, 7, self.now)
            self.sent_realtime.append(message)
        first = self.take("a")
        order = data.draw(st.permutations(range(len(first))))
        lost = data.draw(st.lists(st.booleans(), min_size=len(first), max_size=len(first)))
        self.check_bounds()  # a flushed: no more than the window in flight
        self.deliver("b", [first[i][0] for i in order if not lost[i]])
        for _ in range(400):
            self.pump()
            sa = w.a.sessions.get(w.cid_a)
            if sa is None or (sa.send_window.in_flight == 0 and sa.queued == 0):
                break
            self.now += 0.05
            w.a.handle_timer(self.now)
            w.b.handle_timer(self.now)
        if self.established():
            assert self.got_reliable == self.sent_reliable

    # ---- invariants

    @invariant()
    def bounds(self) -> None:
        if self._world is not None:
            self.check_bounds()

    def check_bounds(self) -> None:
        """(d): the limits of docs/protocol.md sections 2, 7 and 8, on both endpoints."""
        cfg = self.cfg
        for ep in (self.w.a, self.w.b):
            assert len(ep.sessions) <= cfg.max_connections
            assert ep.handshakes_in_flight <= cfg.max_handshakes_in_flight
            assert ep.handshakes_in_flight == sum(s.pending for s in ep.sessions.values())
            assert all(n <= cfg.max_handshakes_per_ip for n in ep._pending_per_ip.values())
            for s in ep.sessions.values():
                assert s.send_window.in_flight <= cfg.max_reliable_in_flight
                rw = s.recv_window
                assert rw.buffered_bytes <= cfg.max_reorder_buffer
                assert rw.buffered_bytes == sum(len(m) for m in rw.buffer.values() if m is not None)
                assert len(rw.buffer) < cfg.max_reliable_in_flight
                assert s.replay._bits.bit_length() <= s.replay.size == cfg.replay_window
            assert ep.reorder_buffer_bytes <= cfg.max_reorder_buffer * len(ep.sessions)
            assert_hello_keys_unique(ep)

    @invariant()
    def nothing_forged_is_delivered(self) -> None:
        if self._world is None:
            return
        n = len(self.got_reliable)
        assert self.got_reliable == self.sent_reliable[:n]
        assert len(set(self.got_realtime)) == len(self.got_realtime)
        assert set(self.got_realtime) <= set(self.sent_realtime)


def test_receive_path_under_attack_state_machine() -> None:
    run_state_machine_as_test(ReceivePathUnderAttack, settings=settings(
        DETERMINISTIC, max_examples=200, stateful_step_count=25))
