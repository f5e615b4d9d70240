"""ReplayWindow: packet numbers seen, REPLAY_WINDOW below the highest (docs/protocol.md 4).

Owns: the sliding bitmap. Never: marks a packet number before the caller has
authenticated it (``is_fresh`` is the pre-check, ``mark`` the commit).
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=8)
def _mask(size: int) -> int:
    return (1 << size) - 1


class ReplayWindow:
    """Bit i of ``_bits`` set means ``highest - i`` has been received."""

    __slots__ = ("_bits", "_mask", "highest", "size")

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.highest = 0
        self._bits = 1  # pn 0 is never sent; treat it as seen
        self._mask = _mask(size)  # shared: a 1024-bit int per session is 164 bytes

    def is_fresh(self, pn: int) -> bool:
        """True if ``pn`` is within the window and not yet marked."""
        if pn > self.highest:
            return True
        diff = self.highest - pn
        if diff >= self.size:
            return False
        return not (self._bits >> diff) & 1

    def mark(self, pn: int) -> None:
        """Record an authenticated ``pn`` (the window moves only here)."""
        if pn > self.highest:
            shift = pn - self.highest
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.highest = pn
        else:
            self._bits |= 1 << (self.highest - pn)
