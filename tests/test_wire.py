"""Header and HS body codec (docs/protocol.md sections 3 and 5) and pn recovery (section 4).

Expected bytes are never computed with the code under test: golden vectors come from
tests/vectors/header_vectors.json (worked out by hand, see its ``derivation``), and
other datagrams are built here with ``int.to_bytes``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intentra.core.wire import (
    Header,
    HsBody,
    pack_cookie_reply,
    pack_finish,
    pack_header,
    pack_hello,
    pack_response,
    parse_header,
    recover_pn,
    unpack_header,
    unpack_hs,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "header_vectors.json").read_text())

DATA, ACK, HS, CLOSE = 0, 1, 2, 3
RELIABLE, REALTIME = 0, 1
HDR = 16
TAG = 16
MAX = 2048
HELLO, COOKIE, RESPONSE, FINISH = 1, 2, 3, 4
BODY_LEN = {HELLO: 112, COOKIE: 21, RESPONSE: 101, FINISH: 69}
U32 = 2**32


def u(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


def parts(spec: list[list[Any]]) -> bytes:
    return bytes.fromhex("".join(str(h) * int(n) for h, n in spec))


def datagram(ptype: int, *, intent: int = 0, priority: int = 0, key_phase: int = 0,
             payload_len: int | None = None, conn_id: int = 1, seq: int = 1, ack: int = 0,
             version: int = 2, reserved: int = 0, ack_eliciting: int | None = None,
             extra: int = 0, byte0: int | None = None) -> bytes:
    """A datagram built independently of intentra: header, then zeros.

    The zeros stand for payload and tag: payload_len + 16 bytes for DATA/ACK/CLOSE
    (and any unknown type), payload_len for HS, plus ``extra`` (may be negative).
    ``reserved`` is bit 2 of byte 1; ``ack_eliciting`` (bit 1, A) defaults to 1 for
    DATA and 0 otherwise.
    """
    if payload_len is None:
        payload_len = {DATA: 7 if intent == RELIABLE else 3, ACK: 28, HS: 112, CLOSE: 1}[ptype]
    if ack_eliciting is None:
        ack_eliciting = 1 if ptype == DATA else 0
    b0 = (version << 4 | ptype) if byte0 is None else byte0
    b1 = intent << 6 | priority << 3 | reserved << 2 | ack_eliciting << 1 | key_phase
    header = bytes([b0, b1]) + u(payload_len, 2) + u(conn_id, 4) + u(seq, 4) + u(ack, 4)
    body = payload_len + (0 if ptype == HS else TAG) + extra
    return header + bytes(max(body, 0))


def hs_datagram(kind: int, *, conn_id: int = 0, sender_id: int = 0, body_len: int | None = None
                ) -> bytes:
    """An HS datagram whose header is valid, with a body of ``body_len`` bytes."""
    if body_len is None:
        body_len = BODY_LEN[kind]
    body = (bytes([kind]) + u(sender_id, 4))[:body_len]
    body += bytes(body_len - len(body))
    header = bytes([0x22, 0]) + u(body_len, 2) + u(conn_id, 4) + bytes(8)
    return header + body


# --- (a) golden header vectors ----------------------------------------------------------

HEADER_VECTORS = [pytest.param(v, id=v["name"]) for v in VECTORS["headers"]]


def fields(v: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(v.get(k, 0)) for k in ("ptype", "intent", "priority", "key_phase",
                                            "payload_len", "conn_id", "seq", "ack",
                                            "ack_eliciting", "extended"))


@pytest.mark.parametrize("vector", HEADER_VECTORS)
def test_pack_header_golden(vector: dict[str, Any]) -> None:
    assert pack_header(*fields(vector)).hex() == vector["hex"]


@pytest.mark.parametrize("vector", HEADER_VECTORS)
def test_unpack_header_golden(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    tail = vector["payload_len"] + (0 if vector["ptype"] == HS else TAG)
    header = unpack_header(raw + bytes(tail))
    assert header == Header(*fields(vector))
    # memoryview input gives the same answer
    assert unpack_header(memoryview(raw + bytes(tail))) == header


def test_golden_vectors_cover_every_type_and_phase() -> None:
    seen = {(v["ptype"], v["key_phase"]) for v in VECTORS["headers"]}
    assert {(DATA, 0), (DATA, 1), (ACK, 0), (ACK, 1), (CLOSE, 0), (CLOSE, 1), (HS, 0)} <= seen
    # and both values of the A bit where section 3 leaves it free
    eliciting = {(v["ptype"], v["intent"], v["ack_eliciting"]) for v in VECTORS["headers"]}
    assert {(DATA, REALTIME, 0), (DATA, REALTIME, 1), (ACK, RELIABLE, 0),
            (ACK, RELIABLE, 1), (DATA, RELIABLE, 1)} <= eliciting


@pytest.mark.parametrize(("ptype", "intent", "a_bit"), [
    (DATA, RELIABLE, 0x02), (DATA, REALTIME, 0x02), (ACK, RELIABLE, 0), (CLOSE, RELIABLE, 0),
    (HS, RELIABLE, 0)])
def test_pack_header_a_bit_defaults_to_the_usual_value(ptype: int, intent: int,
                                                       a_bit: int) -> None:
    """Without ``ack_eliciting``: A = 1 for DATA, 0 for ACK, CLOSE and HS."""
    assert pack_header(ptype, intent, 0, 0, 28, 1, 1, 0)[1] & 0x02 == a_bit


# --- (b) rejection rules of docs/protocol.md section 3 --------------------------------

BASELINES = {
    "data_reliable": {"ptype": DATA, "intent": RELIABLE},
    "data_realtime": {"ptype": DATA, "intent": REALTIME, "priority": 7},
    "ack": {"ptype": ACK, "ack": 5},
    "close": {"ptype": CLOSE},
    "hs": {"ptype": HS, "conn_id": 0, "seq": 0},
}


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_accepted(name: str) -> None:
    """Each rejection case below changes one thing in one of these accepted datagrams."""
    kw = dict(BASELINES[name])
    assert unpack_header(datagram(**kw)) is not None


def case(base: str, case_id: str, **changes: int) -> Any:
    kw = {**BASELINES[base], **changes}
    return pytest.param(kw, id=f"{base}-{case_id}")


REJECT = [
    # datagram length outside [HEADER_LEN, MAX_PACKET_SIZE]
    pytest.param(b"", id="empty"),
    pytest.param(bytes([0x20, 0x00]) + bytes(13), id="len15"),
    pytest.param(datagram(DATA, payload_len=2049 - 32), id="data-len2049-consistent"),
    pytest.param(datagram(HS, conn_id=0, seq=0, payload_len=2049 - 16), id="hs-len2049-consistent"),
    pytest.param(datagram(DATA, payload_len=MAX - 32) + bytes(100), id="data-len2148"),
]
REJECT_CASES = [
    # version != 2 (1: a version 1 datagram)
    *(case(b, f"version{v}", version=v) for b in BASELINES for v in (0, 1, 3, 15)),
    # type > 3
    *(case("data_reliable", f"type{t}", byte0=0x20 | t) for t in (4, 5, 15)),
    # intent > 1
    *(case("data_reliable", f"intent{i}", intent=i) for i in (2, 3)),
    # bit 2 of byte 1 is zero, with A either way
    *(case(b, f"bit2-a{a}", reserved=1, ack_eliciting=a) for b in BASELINES for a in (0, 1)),
    # the A bit: HS and CLOSE have A = 0, RELIABLE DATA has A = 1
    case("hs", "ack-eliciting", ack_eliciting=1),
    case("close", "ack-eliciting", ack_eliciting=1),
    case("data_reliable", "not-ack-eliciting", ack_eliciting=0),
    case("data_reliable", "not-ack-eliciting-prio7-phase1", ack_eliciting=0, priority=7,
         key_phase=1),
    # HS, ACK, CLOSE: intent RELIABLE and priority 0 only
    *(case(b, "realtime", intent=REALTIME) for b in ("ack", "close", "hs")),
    *(case(b, f"priority{p}", priority=p) for b in ("ack", "close", "hs") for p in (1, 4, 7)),
    # HS has key phase 0
    case("hs", "key_phase1", key_phase=1),
    # length mismatch (payload_len says one thing, the datagram is longer or shorter)
    *(case(b, f"len{d:+d}", extra=d) for b in BASELINES for d in (-1, 1, 16)),
    case("data_reliable", "no-tag", extra=-16),
    case("ack", "no-tag", extra=-16),
    case("close", "no-tag", extra=-16),
    # HS: seq == 0 and ack == 0
    case("hs", "seq1", seq=1),
    case("hs", "seq-max", seq=U32 - 1),
    case("hs", "ack1", ack=1),
    case("hs", "ack-max", ack=U32 - 1),
    # DATA minimum payloads
    *(case("data_realtime", f"payload{n}", payload_len=n) for n in (0, 1, 2)),
    *(case("data_reliable", f"payload{n}", payload_len=n) for n in (0, 3, 6)),
    # ACK payload_len == 28 (8 was version 1's)
    *(case("ack", f"payload{n}", payload_len=n) for n in (0, 7, 8, 9, 16, 27, 29)),
    # CLOSE payload_len == 1, ack == 0
    *(case("close", f"payload{n}", payload_len=n) for n in (0, 2, 8)),
    case("close", "ack1", ack=1),
    case("close", "ack-max", ack=U32 - 1),
    # conn_id 0 only in HS (docs/protocol.md 3: "0 only where 5 says so")
    *(case(b, "conn_id0", conn_id=0) for b in ("data_reliable", "data_realtime", "ack", "close")),
]


@pytest.mark.parametrize("raw", REJECT)
def test_unpack_header_rejects_raw(raw: bytes) -> None:
    assert unpack_header(raw) is None
    assert parse_header(raw) is None


@pytest.mark.parametrize("kw", REJECT_CASES)
def test_unpack_header_rejects(kw: dict[str, int]) -> None:
    raw = datagram(**kw)
    assert unpack_header(raw) is None
    assert parse_header(raw) is None  # the receive path's parser


ACCEPT = [
    pytest.param(datagram(DATA, intent=REALTIME, payload_len=3), 35, id="realtime-min-35"),
    pytest.param(datagram(DATA, intent=REALTIME, payload_len=4), 36, id="realtime-36"),
    pytest.param(datagram(DATA, intent=RELIABLE, payload_len=7), 39, id="reliable-min-39"),
    pytest.param(datagram(DATA, intent=REALTIME, payload_len=MAX - 32), MAX, id="realtime-2048"),
    pytest.param(datagram(DATA, intent=RELIABLE, payload_len=MAX - 32, priority=7, key_phase=1),
                 MAX, id="reliable-2048"),
    pytest.param(datagram(ACK, key_phase=1, seq=U32 - 1, ack=U32 - 1), 60, id="ack-60"),
    pytest.param(datagram(ACK, ack_eliciting=1), 60, id="ack-eliciting-60"),
    pytest.param(datagram(DATA, intent=REALTIME, ack_eliciting=0), 35, id="realtime-a0-35"),
    pytest.param(datagram(CLOSE, key_phase=1), 33, id="close-33"),
    pytest.param(datagram(HS, conn_id=0, seq=0, payload_len=MAX - 16), MAX, id="hs-2048"),
    pytest.param(datagram(HS, conn_id=7, seq=0, payload_len=21), 37, id="hs-37"),
]


@pytest.mark.parametrize(("raw", "length"), ACCEPT)
def test_unpack_header_accepts_boundaries(raw: bytes, length: int) -> None:
    assert len(raw) == length
    header = unpack_header(raw)
    assert header is not None
    assert header.payload_len == length - HDR - (0 if raw[0] == 0x22 else TAG)
    assert header.ack_eliciting == (raw[1] >> 1) & 1


def test_unpack_header_decodes_fields_of_built_datagram() -> None:
    raw = datagram(DATA, intent=REALTIME, priority=6, key_phase=1, payload_len=10,
                   conn_id=0xFEDCBA98, seq=0x01020304, ack=0x7FFFFFFF)
    assert unpack_header(raw) == Header(DATA, REALTIME, 6, 1, 10, 0xFEDCBA98, 0x01020304,
                                        0x7FFFFFFF, 1)
    raw = datagram(ACK, key_phase=1, conn_id=5, seq=6, ack=7, ack_eliciting=1)
    assert unpack_header(raw) == Header(ACK, RELIABLE, 0, 1, 28, 5, 6, 7, 1)


# --- (c) HS bodies ------------------------------------------------------------------

HS_VECTORS = [pytest.param(v, id=v["name"]) for v in VECTORS["hs"]]

PACKERS: dict[int, Callable[[int, int, bytes, bytes], bytes]] = {
    HELLO: lambda conn, sender, cookie, noise: pack_hello(sender, cookie, noise),
    COOKIE: lambda conn, sender, cookie, noise: pack_cookie_reply(conn, cookie),
    RESPONSE: lambda conn, sender, cookie, noise: pack_response(conn, sender, noise),
    FINISH: lambda conn, sender, cookie, noise: pack_finish(conn, sender, noise),
}


@pytest.mark.parametrize("vector", HS_VECTORS)
def test_hs_pack_golden_and_round_trip(vector: dict[str, Any]) -> None:
    kind = int(vector["kind"])
    cookie = parts(vector["cookie_parts"])
    noise = parts(vector["noise_parts"])
    expected = bytes.fromhex(vector["header_hex"]) + parts(vector["body_parts"])
    assert len(expected) == HDR + BODY_LEN[kind] == HDR + vector["body_len"]

    raw = PACKERS[kind](vector["conn_id"], vector["sender_id"], cookie, noise)
    assert raw == expected

    header = unpack_header(raw)
    assert header == Header(HS, RELIABLE, 0, 0, BODY_LEN[kind], vector["conn_id"], 0, 0)
    body = unpack_hs(raw, header)
    assert body is not None
    assert isinstance(body, HsBody)
    assert body.kind == kind
    assert body.sender_id == vector["sender_id"]
    assert bytes(body.noise) == noise
    if kind in (HELLO, COOKIE):
        assert bytes(body.cookie) == cookie


@pytest.mark.parametrize("vector", HS_VECTORS)
def test_hs_unpack_from_memoryview(vector: dict[str, Any]) -> None:
    raw = memoryview(bytes.fromhex(vector["header_hex"]) + parts(vector["body_parts"]))
    header = unpack_header(raw)
    assert header is not None
    body = unpack_hs(raw, header)
    assert body is not None
    assert body.sender_id == vector["sender_id"]


def hs_ids(kind: int) -> dict[str, int]:
    """Valid header conn_id and sender_id for each kind (docs/protocol.md 5 table)."""
    return {HELLO: {"conn_id": 0, "sender_id": 9}, COOKIE: {"conn_id": 9, "sender_id": 0},
            RESPONSE: {"conn_id": 9, "sender_id": 10},
            FINISH: {"conn_id": 10, "sender_id": 9}}[kind]


@pytest.mark.parametrize("kind", list(BODY_LEN))
def test_hs_valid_body_accepted(kind: int) -> None:
    raw = hs_datagram(kind, **hs_ids(kind))
    header = unpack_header(raw)
    assert header is not None
    body = unpack_hs(raw, header)
    assert body is not None
    assert body.kind == kind


WRONG_SIZES = [
    pytest.param(kind, size, id=f"kind{kind}-size{size}")
    for kind, right in BODY_LEN.items()
    for size in sorted({0, 1, 4, 5, 6, right - 1, right + 1, 2 * right, *BODY_LEN.values()}
                       - {right})
]


@pytest.mark.parametrize(("kind", "size"), WRONG_SIZES)
def test_hs_wrong_body_size_rejected(kind: int, size: int) -> None:
    raw = hs_datagram(kind, body_len=size, **hs_ids(kind))
    header = unpack_header(raw)
    # Section 3 alone does not know kinds; section 5 makes the datagram malformed.
    assert header is None or unpack_hs(raw, header) is None


@pytest.mark.parametrize("kind", [0, 5, 6, 0x7F, 0x80, 0xFF])
@pytest.mark.parametrize("size", sorted(set(BODY_LEN.values())))
def test_hs_unknown_kind_rejected(kind: int, size: int) -> None:
    raw = hs_datagram(kind, conn_id=9, sender_id=9, body_len=size)
    header = unpack_header(raw)
    assert header is not None
    assert unpack_hs(raw, header) is None


HS_BAD_IDS = [
    pytest.param(HELLO, 1, 9, id="hello-conn_id1"),
    pytest.param(HELLO, U32 - 1, 9, id="hello-conn_id-max"),
    pytest.param(HELLO, 0, 0, id="hello-sender0"),
    pytest.param(COOKIE, 9, 1, id="cookie-sender1"),
    pytest.param(COOKIE, 9, U32 - 1, id="cookie-sender-max"),
    pytest.param(COOKIE, 0, 0, id="cookie-conn_id0"),
    pytest.param(RESPONSE, 0, 10, id="response-conn_id0"),
    pytest.param(RESPONSE, 9, 0, id="response-sender0"),
    pytest.param(FINISH, 0, 9, id="finish-conn_id0"),
    pytest.param(FINISH, 10, 0, id="finish-sender0"),
]


@pytest.mark.parametrize(("kind", "conn_id", "sender_id"), HS_BAD_IDS)
def test_hs_bad_ids_rejected(kind: int, conn_id: int, sender_id: int) -> None:
    raw = hs_datagram(kind, conn_id=conn_id, sender_id=sender_id)
    header = unpack_header(raw)
    assert header is not None
    assert unpack_hs(raw, header) is None


# --- (d) properties ---------------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=MAX + 8))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    header = unpack_header(raw)
    if header is not None and header.ptype == HS:
        unpack_hs(raw, header)


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """Datagrams whose payload_len matches their length, so the deeper checks run."""
    ptype = draw(st.integers(0, 15))
    b1 = draw(st.integers(0, 255))
    n = draw(st.integers(0, 200))
    tag = 0 if ptype == HS else TAG
    body = draw(st.binary(min_size=n + tag, max_size=n + tag))
    conn_id = draw(st.sampled_from([0, 1, U32 - 1]))
    seq = draw(st.sampled_from([0, 1, U32 - 1]))
    ack = draw(st.sampled_from([0, 1, U32 - 1]))
    version = draw(st.sampled_from([2, 2, 2, 0, 1]))
    return (bytes([version << 4 | ptype, b1]) + u(n, 2) + u(conn_id, 4) + u(seq, 4)
            + u(ack, 4) + body)


@FAST
@given(near_valid())
def test_near_valid_bytes_never_raise(raw: bytes) -> None:
    header = unpack_header(raw)
    if header is not None and header.ptype == HS:
        unpack_hs(raw, header)


@FAST
@given(st.one_of(near_valid(), st.binary(max_size=64)))
def test_parse_header_agrees_with_unpack_header(raw: bytes) -> None:
    """The receive path's tuple parser applies exactly the same rules."""
    header = unpack_header(raw)
    parsed = parse_header(raw)
    assert parsed == (None if header is None else tuple(header))


