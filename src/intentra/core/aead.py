"""Per-direction AEAD keys, nonces and key updates (docs/protocol.md section 4-6).

Owns: one AESGCM object per key and direction, the nonce layout
``conn_id (4) || pn (8)``, the Noise Rekey function, and the receiver's
current / next / previous key logic.
Never: moves a key on a packet that failed to authenticate, or keeps the
previous key beyond its expiry.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from intentra.core.wire import HEADER

_NONCE: Final = struct.Struct("!IQ")
_REKEY_NONCE: Final = bytes(4) + b"\xff" * 8
_ZEROS32: Final = bytes(32)


class Aead(Protocol):
    """What this module needs of an AES-256-GCM object (cryptography's ``AESGCM``, or
    ``intentra._native.AESGCM`` on the native datapath: the same algorithm on OpenSSL)."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes | memoryview,
                associated_data: bytes | memoryview) -> bytes: ...


AeadFactory = Callable[[bytes], Aead]
"""Makes the AEAD object of one key; a failed open raises cryptography's InvalidTag."""


def rekey(key: bytes) -> bytes:
    """Noise Rekey: the first 32 bytes of AES-256-GCM(key, maxnonce, "", 32 zeros)."""
    return AESGCM(key).encrypt(_REKEY_NONCE, _ZEROS32, b"")[:32]


def nonce(conn_id: int, pn: int) -> bytes:
    return _NONCE.pack(conn_id, pn)


class SendKeys:
    """The sending direction: current key, its phase, and when to update it."""

    __slots__ = ("_aead", "_factory", "_key", "_packets", "key_started_at", "packets_under_key",
                 "phase", "updated_at")

    def __init__(self, key: bytes, now: float, aead: AeadFactory | None = None) -> None:
        self._key = key
        self._factory: AeadFactory = aead if aead is not None else AESGCM
        self._aead = self._factory(key)
        # The extension's AESGCM seals a whole packet (header, nonce, AEAD) in one call.
        self._packets = hasattr(self._aead, "seal_packet")
        self.phase = 0
        self.packets_under_key = 0
        self.key_started_at = now
        self.updated_at: float | None = None

    def seal(self, conn_id: int, pn: int, header: bytes, plaintext: bytes) -> bytes:
        """Ciphertext and tag of one packet (header is the AAD, as sent)."""
        self.packets_under_key += 1
        return self._aead.encrypt(_NONCE.pack(conn_id, pn), plaintext, header)

    def seal_packet(self, b0: int, b1: int, conn_id: int, pn: int, ack: int,
                    plaintext: bytes) -> bytes:
        """The datagram of one packet: its header (docs/protocol.md section 3, with this
        key's phase in ``b1``), then ``plaintext`` sealed under nonce (conn_id, pn) with
        the header as associated data. The same bytes as ``header + seal(...)``."""
        self.packets_under_key += 1
        b1 |= self.phase
        if self._packets:
            return self._aead.seal_packet(b0, b1, conn_id, pn, ack,  # type: ignore[attr-defined, no-any-return]
                                          plaintext)
        header = HEADER.pack(b0, b1, len(plaintext), conn_id, pn & 0xFFFFFFFF, ack)
        return header + self._aead.encrypt(_NONCE.pack(conn_id, pn), plaintext, header)

    def due(self, now: float, max_packets: int, max_age: float, min_interval: float) -> bool:
        """Whether the next packet should go out under the next key."""
        if self.updated_at is not None and now - self.updated_at < min_interval:
            return False
        return self.packets_under_key >= max_packets or now - self.key_started_at >= max_age

    def update(self, now: float) -> None:
        """Move to the next key and flip the phase; the old key is dropped."""
        self._key = rekey(self._key)
        self._aead = self._factory(self._key)
        self._packets = hasattr(self._aead, "seal_packet")
        self.phase ^= 1
        self.packets_under_key = 0
        self.key_started_at = now
        self.updated_at = now


