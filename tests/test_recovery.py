"""Recovery (docs/protocol.md sections 4 and 6): the checks of an ACK's ``largest_pn``
and ``pn_bitmap``, loss detection by packet and time threshold (RFC 9002 section 6.1)
within an ACK's 65-pn range, and RTT samples by pn (RFC 9002 section 5).

Each test builds a Recovery with a real RttEstimator and Controller and a fake clock.
"""

from __future__ import annotations

import pytest

from intentra.core.congestion import Controller
from intentra.core.recovery import Recovery
from intentra.core.reliable import Violation
from intentra.core.rtt import RttEstimator

SIZE = 1200
ACK_DELAY = 0.010  # the wire constant (docs/protocol.md section 2)


def recovery() -> Recovery:
    return Recovery(RttEstimator(0.25, 0.02, 2.0), Controller(SIZE, 32, 0.0), 0.0)


def send(r: Recovery, pns: range | list[int], at: float = 0.0, data: bool = True) -> None:
    for pn in pns:
        r.on_sent(pn, SIZE, data, 0, 0, at)


def bitmap_of(largest: int, acked: set[int]) -> int:
    """pn_bitmap: bit i set when pn largest - 1 - i is in ``acked``."""
    return sum(1 << (largest - 1 - pn) for pn in acked if 0 <= largest - 1 - pn < 64)


# --- the checks ------------------------------------------------------------------------

CHECKS = [
    # largest, bitmap, pn_next, violation?
    pytest.param(0, 0, 1, False, id="nothing-acknowledged"),
    pytest.param(0, 1, 5, True, id="bitmap-without-largest"),
    pytest.param(4, 0, 5, False, id="largest-is-the-last-sent"),
    pytest.param(5, 0, 5, True, id="largest-never-sent"),
    pytest.param(1000, 0, 5, True, id="largest-far-beyond"),
    pytest.param(3, 0b11, 5, False, id="bitmap-down-to-pn-1"),
    pytest.param(3, 0b100, 5, True, id="bitmap-names-pn-0"),
    pytest.param(1, 1, 5, True, id="largest-1-bitmap-names-pn-0"),
    pytest.param(2, 1 << 63, 5, True, id="bit63-far-below-pn-1"),
    pytest.param(100, 1 << 63, 101, False, id="bit63-pn-36"),
]


@pytest.mark.parametrize(("largest", "bitmap", "pn_next", "violation"), CHECKS)
def test_check_ack_pns_never_sent(largest: int, bitmap: int, pn_next: int,
                                  violation: bool) -> None:
    r = recovery()
    if violation:
        with pytest.raises(Violation):
            r.check_ack(largest, bitmap, pn_next)
    else:
        r.check_ack(largest, bitmap, pn_next)


@pytest.mark.parametrize("where", ["largest", "bitmap"])
def test_optimistic_ack_of_a_skipped_pn_is_a_violation(where: str) -> None:
    """A skipped pn was never sent: an ACK naming it acknowledges what it cannot have
    received (docs/protocol.md section 4, after RFC 9000 section 21.4)."""
    r = recovery()
    send(r, [1, 2, 3, 5, 6])
    r.skipped.append(4)
    r.check_ack(6, bitmap_of(6, {1, 2, 3, 5}), 7)  # honest: 4 not named
    largest, bitmap = (4, bitmap_of(4, {1, 2, 3})) if where == "largest" else \
        (6, bitmap_of(6, {1, 2, 3, 4, 5}))
    with pytest.raises(Violation):
        r.check_ack(largest, bitmap, 7)
    assert sorted(r.sent) == [1, 2, 3, 5, 6]  # the check changed nothing


# --- packet threshold ------------------------------------------------------------------


def test_packet_threshold_declares_a_pn_lost_three_below_an_acknowledged_one() -> None:
    r = recovery()
    send(r, range(1, 11))
    acked, lost = r.on_ack(10, bitmap_of(10, set(range(1, 10)) - {5}), 0.0, 0.05)
    assert len(acked) == 9
    assert len(lost) == 1
    assert 5 not in r.sent


