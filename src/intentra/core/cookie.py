"""Stateless handshake cookies (docs/protocol.md section 7).

``cookie = HMAC-SHA256(secret_n, ip || port)[:16]`` with
``secret_n = HMAC-SHA256(master, "intentra cookie" || n)`` and
``n = floor(unix_time / COOKIE_ROTATION)`` as 8 bytes. Epochs n and n - 1
verify; comparison is constant time.

Owns: secrets per epoch (derived from ``master``, cached for two epochs).
Never: keeps anything per source address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from typing import Any, Final

from intentra.constants import COOKIE_LEN

_LABEL: Final = b"intentra cookie"
_U64: Final = struct.Struct("!Q")
_PORT: Final = struct.Struct("!H")


def address_bytes(addr: tuple[Any, ...]) -> bytes | None:
    """``ip (4 or 16) || port (2)`` of a socket address, or None if it is not IP."""
    try:
        ip = ipaddress.ip_address(addr[0])
        port = int(addr[1])
    except (ValueError, TypeError, IndexError):
        return None
    if not 0 <= port <= 0xFFFF:
        return None
    return ip.packed + _PORT.pack(port)


class CookieJar:
    """Makes and verifies cookies for one endpoint (or a group sharing ``master``)."""

    __slots__ = ("_master", "_secrets", "rotation")

    def __init__(self, master: bytes, rotation: float) -> None:
        if len(master) != 32:
            raise ValueError("the cookie master secret is 32 bytes")
        self._master = master
        self.rotation = rotation
        self._secrets: dict[int, bytes] = {}

    def epoch(self, unix_time: float) -> int:
        return int(unix_time // self.rotation)

    def _secret(self, n: int) -> bytes:
        secret = self._secrets.get(n)
        if secret is None:
            if len(self._secrets) > 4:  # keep the cache to the epochs in use
                for old in [k for k in self._secrets if k < n - 1]:
                    del self._secrets[old]
            secret = hmac.new(self._master, _LABEL + _U64.pack(n & 0xFFFFFFFFFFFFFFFF),
                              hashlib.sha256).digest()
            self._secrets[n] = secret
        return secret

    def make(self, addr_bytes: bytes, unix_time: float) -> bytes:
        """The cookie for this source in the current epoch."""
        return self.make_for_epoch(addr_bytes, self.epoch(unix_time))

    def make_for_epoch(self, addr_bytes: bytes, n: int) -> bytes:
        return hmac.new(self._secret(n), addr_bytes, hashlib.sha256).digest()[:COOKIE_LEN]

    def verify(self, cookie: bytes, addr_bytes: bytes, unix_time: float) -> bool:
        """True if ``cookie`` is this source's cookie of the current or previous epoch."""
        n = self.epoch(unix_time)
        ok = hmac.compare_digest(cookie, self.make_for_epoch(addr_bytes, n))
        # Both epochs are always computed: the time taken does not tell which matched.
        ok_prev = hmac.compare_digest(cookie, self.make_for_epoch(addr_bytes, n - 1))
        return ok or ok_prev