@pytest.mark.parametrize("vector", HEADER_VECTORS)
def test_parse_header_golden(vector: dict[str, Any]) -> None:
    tail = vector["payload_len"] + (0 if vector["ptype"] == HS else TAG)
    assert parse_header(bytes.fromhex(vector["hex"]) + bytes(tail)) == fields(vector)


@FAST
@given(st.integers(0, 0xFF), st.integers(0, U32 - 1), st.integers(0, U32 - 1),
       st.binary(max_size=130))
def test_hs_bodies_never_raise_and_respect_table(kind: int, conn_id: int, sender_id: int,
                                                 rest: bytes) -> None:
    body = bytes([kind]) + u(sender_id, 4) + rest
    raw = bytes([0x22, 0]) + u(len(body), 2) + u(conn_id, 4) + bytes(8) + body
    header = unpack_header(raw)
    assert header is not None
    decoded = unpack_hs(raw, header)
    if decoded is not None:
        assert kind in BODY_LEN
        assert len(body) == BODY_LEN[kind]
        assert decoded.kind == kind
        assert decoded.sender_id == sender_id
        assert (conn_id == 0) == (kind == HELLO)
        assert (sender_id == 0) == (kind == COOKIE)


@st.composite
def valid_header_fields(draw: st.DrawFn) -> tuple[int, ...]:
    ptype = draw(st.sampled_from([DATA, ACK, HS, CLOSE]))
    u32 = st.integers(0, U32 - 1)
    nonzero = st.integers(1, U32 - 1)
    if ptype == DATA:
        intent = draw(st.sampled_from([RELIABLE, REALTIME]))
        low = 7 if intent == RELIABLE else 3
        a = 1 if intent == RELIABLE else draw(st.integers(0, 1))
        return (DATA, intent, draw(st.integers(0, 7)), draw(st.integers(0, 1)),
                draw(st.integers(low, MAX - 32)), draw(nonzero), draw(u32), draw(u32), a)
    if ptype == ACK:
        return (ACK, 0, 0, draw(st.integers(0, 1)), 28, draw(nonzero), draw(u32), draw(u32),
                draw(st.integers(0, 1)))
    if ptype == CLOSE:
        return (CLOSE, 0, 0, draw(st.integers(0, 1)), 1, draw(nonzero), draw(u32), 0, 0)
    return (HS, 0, 0, 0, draw(st.integers(0, MAX - 16)), draw(u32), 0, 0, 0)


