"""TokenBucket (docs/protocol.md sections 4 step 3 and 8): per-session rate limit, fake clock.

Rates and intervals are powers of two so that the float arithmetic is exact.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentra.core.ratelimit import TokenBucket


def takes(bucket: TokenBucket, now: float, n: int) -> list[bool]:
    return [bucket.take(now) for _ in range(n)]


@pytest.mark.parametrize(("rate", "burst"), [(4.0, 3.0), (10000.0, 500.0), (1.0, 1.0)])
def test_starts_full_then_empty(rate: float, burst: float) -> None:
    bucket = TokenBucket(rate, burst, now=100.0)
    assert takes(bucket, 100.0, int(burst)) == [True] * int(burst)
    assert not bucket.take(100.0)
    assert not bucket.take(100.0)


REFILL = [
    # (elapsed since empty, tokens expected back) for rate 4/s, burst 3
    pytest.param(0.125, 0, id="half-token"),
    pytest.param(0.25, 1, id="one-token"),
    pytest.param(0.5, 2, id="two-tokens"),
    pytest.param(0.75, 3, id="three-tokens"),
    pytest.param(1.0, 3, id="capped-at-burst"),
    pytest.param(3600.0, 3, id="long-idle-capped"),
]


@pytest.mark.parametrize(("elapsed", "tokens"), REFILL)
def test_refill_at_rate(elapsed: float, tokens: int) -> None:
    bucket = TokenBucket(4.0, 3.0, now=0.0)
    assert takes(bucket, 0.0, 3) == [True] * 3
    assert takes(bucket, elapsed, tokens + 1) == [True] * tokens + [False]


def test_partial_tokens_accumulate() -> None:
    bucket = TokenBucket(4.0, 3.0, now=0.0)
    takes(bucket, 0.0, 3)
    assert not bucket.take(0.125)  # half a token
    assert bucket.take(0.25)  # the two halves make one
    assert not bucket.take(0.25)


def test_steady_rate_is_sustained() -> None:
    bucket = TokenBucket(8.0, 2.0, now=0.0)
    takes(bucket, 0.0, 2)
    # one take every 1/rate seconds always succeeds, a second one in the same instant never
    for i in range(1, 50):
        assert bucket.take(i * 0.125)
        assert not bucket.take(i * 0.125)


def test_time_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(4.0, 3.0, now=10.0)
    takes(bucket, 10.0, 3)
    assert not bucket.take(9.0)
    assert not bucket.take(5.0)
    # back at the latest time seen: still nothing, as no time has passed since the last refill
    assert not bucket.take(10.0)
    assert not bucket.take(10.125)
    assert bucket.take(10.25)
    assert not bucket.take(10.25)


def test_backwards_then_forwards_counts_only_new_time() -> None:
    bucket = TokenBucket(4.0, 3.0, now=0.0)
    takes(bucket, 0.0, 3)
    assert bucket.take(1.0)  # 3 tokens came back, 2 left
    assert takes(bucket, -100.0, 3) == [True, True, False]
    # the clock returning to 1.0 must not be credited with 101 s
    assert not bucket.take(1.0)
    assert not bucket.take(1.125)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-64, 64), st.integers(0, 6)), max_size=40),
       st.sampled_from([(4.0, 3.0), (8.0, 1.0), (1.0, 5.0), (16.0, 16.0)]))
def test_never_more_than_burst_plus_rate_times_elapsed(
        steps: list[tuple[int, int]], rb: tuple[float, float]) -> None:
    rate, burst = rb
    start = 1000.0
    bucket = TokenBucket(rate, burst, now=start)
    now = start
    latest = start
    granted = 0
    for dt_eighths, n in steps:
        now += dt_eighths / 8  # exact in binary
        latest = max(latest, now)
        granted += sum(takes(bucket, now, n))
        assert 0.0 <= bucket.tokens <= burst
        # tokens only come from the initial burst and from time that really passed
        assert granted <= burst + rate * (latest - start)