class ReceiveKeys:
    """The receiving direction: current, next and (briefly) previous key."""

    __slots__ = ("_ahead", "_cur", "_cur_key", "_factory", "_next", "_next_key", "_prev",
                 "first_pn_current", "phase", "prev_expires_at")

    def __init__(self, key: bytes, aead: AeadFactory | None = None) -> None:
        self._factory: AeadFactory = aead if aead is not None else AESGCM
        self._cur_key = key
        self._cur = self._factory(key)
        self._next_key = rekey(key)
        # The next key is derived at once; its AESGCM (2.6 KiB of key schedule
        # each) only when a packet of the other phase first needs it.
        self._next: Aead | None = None
        self._prev: Aead | None = None
        self.prev_expires_at: float | None = None
        self.phase = 0
        self.first_pn_current = 0
        # Keys beyond the next, derived once when catch-up first needs them (a
        # cache of values that follow from the current key; not session state).
        self._ahead: list[Aead] = []

    def open(self, conn_id: int, pn: int, key_phase: int, header: bytes | memoryview,
             body: bytes | memoryview, catch_up: int = 0) -> tuple[bytes, int] | None:
        """Authenticate and decrypt without changing any state (docs/protocol.md section 4-6).

        Args:
            catch_up: how many keys beyond the next one may also be tried when
                the protocol's choice fails. 0 is docs/protocol.md exactly. The endpoint allows
                it only after a silence of KEY_UPDATE_MIN_INTERVAL, the only
                way a sender can be two or more updates ahead (departure from
                docs/protocol.md: without it such a session could never decrypt again).

        Returns:
            ``(plaintext, steps)``, or None if it does not authenticate.
            ``steps`` (0: none) tells the caller to :meth:`commit_update` that
            many keys forward once the packet has passed every other check.
        """
        n = _NONCE.pack(conn_id, pn)
        aead: Aead
        if key_phase == self.phase:
            aead, steps = self._cur, 0
        elif self._prev is not None and pn < self.first_pn_current:
            aead, steps = self._prev, 0
        else:
            nxt = self._next
            if nxt is None:
                nxt = self._next = self._factory(self._next_key)
            aead, steps = nxt, 1
        try:
            return aead.decrypt(n, body, header), steps
        except InvalidTag:
            if catch_up <= 0 or (steps == 0 and aead is self._prev):
                return None
        # Keys further ahead with the packet's phase: +2, +4.. or +3, +5..
        ahead_keys = self._ahead
        if len(ahead_keys) < catch_up:
            key = self._next_key
            for _ in range(len(ahead_keys) + 1):
                key = rekey(key)
            while len(ahead_keys) < catch_up:
                ahead_keys.append(self._factory(key))
                key = rekey(key)
        for ahead in range(2, 2 + catch_up):
            if (ahead & 1) != (key_phase ^ self.phase):
                continue
            try:
                return ahead_keys[ahead - 2].decrypt(n, body, header), ahead
            except InvalidTag:
                continue
        return None

    def commit_update(self, pn: int, now: float, prev_lifetime: float, steps: int = 1) -> None:
        """The peer moved ``steps`` keys on (proved by an authenticated packet ``pn``).

        The key just before the new current one becomes the previous key;
        any skipped keys are dropped.
        """
        for _ in range(steps - 1):
            self._cur_key = self._next_key
            self._next_key = rekey(self._next_key)
        new_current = self._next if steps == 1 and self._next is not None \
            else self._factory(self._next_key)
        self._prev = self._cur if steps == 1 else self._factory(self._cur_key)
        self.prev_expires_at = now + prev_lifetime
        self._cur_key, self._cur = self._next_key, new_current
        self._next_key = rekey(self._cur_key)
        self._next = None
        self.phase ^= steps & 1
        self.first_pn_current = pn
        self._ahead = []

    def expire_previous(self, now: float) -> None:
        """Erase the previous key once its time for late packets is over."""
        if self.prev_expires_at is not None and now >= self.prev_expires_at:
            self._prev = None
            self.prev_expires_at = None