def test_packet_threshold_needs_three_later_pns() -> None:
    r = recovery()
    send(r, range(1, 7))
    _, lost = r.on_ack(6, bitmap_of(6, {1, 2, 3, 4}), 0.0, 0.05)  # 5 missing, 6 acked
    assert lost == []
    assert 5 in r.sent
    assert r.loss_at is not None  # left to the time threshold
    r2 = recovery()
    send(r2, range(1, 9))
    _, lost = r2.on_ack(8, bitmap_of(8, {1, 2, 3, 4, 6, 7}), 0.0, 0.05)  # 5 is 3 below 8
    assert len(lost) == 1 and 5 not in r2.sent


def test_packet_threshold_only_within_the_ack_range() -> None:
    """An ACK speaks of largest_pn - 64 .. largest_pn only; a pn below the range is
    neither acknowledged nor reported missing by it: only time can declare it lost."""
    r = recovery()
    send(r, range(1, 101))
    acked, lost = r.on_ack(100, (1 << 64) - 1, 0.0, 0.05)  # 36..100 acknowledged
    assert len(acked) == 65
    assert lost == []
    assert sorted(r.sent) == list(range(1, 36))
    assert r.loss_at is not None
    assert r.on_loss_timer(r.loss_at - 1e-6) == []
    lost = r.on_loss_timer(r.loss_at)
    assert len(lost) == 35
    assert r.sent == {}


def test_lowest_pn_of_the_range_is_within_it() -> None:
    r = recovery()
    send(r, range(1, 101))
    # pn 36 = 100 - 64 is bit 63; it is missing, so the packet threshold applies to it
    _, lost = r.on_ack(100, ((1 << 63) - 1), 0.0, 0.05)
    assert len(lost) == 1
    assert 36 not in r.sent


# --- time threshold --------------------------------------------------------------------


def test_time_threshold_is_nine_eighths_of_the_larger_of_srtt_and_latest() -> None:
    r = recovery()
    send(r, [1, 2], at=0.0)
    _, lost = r.on_ack(2, 0, 0.0, 0.1)  # RTT sample 0.1; pn 1 is 1 below: not yet lost
    assert lost == []
    assert r.rtt.srtt == pytest.approx(0.1)
    assert r.loss_at == pytest.approx(0.1 + 9 / 8 * 0.1)
    assert r.on_loss_timer(0.1 + 9 / 8 * 0.1 - 1e-6) == []
    assert len(r.on_loss_timer(0.1 + 9 / 8 * 0.1)) == 1
    assert r.loss_at is None


def test_time_threshold_uses_the_latest_rtt_when_it_is_larger() -> None:
    r = recovery()
    send(r, [1], at=0.0)
    r.on_ack(1, 0, 0.0, 0.1)  # srtt 0.1
    send(r, [2, 3], at=1.0)
    r.on_ack(3, 0, 0.0, 1.5)  # latest 0.5; srtt 0.875 * 0.1 + 0.125 * 0.5 = 0.15
    assert r.rtt.latest == pytest.approx(0.5)
    assert r.loss_at == pytest.approx(1.5 + 9 / 8 * 0.5)


# --- RTT samples -----------------------------------------------------------------------


def test_rtt_sample_when_largest_is_newly_acknowledged() -> None:
    r = recovery()
    send(r, [1], at=1.0)
    r.on_ack(1, 0, 0.0, 1.08)
    assert r.rtt.latest == pytest.approx(0.08)
    assert r.rtt.srtt == pytest.approx(0.08)


def test_no_rtt_sample_when_largest_was_already_acknowledged() -> None:
    r = recovery()
    send(r, [1, 2], at=0.0)
    r.on_ack(2, 1, 0.0, 0.1)
    r.on_ack(2, 1, 0.0, 0.9)  # a repeated ACK: largest not new
    assert r.rtt.latest == pytest.approx(0.1)
    assert r.rtt.srtt == pytest.approx(0.1)