@FAST
@given(valid_header_fields())
def test_valid_header_round_trip(f: tuple[int, ...]) -> None:
    ptype, intent, priority, key_phase, payload_len, conn_id, seq, ack, a = f
    expected = (bytes([0x20 | ptype, intent << 6 | priority << 3 | a << 1 | key_phase])
                + u(payload_len, 2) + u(conn_id, 4) + u(seq, 4) + u(ack, 4))
    raw = pack_header(*f)
    assert raw == expected
    tail = payload_len + (0 if ptype == HS else TAG)
    assert unpack_header(raw + bytes(tail)) == Header(*f)
    # One byte more or less is a length mismatch.
    assert unpack_header(raw + bytes(tail + 1)) is None
    if tail > 0:
        assert unpack_header(raw + bytes(tail - 1)) is None


# --- (e) packet-number recovery ---------------------------------------------------------

PN_CASES = [
    # RFC 9000 A.3 example itself (its 16-bit value fits the 32-bit field unchanged) ...
    pytest.param(0xA82F30EA, 0xA82F9B32, 0xA82F9B32, id="rfc9000-a3-literal"),
    # ... and scaled by 2**16 so that the 32-bit field plays the role of the 16-bit one.
    pytest.param(0xA82F30EA << 16, (0xA82F9B32 << 16) & 0xFFFFFFFF, 0xA82F9B32 << 16,
                 id="rfc9000-a3-scaled"),
    pytest.param(0, 1, 1, id="first-packet"),
    pytest.param(1, 2, 2, id="next"),
    pytest.param(100, 90, 90, id="reordered-same-epoch"),
    pytest.param(0, 0x7FFFFFFF, 0x7FFFFFFF, id="far-ahead-from-start"),
    pytest.param(10, 0xFFFFFFFF, 0xFFFFFFFF, id="no-negative-pn"),
    # just below 2**32, small seq -> next epoch
    pytest.param(0xFFFFFFFE, 0x00000000, 0x1_00000000, id="wrap-forward-0"),
    pytest.param(0xFFFFFFFF, 0x00000005, 0x1_00000005, id="wrap-forward-5"),
    pytest.param(0xFFFFFFF0, 0x7FFFFFF0, 0x1_7FFFFFF0, id="wrap-forward-half-window-minus-1"),
    pytest.param(0xFFFFFFF0, 0xFFFFFFF5, 0xFFFFFFF5, id="below-wrap-stays"),
    # just above 2**32, seq near 2**32 - 1 -> previous epoch
    pytest.param(0x1_00000001, 0xFFFFFFFF, 0xFFFFFFFF, id="wrap-back-max"),
    pytest.param(0x1_00000010, 0xFFFFFF00, 0xFFFFFF00, id="wrap-back-ff00"),
    pytest.param(0x1_00000000, 0x80000002, 0x80000002, id="wrap-back-half-window-minus-1"),
    pytest.param(0x1_00000000, 0x00000002, 0x1_00000002, id="above-wrap-stays"),
    pytest.param(0x2_00000005, 0x00000003, 0x2_00000003, id="epoch2-reorder"),
    pytest.param(0x2_FFFFFFFF, 0x00000000, 0x3_00000000, id="epoch2-to-3"),
    pytest.param(0x5_00000003, 0xFFFFFFFE, 0x4_FFFFFFFE, id="epoch5-to-4"),
    pytest.param(2**62 - 2, 0xFFFFFFFF, 2**62 - 1, id="pn-limit-minus-1"),
    pytest.param(2**62 - 5, 0xFFFFFFF0, 2**62 - 16, id="near-pn-limit-back"),
]


@pytest.mark.parametrize(("largest", "seq", "expected"), PN_CASES)
def test_recover_pn_table(largest: int, seq: int, expected: int) -> None:
    assert expected & 0xFFFFFFFF == seq  # the table is self-consistent
    assert recover_pn(largest, seq) == expected


@st.composite
def largest_and_pn(draw: st.DrawFn) -> tuple[int, int]:
    largest = draw(st.one_of(
        st.integers(0, 2**62 - 1),
        st.integers(0, 2**34),
        st.integers(-2**20, 2**20).map(lambda d: max(0, 2**32 + d)),
        st.integers(-2**20, 2**20).map(lambda d: max(0, 2**33 + d)),
    ))
    expected = largest + 1
    low = max(0, expected - 2**31 + 1)
    high = expected + 2**31 - 1
    pn = draw(st.one_of(st.integers(low, high), st.sampled_from([low, high, expected])))
    return largest, pn


@settings(max_examples=300, deadline=None)
@given(largest_and_pn())
def test_recover_pn_property(lp: tuple[int, int]) -> None:
    largest, pn = lp
    assert recover_pn(largest, pn & 0xFFFFFFFF) == pn
