"""Header, HS body and record codec (docs/protocol.md sections 3, 5, 7 and 14).

Owns: the byte layout of the 16-byte header, of the four HS bodies and of the
records of extended DATA packets (section 14.2), and every rejection rule of
docs/protocol.md section 3 (with 14.4).
Never: raises on bad input (bad bytes give None), touches keys or state.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from intentra.constants import (
    ACK_PAYLOAD_LEN,
    CLOSE_PAYLOAD_LEN,
    COOKIE_LEN,
    FRAGMENT_FLAG,
    HEADER_LEN,
    HELLO_PADDING,
    HS_BODY_LEN,
    MAX_PACKET_SIZE,
    NOISE_MSG1_LEN,
    TAG_LEN,
    VERSION,
    HsKind,
    Intent,
    PacketType,
)

HEADER: Final = struct.Struct("!BBHIII")
ACK_BODY: Final = struct.Struct("!QQQHH")
"""ACK plaintext: rseq_bitmap, largest_pn, pn_bitmap, ack_delay, credit."""
HS_PREFIX: Final = struct.Struct("!BI")
U16: Final = struct.Struct("!H")
U32: Final = struct.Struct("!I")
U64: Final = struct.Struct("!Q")

_DATA, _ACK, _HS, _CLOSE = (int(t) for t in PacketType)
_RELIABLE, _REALTIME = int(Intent.RELIABLE), int(Intent.REALTIME)
_MIN_DATA_PAYLOAD: Final = {_RELIABLE: 7, _REALTIME: 3}
_MIN_EXTENDED_PAYLOAD: Final = {_RELIABLE: 13, _REALTIME: 5}
REC_RELIABLE: Final = struct.Struct("!BBIH")
"""A whole RELIABLE record's header: lane, flags, lseq, len (section 14.2)."""
REC_FRAGMENT: Final = struct.Struct("!BBIIIH")
"""A fragment record's header: lane, flags, lseq or mid, offset, total, len."""
REC_REALTIME: Final = struct.Struct("!BBH")
"""A whole REALTIME record's header: lane, flags, len."""
_HELLO_ZEROS: Final = bytes(HELLO_PADDING)
_ZERO_COOKIE: Final = bytes(COOKIE_LEN)


class Header(NamedTuple):
    """A decoded header. ``seq`` is the low 32 bits of the packet number."""

    ptype: int
    intent: int
    priority: int
    key_phase: int
    payload_len: int
    conn_id: int
    seq: int
    ack: int
    ack_eliciting: int = 0
    extended: int = 0


def pack_header(ptype: int, intent: int, priority: int, key_phase: int, payload_len: int,
                conn_id: int, seq: int, ack: int, ack_eliciting: int | None = None,
                extended: int = 0) -> bytes:
    """The 16 header bytes; arguments are not checked (the sender builds them).

    ``ack_eliciting`` (the ``A`` bit) defaults to what the rules of section 3 make
    usual: 1 for DATA, 0 for the other types. ``extended`` is the ``X`` bit.
    """
    if ack_eliciting is None:
        ack_eliciting = 1 if ptype == _DATA else 0
    return HEADER.pack((VERSION << 4) | ptype,
                       (intent << 6) | (priority << 3) | (extended << 2)
                       | (ack_eliciting << 1) | key_phase,
                       payload_len, conn_id, seq, ack)


def unpack_header(data: bytes | memoryview) -> Header | None:
    """Decode and check a datagram's header against every rule of docs/protocol.md section 3.

    Returns:
        The header, or None when the datagram must be dropped as malformed.
    """
    fields = parse_header(data)
    return None if fields is None else Header._make(fields)