def test_no_rtt_sample_when_only_the_bitmap_acknowledges_new_pns() -> None:
    r = recovery()
    send(r, [1, 2, 3], at=0.0)
    r.on_ack(3, 0, 0.0, 0.1)
    acked, _ = r.on_ack(3, 0b11, 0.0, 0.5)  # 1 and 2 newly acknowledged, 3 not
    assert len(acked) == 2
    assert r.rtt.latest == pytest.approx(0.1)


def test_no_rtt_sample_when_largest_was_not_ack_eliciting() -> None:
    """Only ack-eliciting packets are recorded (DATA, probing ACKs); an ACK whose
    largest_pn is one of our A = 0 ACKs acknowledges the DATA below it but gives no
    sample: its delay says nothing of the path (RFC 9002 section 5.1)."""
    r = recovery()
    send(r, [1, 2], at=0.0)
    # pn 3 was an ACK with A = 0: never recorded
    acked, _ = r.on_ack(3, 0b11, 0.0, 0.3)
    assert len(acked) == 2
    assert r.rtt.srtt is None


def test_ack_eliciting_ack_is_recorded_for_rtt_but_not_in_flight() -> None:
    r = recovery()
    r.on_sent(1, 60, False, 0, 0, 0.0)  # a probe (A = 1 ACK)
    assert r.in_flight == 0
    r.on_ack(1, 0, 0.0, 0.04)
    assert r.rtt.srtt == pytest.approx(0.04)


def test_ack_delay_is_subtracted_but_capped_at_ack_delay() -> None:
    r = recovery()
    send(r, [1], at=0.0)
    r.on_ack(1, 0, 0.0, 0.05)  # min RTT 0.05
    send(r, [2], at=1.0)
    r.on_ack(2, 0, 0.05, 1.1)  # peer claims 50 ms of delay: only ACK_DELAY counts
    adjusted = 0.1 - ACK_DELAY
    assert r.rtt.srtt == pytest.approx(0.875 * 0.05 + 0.125 * adjusted)
    assert r.rtt.latest == pytest.approx(0.1)


def test_ack_delay_never_takes_a_sample_below_the_minimum_rtt() -> None:
    r = recovery()
    send(r, [1], at=0.0)
    r.on_ack(1, 0, 0.0, 0.05)  # min RTT 0.05
    send(r, [2], at=1.0)
    r.on_ack(2, 0, 0.008, 1.055)  # 0.055 - 0.008 = 0.047 < 0.05: not subtracted
    assert r.rtt.srtt == pytest.approx(0.875 * 0.05 + 0.125 * 0.055)


def test_first_sample_sets_min_rtt_unadjusted() -> None:
    r = recovery()
    send(r, [1], at=0.0)
    r.on_ack(1, 0, 0.009, 0.05)
    assert r.rtt.min_rtt == pytest.approx(0.05)
    assert r.rtt.srtt == pytest.approx(0.05)


# --- bytes in flight and the probe timeout ----------------------------------------------


def test_in_flight_counts_data_until_acknowledged_or_lost() -> None:
    r = recovery()
    send(r, range(1, 6))
    assert r.in_flight == 5 * SIZE
    _, lost = r.on_ack(5, bitmap_of(5, {4}), 0.0, 0.05)  # 1, 2 lost (threshold), 3 not yet
    assert len(lost) == 2
    assert r.in_flight == 1 * SIZE
    assert sorted(r.sent) == [3]


def test_pto_only_while_data_is_in_flight_and_reset_by_an_ack() -> None:
    r = recovery()
    assert r.pto_at() is None
    send(r, [1, 2], at=1.0)
    first = r.pto_at()
    assert first is not None and first > 1.0
    r.pto_count = 1
    assert r.pto_at() == pytest.approx(1.0 + 2 * (first - 1.0))  # doubled per probe
    r.on_ack(1, 0, 0.0, 1.05)
    assert r.pto_count == 0
    r.on_ack(2, 1, 0.0, 1.06)
    assert r.pto_at() is None
