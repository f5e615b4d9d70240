"""Malformed datagrams against the receive path of the sans-I/O core
(docs/protocol.md sections 3-5, 8).

The attacker sends real datagrams, captured from a real handshake and exchange
(``packets.py``), damaged in every way docs/protocol.md section 3 (and the size rules of
sections 4 and 5) lists: truncated at every byte offset, extended, oversize,
empty, every header field out of range, every HS kind with every wrong body
size, unknown kinds and types, bad ids, unknown conn_ids, HS kinds aimed at a
session in the wrong state. Each goes to the endpoint that would receive the
genuine datagram, in the very state in which it would receive it. Each must be:

- dropped, with exactly ``packets_received`` and the one counter docs/protocol.md section 9
  names (malformed, unknown, crypto) moved, nothing else;
- never answered, and no event reported;
- without effect on any session or on the pending-handshake bookkeeping
  (``packets.snapshot``: state, keys, phase, replay window, windows, strikes,
  timers, handshake fields, token bucket where the drop comes before it);
- and the genuine datagram, right after it, is still accepted.

Packets sealed with the session's real keys are the other half: one whose
header breaks section 3 is malformed like any other (dropped before any
cryptography: no strike, the replay window does not move), while one whose
header is right but whose plaintext breaks the framing of section 4 or the
rules of section 6 is an authenticated violation: one strike, nothing of it
delivered. Control cases show each genuine datagram is accepted where it is
sent, so every drop below is the damage's doing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from packets import (
    A_ADDR,
    ATTACKER,
    B_ADDR,
    ESTABLISHED,
    HS_PACKETS,
    PACKETS,
    RECEIVER,
    RELIABLE_MESSAGES,
    SEALED_PACKETS,
    STEP,
    World,
    build,
    captured,
    counters,
    delta,
    diff,
    header_fields,
    resize_body,
    resize_sealed,
    rewrite,
    seal,
    session_snapshot,
    snapshot,
)

from intentra.constants import (
    HEADER_LEN,
    HS_BODY_LEN,
    MAX_PACKET_SIZE,
    TAG_LEN,
    CloseReason,
    HsKind,
    Intent,
    PacketType,
)
from intentra.core.session import SessionState
from intentra.core.wire import ACK_BODY, U16, U32
from intentra.events import Address, MessageReceived, SessionClosed

MALFORMED = "packets_dropped_malformed"
UNKNOWN = "packets_dropped_unknown"
CRYPTO = "packets_dropped_crypto"
DROPS = (MALFORMED, UNKNOWN, CRYPTO, "packets_dropped_rate_limit", "replay_rejections",
         "handshakes_rejected")

P = captured()
CID_A = header_fields(P["cookie"])["conn_id"]    # the initiator's id (receiver of b's packets)
CID_B = header_fields(P["finish"])["conn_id"]    # the responder's id
NOT_AN_ID = next(i for i in (0xDEADBEEF, 0xDEADBEF0) if i not in (CID_A, CID_B))
KIND: dict[str, HsKind] = {"hello0": HsKind.HELLO, "hello": HsKind.HELLO,
                           "cookie": HsKind.COOKIE, "response": HsKind.RESPONSE,
                           "finish": HsKind.FINISH}
HS_ONE_EACH = ("hello", "cookie", "response", "finish")  # hello: with a valid cookie


def accepted(w: World, packet: str, now: float) -> None:
    """Deliver the genuine ``packet`` to its receiver and check that it got through."""
    ep = w.receiver(packet)
    before = counters(ep)
    ep.receive_datagram(w.packets[packet], w.source(packet), now)
    moved = delta(before, counters(ep))
    assert not set(moved) & set(DROPS), f"the genuine {packet} was dropped: {moved}"
    ep.datagrams_to_send(now)
    ep.events()


def dropped(stage: str, data: bytes, counter: str, *, target: str | None = None,
            src: Address | None = None, later: float = 0.0) -> None:
    """Send ``data`` where the genuine ``stage`` datagram goes and check it changes nothing.

    The token bucket is part of the snapshot unless the drop is ``crypto``:
    docs/protocol.md section 4 takes the token at step 3, before the AEAD of step 5.
    ``later`` delays the datagram (and the genuine one after it) by that many seconds.
    """
    w = build(stage)
    name = target if target is not None else RECEIVER[stage]
    ep = w.endpoint(name)
    source = src if src is not None else w.source(stage)
    now = w.now + STEP + later
    bucket = counter != CRYPTO
    state, before = snapshot(ep, bucket), counters(ep)

    ep.receive_datagram(data, source, now)

    out = ep.datagrams_to_send(now)
    assert out == [], f"answered with {[d[:HEADER_LEN + 1].hex() for d, _ in out]}"
    assert ep.events() == []
    assert delta(before, counters(ep)) == {"packets_received": 1, counter: 1}
    assert diff(state, snapshot(ep, bucket)) == []
    # Legitimate traffic is unaffected: the genuine datagram still gets through.
    accepted(w, stage, now)


# ------------------------------------------------------------------ controls


@pytest.mark.parametrize("packet", PACKETS)
def test_genuine_datagram_is_accepted_where_it_is_sent(packet: str) -> None:
    """Control: each captured datagram, whole, gets through to its receiver and acts."""
    w = build(packet)
    ep = w.receiver(packet)
    now = w.now + STEP
    state = snapshot(ep)
    before = counters(ep)
    ep.receive_datagram(w.packets[packet], w.source(packet), now)
    out = ep.datagrams_to_send(now)
    events = ep.events()
    moved = delta(before, counters(ep))
    assert not set(moved) & set(DROPS), moved
    assert out or events or diff(state, snapshot(ep)), f"{packet} had no effect"


# ------------------------------------------------------------------ truncation

TRUNCATIONS = [pytest.param(p, n, id=f"{p}-len{n}") for p in PACKETS for n in range(len(P[p]))]


@pytest.mark.parametrize(("packet", "length"), TRUNCATIONS)
def test_truncated_datagram_is_dropped_as_malformed(packet: str, length: int) -> None:
    """Every prefix of every real datagram, the empty one included (docs/protocol.md 3: lengths)."""
    dropped(packet, P[packet][:length], MALFORMED)


@pytest.mark.parametrize("packet", PACKETS)
@pytest.mark.parametrize("extra", [b"\x00", b"\xff" * 16])
def test_datagram_with_trailing_bytes_is_dropped_as_malformed(packet: str, extra: bytes) -> None:
    dropped(packet, P[packet] + extra, MALFORMED)


# ------------------------------------------------------------------ oversize

def oversize(packet: str, size: int) -> bytes:
    """The datagram padded to ``size`` bytes, its payload_len rewritten to match."""
    data = P[packet]
    tag = 0 if packet in HS_PACKETS else TAG_LEN
    padded = data + bytes(size - len(data))
    return rewrite(padded, payload_len=min(size - HEADER_LEN - tag, 0xFFFF))


@pytest.mark.parametrize("packet", PACKETS)
@pytest.mark.parametrize("size", [MAX_PACKET_SIZE + 1, 65507], ids=["2049", "65507"])
def test_oversize_datagram_is_dropped_as_malformed(packet: str, size: int) -> None:
    """Longer than MAX_PACKET_SIZE, even with a payload_len that agrees (docs/protocol.md 3)."""
    dropped(packet, oversize(packet, size), MALFORMED)


def test_consistent_datagram_of_max_packet_size_reaches_the_crypto_step() -> None:
    """Boundary control of the case above: 2048 bytes passes section 3 (then fails AEAD)."""
    dropped("data_realtime", oversize("data_realtime", MAX_PACKET_SIZE), CRYPTO)


@pytest.mark.parametrize("size", [MAX_PACKET_SIZE, MAX_PACKET_SIZE + 1])
def test_authentic_datagram_above_max_datagram_is_accepted_up_to_max_packet_size(
        size: int) -> None:
    """MAX_DATAGRAM bounds what a sender builds; a receiver accepts up to MAX_PACKET_SIZE.

    Sealed with the real key: 2048 bytes is delivered, 2049 is malformed (not a strike,
    not decrypted: the replay window does not move).
    """
    w = build(ESTABLISHED)
    assert w.b.config.max_datagram < size
    message = (bytes(range(256)) * 8)[:size - HEADER_LEN - TAG_LEN - 2]
    datagram = seal(w.a, w.cid_a, PacketType.DATA, U16.pack(len(message)) + message,
                    intent=Intent.REALTIME)
    assert len(datagram) == size
    session = w.session_b()
    state, before = session_snapshot(session), counters(w.b)
    w.b.receive_datagram(datagram, A_ADDR, w.now)
    events = w.b.events()
    if size <= MAX_PACKET_SIZE:
        assert [e.data for e in events if isinstance(e, MessageReceived)] == [message]
        assert session.replay.highest == header_fields(datagram)["seq"]
    else:
        assert events == []
        assert delta(before, counters(w.b)) == {"packets_received": 1, MALFORMED: 1}
        assert diff(state, session_snapshot(session)) == []


# ------------------------------------------------------------------ header fields

def _header_cases() -> list[object]:
    cases: list[object] = []

    def add(packet: str, what: str, **changes: int) -> None:
        cases.append(pytest.param(packet, changes, id=f"{packet}-{what}"))

    for p in PACKETS:
        for v in (0, 1, 3, 15):  # 1: a version 1 datagram
            add(p, f"version{v}", version=v)
        for t in (4, 15):
            add(p, f"type{t}", ptype=t)
        for i in (2, 3):
            add(p, f"intent{i}", intent=i)
        if not p.startswith("data"):
            # X (bit 2) only in DATA (protocol.md 14.4); extended DATA: test_fragments_hostile
            add(p, "bit2-set", reserved=1)
        length = header_fields(P[p])["payload_len"]
        for d in (-1, 1):
            add(p, f"payload_len{d:+d}", payload_len=length + d)
    for p in HS_PACKETS:
        add(p, "realtime", intent=int(Intent.REALTIME))
        for prio in (1, 7):
            add(p, f"priority{prio}", priority=prio)
        add(p, "key_phase1", key_phase=1)
        add(p, "seq1", seq=1)
        add(p, "seq-max", seq=0xFFFFFFFF)
        add(p, "ack1", ack=1)
    # The A bit (docs/protocol.md section 3): HS and CLOSE never ask for an ACK,
    # RELIABLE DATA always does.
    for p in HS_PACKETS:
        add(p, "ack-eliciting", ack_eliciting=1)
    add("close", "ack-eliciting", ack_eliciting=1)
    add("data_reliable", "not-ack-eliciting", ack_eliciting=0)
    for p in ("ack_credit", "ack_confirm", "ack_answer", "ack", "close"):
        add(p, "realtime", intent=int(Intent.REALTIME))
        for prio in (1, 7):
            add(p, f"priority{prio}", priority=prio)
    add("close", "ack1", ack=1)
    add("close", "ack-max", ack=0xFFFFFFFF)
    for p in SEALED_PACKETS:
        add(p, "conn_id0", conn_id=0)
    # Type confusion where the other type's rules then fail.
    add("data_reliable", "as-ack", ptype=int(PacketType.ACK))
    add("data_reliable", "as-close", ptype=int(PacketType.CLOSE))
    add("data_reliable", "as-hs", ptype=int(PacketType.HS))
    add("ack", "as-close", ptype=int(PacketType.CLOSE))
    add("ack", "as-reliable-data-with-a0", ptype=int(PacketType.DATA))
    add("close", "as-data", ptype=int(PacketType.DATA))
    add("close", "as-ack", ptype=int(PacketType.ACK))
    add("finish", "as-data", ptype=int(PacketType.DATA))
    add("hello0", "as-close", ptype=int(PacketType.CLOSE))
    return cases


@pytest.mark.parametrize(("packet", "changes"), _header_cases())
def test_header_field_out_of_range_is_dropped_as_malformed(
        packet: str, changes: dict[str, int]) -> None:
    """One header field of a real datagram breaks a rule of docs/protocol.md section 3."""
    dropped(packet, rewrite(P[packet], **changes), MALFORMED)


@pytest.mark.parametrize("src", [None, ATTACKER], ids=["from-peer", "from-elsewhere"])
@pytest.mark.parametrize(("packet", "changes"), [
    pytest.param("ack_confirm", {"ptype": int(PacketType.DATA)}, id="ack-as-reliable-data"),
    pytest.param("data_realtime", {"intent": int(Intent.RELIABLE)}, id="realtime-as-reliable"),
    pytest.param("data_reliable", {"intent": int(Intent.REALTIME)}, id="reliable-as-realtime"),
    pytest.param("data_reliable", {"priority": 0}, id="data-priority"),
    pytest.param("data_reliable", {"key_phase": 1}, id="data-key-phase"),
    pytest.param("data_reliable", {"ack": 1}, id="data-ack"),
    pytest.param("ack", {"ack": 2}, id="ack-ack"),
    pytest.param("close", {"key_phase": 1}, id="close-key-phase"),
    # The A bit is free where section 3 leaves it free, and bound by the aad.
    pytest.param("ack", {"ack_eliciting": 1}, id="ack-made-ack-eliciting"),
    pytest.param("ack_confirm", {"ack_eliciting": 0}, id="ack-made-not-ack-eliciting"),
    pytest.param("data_realtime", {"ack_eliciting": 0}, id="realtime-made-not-ack-eliciting"),
])
def test_valid_header_rewrite_fails_authentication(packet: str, changes: dict[str, int],
                                                    src: Address | None) -> None:
    """A rewrite that still satisfies section 3 reaches the AEAD, which binds the
    header (aad): dropped as crypto, nothing in the session changes (docs/protocol.md 4 step 5),
    its address included (no roaming on a forged packet)."""
    dropped(packet, rewrite(P[packet], **changes), CRYPTO, src=src)


SIZE_RULES = [
    *(pytest.param("data_realtime", n, id=f"realtime-payload{n}") for n in (0, 1, 2)),
    *(pytest.param("data_reliable", n, id=f"reliable-payload{n}") for n in (0, 3, 6)),
    *(pytest.param(p, n, id=f"{p}-payload{n}") for p in ("ack_credit", "ack_confirm", "ack")
      for n in (0, 1, 8, 16, 27, 29)),
    *(pytest.param("close", n, id=f"close-payload{n}") for n in (0, 2, 8)),
]


@pytest.mark.parametrize(("packet", "payload_len"), SIZE_RULES)
def test_sealed_packet_below_or_off_its_size_is_dropped_as_malformed(
        packet: str, payload_len: int) -> None:
    """DATA >= 3 / >= 7, ACK == 28, CLOSE == 1, with a datagram length that agrees."""
    dropped(packet, resize_sealed(P[packet], payload_len), MALFORMED)


# ------------------------------------------------------------------ HS bodies

def _hs_size_cases() -> list[object]:
    cases: list[object] = []
    for p in HS_ONE_EACH:
        right = HS_BODY_LEN[KIND[p]]
        sizes = {0, 1, 4, 5, right - 1, right + 1, *HS_BODY_LEN.values()} - {right}
        cases.extend(pytest.param(p, s, id=f"{p}-body{s}") for s in sorted(sizes))
    return cases


@pytest.mark.parametrize(("packet", "size"), _hs_size_cases())
def test_hs_body_of_the_wrong_size_for_its_kind_is_dropped_as_malformed(
        packet: str, size: int) -> None:
    """docs/protocol.md 5: a body length that does not match the kind (payload_len agrees)."""
    dropped(packet, resize_body(P[packet], size), MALFORMED)


@pytest.mark.parametrize("packet", HS_ONE_EACH)
@pytest.mark.parametrize("kind", [0, 5, 0x80, 0xFF])
def test_unknown_hs_kind_is_dropped_as_malformed(packet: str, kind: int) -> None:
    data = bytearray(P[packet])
    data[HEADER_LEN] = kind
    dropped(packet, bytes(data), MALFORMED)


@pytest.mark.parametrize(("packet", "kind"), [
    pytest.param(p, k, id=f"{p}-as-{k.name.lower()}")
    for p in HS_ONE_EACH for k in HsKind if k is not KIND[p]])
def test_hs_kind_swapped_keeps_the_wrong_size_and_is_dropped(packet: str, kind: HsKind) -> None:
    data = bytearray(P[packet])
    data[HEADER_LEN] = kind
    dropped(packet, bytes(data), MALFORMED)


def set_sender_id(data: bytes, sender_id: int) -> bytes:
    return data[:HEADER_LEN + 1] + U32.pack(sender_id) + data[HEADER_LEN + 5:]


HS_BAD_IDS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("hello-conn_id-set", lambda d: rewrite(d, conn_id=CID_B)),
    ("hello-sender0", lambda d: set_sender_id(d, 0)),
    ("cookie-sender-set", lambda d: set_sender_id(d, CID_B)),
    ("cookie-conn_id0", lambda d: rewrite(d, conn_id=0)),
    ("response-sender0", lambda d: set_sender_id(d, 0)),
    ("response-conn_id0", lambda d: rewrite(d, conn_id=0)),
    ("finish-sender0", lambda d: set_sender_id(d, 0)),
    ("finish-conn_id0", lambda d: rewrite(d, conn_id=0)),
]


@pytest.mark.parametrize(("case", "damage"), HS_BAD_IDS, ids=[c for c, _ in HS_BAD_IDS])
def test_hs_with_an_id_of_zero_where_it_must_not_be_is_dropped(
        case: str, damage: Callable[[bytes], bytes]) -> None:
    """docs/protocol.md 3/5: conn_id 0 only in HELLO; sender_id 0 only in COOKIE."""
    packet = case.split("-", maxsplit=1)[0]
    dropped(packet, damage(P[packet]), MALFORMED)


@pytest.mark.parametrize("src", [("not-an-ip", 4001), ("10.0.0.1", 70000), ("10.0.0.1",)],
                         ids=["hostname", "port-70000", "no-port"])
def test_hello_from_a_source_that_is_not_an_ip_address_is_dropped(src: Address) -> None:
    """No cookie can be bound to it (docs/protocol.md 5 cookie input): malformed, not answered."""
    dropped("hello0", P["hello0"], MALFORMED, src=src)


# ------------------------------------------------------------------ unknown ids and states

@pytest.mark.parametrize("packet", [*SEALED_PACKETS, "cookie", "response", "finish"])
def test_datagram_for_an_unknown_conn_id_is_dropped_as_unknown(packet: str) -> None:
    dropped(packet, rewrite(P[packet], conn_id=NOT_AN_ID), UNKNOWN)


@pytest.mark.parametrize("packet", ["data_reliable", "data_realtime", "close"])
def test_sealed_packet_for_a_pending_handshake_is_dropped_as_unknown(packet: str) -> None:
    """docs/protocol.md 4 step 2: a session not yet able to decrypt (the responder
    before FINISH)."""
    dropped("finish", P[packet], UNKNOWN)


WRONG_STATE = [
    # (stage, receiver, datagram, source, delay): an HS kind the session's state does not
    # expect. The delay puts a replayed FINISH past one RTO, when a FINISH from the
    # session's own address would be answered (docs/protocol.md 5 flow 6).
    pytest.param("finish", "b", rewrite(P["cookie"], conn_id=CID_B), A_ADDR, 0.0,
                 id="cookie-to-pending-responder"),
    pytest.param("finish", "b", rewrite(P["response"], conn_id=CID_B), A_ADDR, 0.0,
                 id="response-to-pending-responder"),
    pytest.param("close", "b", rewrite(P["response"], conn_id=CID_B), A_ADDR, 0.0,
                 id="response-to-established-responder"),
    pytest.param("ack_confirm", "a", P["cookie"], B_ADDR, 0.0, id="cookie-after-response"),
    pytest.param("ack_confirm", "a", P["response"], B_ADDR, 0.0,
                 id="response-replayed-to-initiator"),
    pytest.param("ack_confirm", "a", rewrite(P["finish"], conn_id=CID_A), B_ADDR, 0.0,
                 id="finish-to-initiator"),
    pytest.param("response", "a", P["response"], ATTACKER, 0.0, id="response-from-elsewhere"),
    pytest.param("cookie", "a", P["cookie"], ATTACKER, 0.0, id="cookie-from-elsewhere"),
    pytest.param("cookie", "a", P["cookie"][:HEADER_LEN + 5] + bytes(16), B_ADDR, 0.0,
                 id="cookie-equal-to-the-one-in-use"),
    pytest.param("response", "a", P["cookie"], B_ADDR, 0.0, id="cookie-replayed"),
    pytest.param("response", "a", P["cookie"][:-1] + bytes([P["cookie"][-1] ^ 1]), B_ADDR, 0.0,
                 id="second-new-cookie-within-one-rto"),
    pytest.param("finish", "b", set_sender_id(P["finish"], CID_B), A_ADDR, 0.0,
                 id="finish-wrong-sender-id"),
    pytest.param("close", "b", P["finish"], ATTACKER, 1.0, id="finish-replayed-from-elsewhere"),
]


@pytest.mark.parametrize(("stage", "target", "data", "src", "later"), WRONG_STATE)
def test_hs_aimed_at_a_session_in_the_wrong_state_is_dropped_as_unknown(
        stage: str, target: str, data: bytes, src: Address, later: float) -> None:
    dropped(stage, data, UNKNOWN, target=target, src=src, later=later)


# ------------------------------------------------------------------ authenticated packets

AUTH_MALFORMED = [
    pytest.param(PacketType.ACK, Intent.RELIABLE, bytes(n), id=f"ack-payload{n}")
    for n in (0, 8, 27, 29)
] + [
    pytest.param(PacketType.CLOSE, Intent.RELIABLE, bytes(n), id=f"close-payload{n}")
    for n in (0, 2)
] + [
    pytest.param(PacketType.DATA, Intent.REALTIME, b"\x00\x00"[:n], id=f"realtime-payload{n}")
    for n in (0, 2)
] + [
    pytest.param(PacketType.DATA, Intent.RELIABLE, U32.pack(9)[:n] + b"\x00\x01a"[:max(0, n - 4)],
                 id=f"reliable-payload{n}")
    for n in (3, 6)
]


@pytest.mark.parametrize(("ptype", "intent", "plaintext"), AUTH_MALFORMED)
def test_sealed_with_the_real_key_but_off_section_3_is_malformed_not_a_strike(
        ptype: PacketType, intent: Intent, plaintext: bytes) -> None:
    """Section 3 runs before any cryptography: a genuine key does not make a packet
    that breaks it a violation. No strike, no close, the replay window does not move."""
    w = build(ESTABLISHED)
    datagram = seal(w.a, w.cid_a, ptype, plaintext, intent=intent)
    state, before = snapshot(w.b), counters(w.b)
    w.b.receive_datagram(datagram, A_ADDR, w.now)
    assert w.b.datagrams_to_send(w.now) == []
    assert w.b.events() == []
    assert delta(before, counters(w.b)) == {"packets_received": 1, MALFORMED: 1}
    assert diff(state, snapshot(w.b)) == []


def _violations() -> list[object]:
    w = build(ESTABLISHED)
    edge = w.session_b().recv_window.edge  # the highest credit edge b advertised
    pn_next = w.session_b().pn_next        # b never sent this pn (nor any above it)
    nxt = len(RELIABLE_MESSAGES) + 1  # b has delivered rseq 1..3
    return [
        pytest.param(PacketType.DATA, Intent.REALTIME, b"\x00\x01a\x00\x05bc", None,
                     id="realtime-second-length-beyond"),
        pytest.param(PacketType.DATA, Intent.REALTIME, b"\x00\x01a\x00\x00", None,
                     id="realtime-second-length-zero"),
        pytest.param(PacketType.DATA, Intent.REALTIME, b"\x00\x01a\x07", None,
                     id="realtime-trailing-byte"),
        pytest.param(PacketType.DATA, Intent.RELIABLE,
                     U32.pack(nxt) + b"\x00\x01a\x00\x00\x00\x01b", None,
                     id="reliable-zero-length-between"),
        pytest.param(PacketType.DATA, Intent.RELIABLE, U32.pack(nxt) + b"\x00\x01a\x00", None,
                     id="reliable-truncated-second-prefix"),
        # v1 bounded rseq by MAX_RELIABLE_IN_FLIGHT; v2 by the credit edge advertised.
        pytest.param(PacketType.DATA, Intent.RELIABLE,
                     U32.pack(edge) + b"\x00\x01a\x00\x01b", None,
                     id="reliable-packet-crossing-credit-edge"),
        pytest.param(PacketType.DATA, Intent.RELIABLE, U32.pack(nxt) + b"\x00\x01a", 1,
                     id="reliable-data-acks-never-sent"),
        pytest.param(PacketType.ACK, Intent.RELIABLE, ACK_BODY.pack(1 << 63, 0, 0, 0, 0), 0,
                     id="ack-bitmap-bit63-never-sent"),
        pytest.param(PacketType.ACK, Intent.RELIABLE, ACK_BODY.pack(0, pn_next, 0, 0, 0), 0,
                     id="ack-largest-pn-never-sent"),
        pytest.param(PacketType.ACK, Intent.RELIABLE,
                     ACK_BODY.pack(0, pn_next - 1, 1 << (pn_next - 2), 0, 0), 0,
                     id="ack-pn-bitmap-names-pn-0"),
    ]


@pytest.mark.parametrize(("ptype", "intent", "plaintext", "ack"), _violations())
def test_authenticated_bad_framing_is_a_strike_and_delivers_nothing(
        ptype: PacketType, intent: Intent, plaintext: bytes, ack: int | None) -> None:
    """docs/protocol.md 4/6/8: an authenticated packet whose framing or acknowledgement is wrong is
    a violation: one strike; none of its messages (even well-framed ones before the
    error) is delivered; the windows do not move; the pn is spent (it authenticated)."""
    w = build(ESTABLISHED)
    session = w.session_b()
    datagram = seal(w.a, w.cid_a, ptype, plaintext, intent=intent, ack=ack)
    pn = header_fields(datagram)["seq"]
    state, before = session_snapshot(session), counters(w.b)
    w.b.receive_datagram(datagram, A_ADDR, w.now)

    assert w.b.events() == []
    assert delta(before, counters(w.b)) == {"packets_received": 1, "strike_events": 1}
    after = session_snapshot(session)
    assert session.strikes == 1
    assert session.replay.highest == pn  # authenticated: committed at step 6
    changed = {line.split(":")[0].split(".")[1] for line in diff(state, after)}
    # v2: the pn authenticated, so it is acknowledged like any other (pn_acks, and
    # for DATA the ACK timer in the queue); nothing else of the packet acts.
    assert changed <= {"strikes", "replay", "times", "bucket", "pn_acks", "queue"}, \
        diff(state, after)
    assert (session.queued, session.retransmit) == (0, [])
    assert session.state is SessionState.ESTABLISHED


@pytest.mark.parametrize("reason", [5, 0x80, 0xFF])
def test_authenticated_close_with_an_unknown_reason_closes_as_violation(reason: int) -> None:
    """Implementation choice (docs/protocol.md 12): a reason above 4 reads as
    PROTOCOL_VIOLATION; the peer closed, so nothing is sent back."""
    w = build(ESTABLISHED)
    datagram = seal(w.a, w.cid_a, PacketType.CLOSE, bytes([reason]), ack=0)
    w.b.receive_datagram(datagram, A_ADDR, w.now)
    assert w.b.datagrams_to_send(w.now) == []
    [closed] = [e for e in w.b.events() if isinstance(e, SessionClosed)]
    assert (closed.reason, closed.by_peer) == (CloseReason.PROTOCOL_VIOLATION, True)
    assert w.cid_b not in w.b.sessions