def parse_header(data: bytes | memoryview
                 ) -> tuple[int, int, int, int, int, int, int, int, int, int] | None:
    """:func:`unpack_header` as a plain tuple, for the receive path (no object per packet).

    The last field is ``X``: 1 only for extended DATA (section 14).
    """
    n = len(data)
    if n < HEADER_LEN or n > MAX_PACKET_SIZE:
        return None
    b0, b1, payload_len, conn_id, seq, ack = HEADER.unpack_from(data)
    if b0 >> 4 != VERSION:
        return None
    ptype = b0 & 0x0F
    intent = b1 >> 6
    priority = (b1 >> 3) & 0x07
    key_phase = b1 & 0x01
    eliciting = (b1 >> 1) & 0x01
    extended = (b1 >> 2) & 0x01
    if ptype > _CLOSE or intent > _REALTIME:
        return None
    if ptype == _DATA:
        if n != HEADER_LEN + payload_len + TAG_LEN or payload_len < _MIN_DATA_PAYLOAD[intent]:
            return None
        if conn_id == 0 or (intent == _RELIABLE and not eliciting):
            return None
        if extended and payload_len < _MIN_EXTENDED_PAYLOAD[intent]:
            return None  # section 14.4
    else:
        if extended:
            return None  # X only in DATA (section 14.4)
        if intent != _RELIABLE or priority != 0:
            return None
        if ptype == _HS:
            if key_phase or eliciting or n != HEADER_LEN + payload_len or seq or ack:
                return None
        elif n != HEADER_LEN + payload_len + TAG_LEN or conn_id == 0:
            return None
        elif ptype == _ACK:
            if payload_len != ACK_PAYLOAD_LEN:
                return None
        elif payload_len != CLOSE_PAYLOAD_LEN or ack or eliciting:  # CLOSE
            return None
    return ptype, intent, priority, key_phase, payload_len, conn_id, seq, ack, eliciting, extended


# --- records of extended DATA (docs/protocol.md section 14.2) -------------------------------

Record = tuple[int, int, int, int, int, bytes]
"""A decoded record: lane, fragment (0 or 1), lseq or mid (0 for a whole REALTIME
record), offset, total (0 and the data's length for a whole record), data."""


def pack_record(reliable: bool, lane: int, ident: int, data: bytes | memoryview,
                offset: int = 0, total: int | None = None) -> bytes:
    """One record's header (without ``data``); ``total`` None makes a whole record.

    ``ident`` is the lseq (RELIABLE) or the mid (a REALTIME fragment); it is not
    written for a whole REALTIME record.
    """
    n = len(data)
    if total is not None:
        return REC_FRAGMENT.pack(lane, FRAGMENT_FLAG, ident, offset, total, n)
    if reliable:
        return REC_RELIABLE.pack(lane, 0, ident, n)
    return REC_REALTIME.pack(lane, 0, n)


def unpack_records(plaintext: bytes, start: int, reliable: bool, max_total: int
                   ) -> list[Record] | None:
    """Every record of an extended DATA plaintext from ``start``, or None when the
    framing breaks a rule of section 14.5 step 1 (the packet is then a violation).

    Checks: headers and data within the plaintext and nothing left over, ``len`` at
    least 1, no flag but ``F``, and for fragments ``total`` at most ``max_total`` and
    ``offset + len`` at most ``total``.
    """
    records: list[Record] = []
    n = len(plaintext)
    off = start
    frag_unpack = REC_FRAGMENT.unpack_from
    while off < n:
        if off + 2 > n:
            return None
        lane = plaintext[off]
        flags = plaintext[off + 1]
        if flags & ~FRAGMENT_FLAG:
            return None
        if flags:
            if off + REC_FRAGMENT.size > n:
                return None
            _, _, ident, offset, total, length = frag_unpack(plaintext, off)
            off += REC_FRAGMENT.size
            if total > max_total or offset + length > total:
                return None
        elif reliable:
            if off + REC_RELIABLE.size > n:
                return None
            _, _, ident, length = REC_RELIABLE.unpack_from(plaintext, off)
            off += REC_RELIABLE.size
            offset, total = 0, length
        else:
            if off + REC_REALTIME.size > n:
                return None
            length = (plaintext[off + 2] << 8) | plaintext[off + 3]
            off += REC_REALTIME.size
            ident, offset, total = 0, 0, length
        if length == 0 or off + length > n:
            return None
        records.append((lane, flags, ident, offset, total, plaintext[off:off + length]))
        off += length
    return records if records else None


# --- HS bodies (docs/protocol.md section 7) -------------------------------------------------

class HsBody(NamedTuple):
    """A decoded HS body. ``rest`` is cookie/Noise bytes as the kind defines."""

    kind: HsKind
    sender_id: int
    cookie: bytes
    noise: bytes


