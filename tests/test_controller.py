"""The congestion controller (core/congestion.py; docs/protocol.md section 6: a sender
MUST back off on loss and SHOULD keep the bottleneck queue short).

The controller is fed by hand, one round trip at a time: a round ends when a packet
sent after the previous round ended is acknowledged (``prior_delivered`` at or past
``round_start_delivered``).
"""

from __future__ import annotations

import pytest

from intentra.core.congestion import Controller, Mode

MSS = 1200
RTT = 0.05


def mode(c: Controller) -> Mode:
    """The controller's mode (a call, so that type narrowing does not stick)."""
    return c.mode


class Driver:
    """Feeds one ACK per round trip, each ending the round."""

    def __init__(self) -> None:
        self.c = Controller(MSS, 32, 0.0)
        self.delivered = 0
        self.now = 0.0

    def round(self, rate: float, rtt: float = RTT, in_flight: int = 10**9,
              app_limited: bool = False) -> None:
        self.now += rtt
        prior = self.c.round_start_delivered
        self.delivered += int(rate * rtt)
        self.c.on_ack(self.delivered, prior, rate, app_limited, rtt, in_flight, self.now)


def test_startup_exits_after_three_rounds_without_25_percent_growth() -> None:
    d = Driver()
    d.round(1e6)
    assert mode(d.c) is Mode.STARTUP
    for _ in range(2):
        d.round(1.2e6)  # +20%: not growth
        assert mode(d.c) is Mode.STARTUP
    d.round(1.2e6)
    assert mode(d.c) is Mode.DRAIN  # in flight (large) above the BDP: draining


def test_startup_stays_while_the_rate_grows_by_25_percent() -> None:
    d = Driver()
    rate = 1e6
    for _ in range(8):
        d.round(rate)
        rate *= 1.25
    assert mode(d.c) is Mode.STARTUP


def test_app_limited_rounds_do_not_end_startup() -> None:
    d = Driver()
    d.round(1e6)
    for _ in range(5):
        d.round(1e6, app_limited=True)
    assert mode(d.c) is Mode.STARTUP


def test_drain_ends_when_in_flight_fits_the_bdp() -> None:
    d = Driver()
    for rate in (1e6, 1e6, 1e6, 1e6):
        d.round(rate)
    assert mode(d.c) is Mode.DRAIN
    d.round(1e6, in_flight=0)
    assert mode(d.c) is Mode.PROBE_BW


def test_loss_caps_the_window_at_0_7_of_what_was_in_flight() -> None:
    c = Controller(MSS, 32, 0.0)
    in_flight, lost = 40 * MSS, 10 * MSS
    c.on_loss(lost, in_flight, 0.1)
    assert c.loss_cap == pytest.approx(0.7 * (in_flight + lost))
    assert c.cwnd == pytest.approx(0.7 * (in_flight + lost))
    assert mode(c) is Mode.DRAIN  # STARTUP ends on loss


def test_loss_backs_off_once_per_round_trip() -> None:
    c = Controller(MSS, 32, 0.0)
    c.on_loss(10 * MSS, 40 * MSS, 0.1)
    cwnd = c.cwnd
    c.on_loss(10 * MSS, 20 * MSS, 0.11)  # same round: no second cut
    assert c.cwnd == cwnd


def test_loss_cap_never_below_the_minimum_window() -> None:
    c = Controller(MSS, 32, 0.0)
    c.on_loss(MSS, 0, 0.1)
    assert c.cwnd == 4 * MSS


def test_loss_cap_grows_back_a_quarter_per_round_without_loss() -> None:
    d = Driver()
    d.round(1e6)
    d.c.on_loss(10 * MSS, 40 * MSS, d.now)
    cap = d.c.loss_cap
    assert cap is not None
    d.round(1e6)  # the round with the loss ends
    assert d.c.loss_cap == pytest.approx(cap)
    d.round(1e6)
    assert d.c.loss_cap == pytest.approx(cap * 1.25)


def _probe_bw(d: Driver, rate: float) -> None:
    for _ in range(4):
        d.round(rate)
    d.round(rate, in_flight=0)
    assert mode(d.c) is Mode.PROBE_BW
    assert d.c.btl_bw == pytest.approx(rate, rel=0.01)  # plus the additive increase
    assert d.c.min_rtt == pytest.approx(RTT)


def test_a_standing_queue_cuts_the_bandwidth_estimate_and_drains() -> None:
    """Two rounds with every RTT sample more than 1.25 x min + 5 ms: the path delivers
    less than the controller paces at; the estimate drops to what was delivered, by
    at most half per round (a noisy host must not zero it), and it drains."""
    d = Driver()
    _probe_bw(d, 1e6)
    bw = d.c.btl_bw
    d.round(4e5, rtt=1.25 * RTT + 0.01)
    assert mode(d.c) is Mode.PROBE_BW, "one round is not enough for a small queue"
    d.round(4e5, rtt=1.25 * RTT + 0.01)
    assert d.c.btl_bw == pytest.approx(0.5 * bw)
    assert mode(d.c) is Mode.DRAIN


def test_a_large_standing_queue_drains_after_one_round() -> None:
    """More than 1.25 x min + 20 ms for one round: cut (up to three quarters) and drain."""
    d = Driver()
    _probe_bw(d, 1e6)
    bw = d.c.btl_bw
    d.round(4e5, rtt=1.25 * RTT + 0.03)
    assert d.c.btl_bw == pytest.approx(4e5)
    assert d.c.btl_bw >= 0.25 * bw
    assert mode(d.c) is Mode.DRAIN


def test_without_a_standing_queue_the_estimate_grows_additively() -> None:
    """Below the queue target the windowed maximum holds, plus 1/16 datagram per RTT
    per round (the additive half of AIMD, so sessions sharing a link converge)."""
    d = Driver()
    _probe_bw(d, 1e6)
    bw = d.c.btl_bw
    d.round(4e5, rtt=RTT + 0.004)  # within QUEUE_TARGET of the minimum
    assert mode(d.c) is Mode.PROBE_BW
    assert bw < d.c.btl_bw <= bw + MSS / (16 * RTT) * 1.001


def test_window_and_pacing_hold_data_back() -> None:
    c = Controller(MSS, 32, 0.0)
    assert c.can_send(0, 0.0)
    assert not c.can_send(int(c.cwnd), 0.0)  # the window is full
    # spend the pacing budget: the pacer holds the next packet until tokens return
    while c.can_send(0, 0.0):
        c.on_sent(MSS, 0.0)
    at = c.next_send_at(0.0)
    assert at > 0.0
    assert c.can_send(0, at + 1e-9)
