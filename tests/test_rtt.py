"""RttEstimator: RFC 6298 with MIN_RTO / MAX_RTO bounds and doubling backoff (docs/protocol.md 6).

RFC 6298 section 2 (K = 4, alpha = 1/8, beta = 1/4):
  first sample R:  SRTT = R, RTTVAR = R / 2
  later sample R': RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R'|  (with the old SRTT),
                   SRTT = 7/8 SRTT + 1/8 R'
  RTO = SRTT + 4 RTTVAR, then bounded to [MIN_RTO, MAX_RTO].
The expected numbers below are worked out by hand.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentra.core.rtt import RttEstimator

INITIAL, MIN, MAX = 0.25, 0.02, 2.0  # docs/protocol.md section 2


def est() -> RttEstimator:
    return RttEstimator(INITIAL, MIN, MAX)


def test_initial_rto() -> None:
    e = est()
    assert e.rto == INITIAL
    assert e.srtt is None


SEQUENCES = [
    # samples, then (srtt, rttvar, rto) after each
    pytest.param([0.1], [(0.1, 0.05, 0.3)], id="first-sample"),
    pytest.param([0.1, 0.2], [(0.1, 0.05, 0.3), (0.1125, 0.0625, 0.3625)], id="two"),
    pytest.param([0.1, 0.2, 0.1],
                 [(0.1, 0.05, 0.3), (0.1125, 0.0625, 0.3625),
                  (0.1109375, 0.05, 0.3109375)], id="three"),
    pytest.param([0.08, 0.08], [(0.08, 0.04, 0.24), (0.08, 0.03, 0.2)], id="steady"),
    pytest.param([0.2, 0.04],
                 # rttvar = 0.75*0.1 + 0.25*0.16 = 0.115; srtt = 0.175 + 0.005 = 0.18
                 [(0.2, 0.1, 0.6), (0.18, 0.115, 0.64)], id="drop"),
    pytest.param([0.0], [(0.0, 0.0, MIN)], id="zero-rtt-min"),
]


@pytest.mark.parametrize(("samples", "after"), SEQUENCES)
def test_rfc6298_numbers(samples: list[float], after: list[tuple[float, float, float]]) -> None:
    e = est()
    for rtt, (srtt, rttvar, rto) in zip(samples, after, strict=True):
        e.sample(rtt)
        assert e.srtt == pytest.approx(srtt)
        assert e.rttvar == pytest.approx(rttvar)
        assert e.rto == pytest.approx(rto)


BOUNDS = [
    pytest.param(0.001, MIN, id="tiny-rtt-min"),  # 0.001 + 4 * 0.0005 = 0.003 -> 0.02
    pytest.param(0.006, MIN, id="just-below-min"),  # 0.006 + 0.012 = 0.018 -> 0.02
    pytest.param(0.007, 0.021, id="just-above-min"),  # 0.007 + 0.014
    pytest.param(0.6, 1.8, id="inside"),  # 0.6 + 1.2
    pytest.param(0.7, MAX, id="just-above-max"),  # 0.7 + 1.4 = 2.1 -> 2.0
    pytest.param(1.0, MAX, id="max"),  # 1 + 2 = 3 -> 2.0
    pytest.param(30.0, MAX, id="huge"),
]


@pytest.mark.parametrize(("rtt", "rto"), BOUNDS)
def test_bounds_on_first_sample(rtt: float, rto: float) -> None:
    e = est()
    e.sample(rtt)
    assert e.rto == pytest.approx(rto)
    assert e.srtt == pytest.approx(rtt)  # the estimate itself is not clamped


def test_negative_sample_is_not_an_rtt() -> None:
    e = est()
    e.sample(-1.0)
    assert e.rto >= MIN
    assert e.srtt is not None and e.srtt >= 0.0


BACKOFF = [
    pytest.param([], [0.5, 1.0, 2.0, 2.0, 2.0], id="from-initial"),
    pytest.param([0.1], [0.6, 1.2, 2.0, 2.0], id="after-sample"),
    pytest.param([0.001], [0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.0], id="from-min"),
    pytest.param([5.0], [2.0, 2.0], id="at-max"),
]


@pytest.mark.parametrize(("samples", "rtos"), BACKOFF)
def test_backoff_doubles_capped(samples: list[float], rtos: list[float]) -> None:
    e = est()
    for s in samples:
        e.sample(s)
    for rto in rtos:
        e.backoff()
        assert e.rto == pytest.approx(rto)


def test_sample_after_backoff_recomputes() -> None:
    e = est()
    e.sample(0.1)
    e.backoff()
    e.backoff()
    assert e.rto == pytest.approx(1.2)
    e.sample(0.2)  # same numbers as the second step of "two" above
    assert e.rto == pytest.approx(0.3625)


def test_custom_bounds() -> None:
    e = RttEstimator(1.0, 0.5, 4.0)
    assert e.rto == 1.0
    e.sample(0.05)  # 0.05 + 0.1 = 0.15 -> 0.5
    assert e.rto == pytest.approx(0.5)
    for expected in (1.0, 2.0, 4.0, 4.0):
        e.backoff()
        assert e.rto == pytest.approx(expected)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 100.0), st.none()), max_size=40))
def test_rto_always_within_bounds(ops: list[float | None]) -> None:
    e = est()
    for op in ops:
        if op is None:
            before = e.rto
            e.backoff()
            assert e.rto == min(MAX, 2 * before)
        else:
            e.sample(op)
        assert MIN <= e.rto <= MAX