def pack_hs(kind: HsKind, conn_id: int, sender_id: int, rest: bytes) -> bytes:
    """A whole HS datagram: header (conn_id of the receiver) and body."""
    body_len = 5 + len(rest)
    return (pack_header(_HS, _RELIABLE, 0, 0, body_len, conn_id, 0, 0)
            + HS_PREFIX.pack(kind, sender_id) + rest)


def pack_hello(sender_id: int, cookie: bytes, msg1: bytes) -> bytes:
    return pack_hs(HsKind.HELLO, 0, sender_id, cookie + msg1 + _HELLO_ZEROS)


def pack_cookie_reply(initiator_id: int, cookie: bytes) -> bytes:
    return pack_hs(HsKind.COOKIE, initiator_id, 0, cookie)


def pack_response(initiator_id: int, responder_id: int, msg2: bytes) -> bytes:
    return pack_hs(HsKind.RESPONSE, initiator_id, responder_id, msg2)


def pack_finish(responder_id: int, initiator_id: int, msg3: bytes) -> bytes:
    return pack_hs(HsKind.FINISH, responder_id, initiator_id, msg3)


def unpack_hs(data: bytes | memoryview, header: Header) -> HsBody | None:
    """Decode the body of a datagram whose header passed :func:`unpack_header` as HS.

    Returns:
        The body, or None (malformed) when the kind is unknown, the body length
        does not match the kind, or an id is zero where it must not be.
    """
    if header.payload_len < 5:
        return None
    kind_byte, sender_id = HS_PREFIX.unpack_from(data, HEADER_LEN)
    try:
        kind = HsKind(kind_byte)
    except ValueError:
        return None
    if header.payload_len != HS_BODY_LEN[kind]:
        return None
    rest = bytes(data[HEADER_LEN + 5:])
    if kind is HsKind.HELLO:
        # Padding content is not checked: nothing in docs/protocol.md rejects it, and it
        # carries no meaning.
        if header.conn_id != 0 or sender_id == 0:
            return None
        return HsBody(kind, sender_id, rest[:COOKIE_LEN],
                      rest[COOKIE_LEN:COOKIE_LEN + NOISE_MSG1_LEN])
    if header.conn_id == 0:
        return None
    if kind is HsKind.COOKIE:
        if sender_id != 0:
            return None
        return HsBody(kind, 0, rest, b"")
    if sender_id == 0:
        return None
    return HsBody(kind, sender_id, _ZERO_COOKIE, rest)


def _low_order_points() -> frozenset[bytes]:
    p = 2**255 - 19
    points = (0, 1, p - 1, p, p + 1,
              0x00B8495F16056286FDB1329CEB8D09DA6AC49FF1FAE35616AEB8413B7C7AEBE0,
              0x57119FD0DD4E22D8868E1C58C45C44045BEF839C55B1D0B1248C50A3BC959C5F)
    return frozenset((u | top).to_bytes(32, "little") for u in points for top in (0, 1 << 255))


LOW_ORDER_POINTS: Final = _low_order_points()
"""X25519 public keys whose every shared secret is zero (both encodings of each).

A HELLO carrying one is refused before any Diffie-Hellman work: it could never
complete, and would cost the responder a key generation and two DH operations.
"""


# --- packet numbers (docs/protocol.md section 4-6) -----------------------------------------------

_PN_WIN: Final = 1 << 32
_PN_HWIN: Final = 1 << 31
_PN_MASK: Final = _PN_WIN - 1
_PN_MAX: Final = 1 << 64


def recover_pn(largest: int, seq: int) -> int:
    """The full packet number whose low 32 bits are ``seq``, closest to largest + 1.

    RFC 9000 appendix A.3 with a 32-bit field.
    """
    expected = largest + 1
    candidate = (expected & ~_PN_MASK) | seq
    if candidate <= expected - _PN_HWIN and candidate < _PN_MAX - _PN_WIN:
        return candidate + _PN_WIN
    if candidate > expected + _PN_HWIN and candidate >= _PN_WIN:
        return candidate - _PN_WIN
    return candidate
