"""Wire constants of docs/protocol.md sections 2 and 3 that are not tunable.

Tunable defaults (timeouts, limits, windows) live in :mod:`intentra.config`;
this module holds only what is fixed by the wire format.
"""

from __future__ import annotations

import enum
from typing import Final

VERSION: Final = 2
HEADER_LEN: Final = 16
TAG_LEN: Final = 16
MAX_PACKET_SIZE: Final = 2048
PROLOGUE: Final = b"intentra/2"
NOISE_PROTOCOL_NAME: Final = b"Noise_XX_25519_AESGCM_SHA256"
KEY_LEN: Final = 32
COOKIE_LEN: Final = 16

#: Bytes of framing around messages in a DATA plaintext.
LEN_PREFIX: Final = 2
RSEQ_LEN: Final = 4
ACK_PAYLOAD_LEN: Final = 28
CLOSE_PAYLOAD_LEN: Final = 1
RSEQ_MOD: Final = 1 << 32


_NUMERIC_FORMATS: Final = frozenset("bcdoxXneEfFgG%")


class _NamedIntEnum(enum.IntEnum):
    """An IntEnum that prints as its name (``print(msg.intent)`` shows ``RELIABLE``).

    It is still an int everywhere else: comparisons, arithmetic, ``int()``, and
    numeric format specs (``f"{intent:d}"`` is ``0``).
    """

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in _NUMERIC_FORMATS:
            return int.__format__(int(self), spec)
        return format(self.name, spec)


class PacketType(enum.IntEnum):
    """The header's type field (docs/protocol.md section 3)."""

    DATA = 0
    ACK = 1
    HS = 2
    CLOSE = 3


class Intent(_NamedIntEnum):
    """Delivery intent of a message (docs/protocol.md section 1)."""

    RELIABLE = 0
    """Delivered once, in order, retransmitted until acknowledged."""
    REALTIME = 1
    """Delivered at most once, on arrival, never late, never retransmitted."""


class HsKind(enum.IntEnum):
    """The first byte of an HS body (docs/protocol.md section 7)."""

    HELLO = 1
    COOKIE = 2
    RESPONSE = 3
    FINISH = 4


#: HS body length for each kind (docs/protocol.md section 7 table).
HS_BODY_LEN: Final = {
    HsKind.HELLO: 112,
    HsKind.COOKIE: 21,
    HsKind.RESPONSE: 101,
    HsKind.FINISH: 69,
}
HELLO_PADDING: Final = 59
NOISE_MSG1_LEN: Final = 32
NOISE_MSG2_LEN: Final = 96
NOISE_MSG3_LEN: Final = 64


class CloseReason(_NamedIntEnum):
    """The reason byte of CLOSE (docs/protocol.md section 5)."""

    NORMAL = 0
    PROTOCOL_VIOLATION = 1
    TIMEOUT = 2
    KEY_EXHAUSTED = 3
    REPLACED = 4


MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 7

#: Bit 1 of header byte 1: the packet asks for an ACK (docs/protocol.md section 3).
ACK_ELICITING_BIT: Final = 0x02
#: Bit 2 of header byte 1, X: a DATA plaintext made of records (docs/protocol.md section 14).
EXTENDED_BIT: Final = 0x04
#: Lanes are 0..MAX_LANE (docs/protocol.md section 14.1).
MAX_LANE: Final = 255
#: The largest ``max_message_size`` an endpoint may configure (64 MiB).
MAX_MESSAGE_LIMIT: Final = 64 * 1024 * 1024
#: ``flags`` bit of a record (docs/protocol.md section 14.2): the record is a fragment.
FRAGMENT_FLAG: Final = 0x01
#: Record header sizes (docs/protocol.md section 14.2): RELIABLE whole / fragment,
#: REALTIME whole / fragment.
RECORD_RELIABLE: Final = 8
RECORD_FRAGMENT: Final = 16
RECORD_REALTIME: Final = 4
#: The longest a receiver waits before acknowledging an ack-eliciting packet, seconds.
#: A wire constant: the peer's timers (PTO, RTT samples) rely on it.
ACK_DELAY: Final = 0.010
#: A receiver acknowledges at once when it authenticated a DATA pn this far beyond
#: its previous ACK's ``largest_pn``.
ACK_EVERY: Final = 32
#: ``ack_delay`` of an ACK counts units of this many seconds (8 microseconds).
ACK_DELAY_UNIT: Final = 8e-6
#: Packet numbers one ACK speaks of: ``largest_pn`` and the 64 below it.
PN_BITMAP_BITS: Final = 64
#: The largest ``credit`` an ACK carries.
MAX_CREDIT: Final = 0xFFFF
