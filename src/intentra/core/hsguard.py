"""Per-handshake defences of an initiator against forged HS packets (issue 9 item 2).

Owns: the budget of expensive RESPONSE reads, the RESPONSE bodies already
tried, whether a RESPONSE proved a key we refuse, and the cookie candidates.
Never: reads a clock or global randomness (``now`` and ``rng`` are passed in).

An attacker who sees our HELLO and can inject (but not drop) must not win the
handshake's one slot with a forgery (docs/security.md, "Handshake blocking"):

- a RESPONSE that fails, or proves a key we refuse, leaves the Noise state as it
  was (``core/noise.py`` works on a fork) and the handshake goes on until
  HANDSHAKE_TIMEOUT. Each such read costs about 0.13 ms, so they are paid from
  a small token bucket per handshake, and a body already tried is not tried
  again (the genuine responder resends the same bytes);
- every COOKIE from the responder's address is a *candidate*, counted each
  time it arrives. Each HELLO we send with a wrong cookie makes the responder
  send its genuine cookie again, so the genuine one gains a count per HELLO
  while a flood of random forgeries stays at one each; HELLOs go out with the
  best few candidates.
"""

from __future__ import annotations

from collections.abc import Callable

from intentra.core.ratelimit import TokenBucket

TRIED_BODIES = 16
"""RESPONSE bodies remembered as already tried, per handshake."""


class InitiatorGuard:
    """The defences of one initiator handshake."""

    __slots__ = ("attempts", "cookies", "refused", "sent_with", "tick", "tried")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.attempts = TokenBucket(rate, burst, now)
        self.refused = False
        self.tried: dict[bytes, None] = {}
        self.cookies: dict[bytes, list[int]] = {}  # cookie -> [times seen, last seen]
        self.tick = 0
        self.sent_with: tuple[bytes, ...] = ()

    def already_tried(self, body: bytes) -> bool:
        return body in self.tried

    def tried_and_failed(self, body: bytes) -> None:
        self.tried[body] = None
        if len(self.tried) > TRIED_BODIES:
            del self.tried[next(iter(self.tried))]

    def see_cookie(self, cookie: bytes, limit: int, rng: Callable[[int], bytes]) -> None:
        """Count a COOKIE; when the table is full a new one evicts a random least-seen entry."""
        self.tick += 1
        entry = self.cookies.get(cookie)
        if entry is not None:
            entry[0] += 1
            entry[1] = self.tick
            return
        if len(self.cookies) >= limit:
            least = min(e[0] for e in self.cookies.values())
            victims = [c for c, e in self.cookies.items() if e[0] == least]
            victim = victims[int.from_bytes(rng(4), "big") % len(victims)]
            del self.cookies[victim]
        self.cookies[bytes(cookie)] = [1, self.tick]

    def best(self, count: int) -> tuple[bytes, ...]:
        """The ``count`` candidates seen most often (the most recent first among equals)."""
        ranked = sorted(self.cookies.items(), key=lambda kv: (kv[1][0], kv[1][1]), reverse=True)
        return tuple(c for c, _ in ranked[:count])
