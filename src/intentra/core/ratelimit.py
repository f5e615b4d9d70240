"""TokenBucket: the per-session rate limit before decryption (docs/protocol.md 6 step 3, 10)."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``burst``; refilled lazily on each take."""

    __slots__ = ("burst", "rate", "tokens", "updated_at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated_at = now

    def take(self, now: float) -> bool:
        """Take one token; False (and nothing taken) when the bucket is empty."""
        elapsed = now - self.updated_at
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def ready(self, now: float) -> bool:
        """Whether a token is there, taking none: for a cost known only afterwards."""
        elapsed = now - self.updated_at
        if elapsed > 0:
            self.tokens = min(self.tokens + elapsed * self.rate, self.burst)
            self.updated_at = now
        return self.tokens >= 1.0

    def charge(self, amount: float = 1.0) -> None:
        """Spend ``amount`` after the fact (call after ``ready``); may go below zero, as debt."""
        self.tokens -= amount
