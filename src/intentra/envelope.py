"""Who sent a message through a hub: the origin envelope (an application convention).

A hub relays messages in its own sessions, so a receiver's ``msg.peer`` is the
hub. A hub that wraps what it relays (``intentra serve --envelope``, or
:func:`intentra.hub.relay` with ``envelope=True``) tells receivers the origin::

    byte 0        0xE1: magic and version (envelope version 1)
    bytes 1..32   the origin's static X25519 public key, as authenticated by the hub
    bytes 33..    the original message, unchanged

33 bytes of overhead: a message relayed in an envelope must be at most the
largest message minus 33 bytes. The origin is what the hub authenticated; a
receiver trusts the hub for it (the hub could lie). See docs/protocol.md
section 13.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from intentra.constants import KEY_LEN
from intentra.errors import EnvelopeError
from intentra.keys import PublicKey

__all__ = ["MAGIC", "OVERHEAD", "Envelope", "EnvelopeError", "is_envelope", "unwrap", "wrap"]

MAGIC: Final = 0xE1
"""The first byte of an envelope: magic and version 1."""
OVERHEAD: Final = 1 + KEY_LEN
"""Bytes an envelope adds to a message (33)."""


class Envelope(NamedTuple):
    """An unwrapped envelope: who sent ``data`` to the hub, and what it sent."""

    origin: PublicKey
    data: bytes


def wrap(origin: PublicKey, data: bytes | bytearray | memoryview) -> bytes:
    """``data`` in an envelope naming ``origin``.

    Raises:
        EnvelopeError: ``origin`` is not a PublicKey or ``data`` is not bytes.
    """
    if not isinstance(origin, PublicKey):
        raise EnvelopeError(f"origin is an intentra.PublicKey (msg.peer.public_key), "
                            f"got {type(origin).__name__}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EnvelopeError(f"data is bytes, got {type(data).__name__}")
    return bytes((MAGIC,)) + origin.to_bytes() + bytes(data)


def is_envelope(data: bytes) -> bool:
    """True if ``data`` is long enough and starts with the magic byte."""
    return len(data) > OVERHEAD and data[0] == MAGIC


def unwrap(data: bytes | bytearray | memoryview) -> Envelope:
    """The origin and the original message of an envelope.

    Raises:
        EnvelopeError: ``data`` is not an envelope (too short or a wrong first
            byte): the hub does not wrap, or the message did not come through one.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EnvelopeError(f"data is bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) <= OVERHEAD:
        raise EnvelopeError(f"an envelope is at least {OVERHEAD + 1} bytes (magic, 32-byte "
                            f"key, message), got {len(raw)}; is the hub run with --envelope?")
    if raw[0] != MAGIC:
        raise EnvelopeError(f"not an envelope: first byte 0x{raw[0]:02x}, expected "
                            f"0x{MAGIC:02X}; is the hub run with --envelope?")
    return Envelope(PublicKey(raw[1:OVERHEAD]), raw[OVERHEAD:])
