"""Congestion control and pacing of one session's sending direction (docs/protocol.md 6.8).

Owns: the model of the path (bottleneck bandwidth, minimum RTT), the congestion
window and the pacing budget derived from it, fed by the packet-number
acknowledgements that :mod:`intentra.core.recovery` turns into delivery-rate
samples and losses.
Never: reads a clock (``now`` is passed in), holds back ACK or CLOSE packets (the
session only asks it about DATA), or keeps any per-packet state.

The controller is a model-based one in the manner of BBR (Cardwell et al., "BBR:
Congestion-Based Congestion Control", and the IETF draft), chosen because it keeps
the bottleneck queue short, which is what real-time traffic needs: a loss-based
controller (Reno, CUBIC) grows until the bottleneck's buffer overflows, so at a
300 ms buffer every message waits 300 ms before the first loss says "slow down".
It estimates the bottleneck bandwidth as the highest delivery rate of the last
ten round trips and the propagation delay as the lowest RTT of the last ten
seconds, paces at ``gain x bandwidth`` and caps the bytes in flight at
``2 x bandwidth x smoothed RTT`` (plus an allowance for the receiver's delayed ACKs).

Departures from BBR v1, each for the traffic this library carries:
- **A standing queue is drained at once.** When every RTT sample of two round trips
  in a row stays more than ``QUEUE_TARGET`` above the minimum (or of one round
  trip, more than ``LARGE_QUEUE``), the path takes less
  than we send (a link rate change, a competing flow, an overestimate): the
  bandwidth estimate drops to what the round delivered, and at least to
  ``DECREASE`` of itself (at most by half per round trip, three quarters behind a
  large queue), and the controller drains.
- **Additive increase.** Each round trip without a queue adds 1/16 of a packet per
  round trip to the estimate: with the decrease above, AIMD on the rate, so flows
  sharing a bottleneck converge to equal shares (Chiu and Jain). BBR's 1.25
  probes alone are multiplicative and keep whatever ratio flows have.
  BBR v1 would keep pacing at the old rate for ten round trips while the queue,
  and every message's latency, grows.
- **Loss backs off** (the protocol requires it): a round trip with losses caps the
  bytes in flight at 0.7 of what was in flight when the loss was seen, and the
  cap grows back by a quarter per round trip without loss (as BBR v2's
  ``inflight_hi`` does). STARTUP ends on loss.
- **No PROBE_RTT phase.** Real-time traffic rarely keeps the queue full for ten
  seconds; when the minimum RTT is ten seconds old it is replaced by the lowest
  sample of the last round trip instead of emptying the pipe to measure it.
"""

from __future__ import annotations

import enum
from typing import Final

from intentra.constants import ACK_DELAY

STARTUP_GAIN: Final = 2.885
"""2/ln(2): the pacing gain that doubles the delivery rate each round trip."""
PROBE_GAINS: Final = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
CWND_GAIN: Final = 2.0
BW_WINDOW_ROUNDS: Final = 10
MIN_RTT_WINDOW: Final = 10.0
"""Seconds a minimum RTT stays valid."""
FULL_BW_GROWTH: Final = 1.25
FULL_BW_ROUNDS: Final = 3
DECREASE: Final = 0.85
"""After a standing queue the estimate is at most this share of what it was."""
INCREASE_DIVISOR: Final = 16
"""Each round trip without a queue adds 1/INCREASE_DIVISOR packet per round trip."""
RTT_SLACK: Final = 0.01
"""Seconds above the minimum RTT the window allows for (host and ACK delays)."""
LARGE_QUEUE: Final = 0.02
"""Seconds of standing queue drained after one round trip instead of two."""
QUEUE_TARGET: Final = 0.005
"""Seconds of standing queue above the minimum RTT that the controller drains."""
LOSS_BACKOFF: Final = 0.7
MIN_CWND_PACKETS: Final = 4
INITIAL_CWND_PACKETS: Final = 10
"""RFC 6928's initial window (QUIC's too): a session joining a busy 10 Mbit/s link
adds at most 10 ms of queue before its first RTT sample."""
PACING_BURST_TIME: Final = 0.005
"""Seconds of sending the pacer lets accumulate: an event loop turns (and its timers
fire) about once a millisecond, and a busy sender less often; a smaller budget
would make a busy sender send less than its pace, which looks like a slower path."""
INITIAL_RTT: Final = 0.001
"""RTT assumed for the initial pacing rate, before the first sample (as BBR does)."""


class Mode(enum.Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"


class Controller:
    """One session's congestion controller and pacer.

    Args:
        max_datagram: the largest datagram the session builds (a "packet").
        ack_every: the receiver's immediate-ACK threshold in packets; the window
            leaves room for that many packets between ACKs.
        now: the session's start.
        enabled: False keeps the model (for :meth:`intentra.Peer.status`) but
            never holds a packet back (``EndpointConfig.congestion_control``).
    """

    __slots__ = (
        "ack_allowance",
        "btl_bw",
        "bw_rounds",
        "cwnd",
        "enabled",
        "full_bw",
        "full_bw_count",
        "loss_cap",
        "loss_in_round",
        "min_cwnd",
        "min_rtt",
        "min_rtt_at",
        "mode",
        "mss",
        "pacing_gain",
        "pacing_rate",
        "phase",
        "phase_at",
        "round_all_bw",
        "round_bw",
        "round_count",
        "round_min_rtt",
        "round_start_delivered",
        "short_rounds",
        "srtt",
        "tokens",
        "tokens_at",
    )

    def __init__(self, max_datagram: int, ack_every: int, now: float,
                 enabled: bool = True) -> None:
        self.enabled = enabled  # False: the model runs, but nothing is held back
        self.mss = max_datagram
        self.min_cwnd = MIN_CWND_PACKETS * max_datagram
        self.ack_allowance = ack_every * max_datagram
        self.mode = Mode.STARTUP
        self.btl_bw = 0.0                       # bytes/s, max over the last rounds
        self.bw_rounds: list[float] = []        # per-round maximum delivery rates
        self.round_bw = 0.0
        self.round_all_bw = 0.0                 # highest rate sample of the round, any kind
        self.min_rtt: float | None = None
        self.min_rtt_at = now
        self.round_min_rtt: float | None = None
        self.srtt: float | None = None          # smoothed RTT of the samples seen
        self.round_count = 0
        self.round_start_delivered = 0
        self.short_rounds = 0                   # round trips in a row short of the estimate
        self.full_bw = 0.0
        self.full_bw_count = 0
        self.loss_cap: float | None = None
        self.loss_in_round = False
        self.phase = 0
        self.phase_at = now
        self.pacing_gain = STARTUP_GAIN
        self.cwnd = float(INITIAL_CWND_PACKETS * max_datagram)
        self.pacing_rate = STARTUP_GAIN * self.cwnd / INITIAL_RTT
        self.tokens = self._burst()
        self.tokens_at = now

    # --------------------------------------------------------------- sending

    def _burst(self) -> float:
        return max(2.0 * self.mss, self.pacing_rate * PACING_BURST_TIME)

    def can_send(self, in_flight: int, now: float) -> bool:
        """Whether one more DATA packet may leave now (window and pacing)."""
        if not self.enabled:
            return True
        if in_flight >= self.cwnd:
            return False
        tokens = self.tokens
        if tokens < 0.0:
            tokens = min(self._burst(), tokens + (now - self.tokens_at) * self.pacing_rate)
            self.tokens = tokens
            self.tokens_at = now
            return tokens >= 0.0
        return True

    def on_sent(self, size: int, now: float) -> None:
        """A DATA packet of ``size`` bytes left: spend pacing budget."""
        elapsed = now - self.tokens_at
        tokens = self.tokens
        if elapsed > 0.0:
            tokens = min(self._burst(), tokens + elapsed * self.pacing_rate)
            self.tokens_at = now
        self.tokens = tokens - size

    def next_send_at(self, now: float) -> float:
        """When the pacer allows the next packet (call after :meth:`can_send` said no)."""
        if self.tokens >= 0.0:
            return now
        return self.tokens_at + (-self.tokens) / self.pacing_rate

    @property
    def bdp(self) -> float:
        """Bytes the path holds at its estimated bandwidth and minimum RTT."""
        if self.min_rtt is None or self.btl_bw <= 0.0:
            return float(INITIAL_CWND_PACKETS * self.mss)
        return self.btl_bw * self.min_rtt

    @property
    def bdp_srtt(self) -> float:
        """Bytes in flight at the estimated bandwidth over the smoothed RTT.

        The RTT is capped at the minimum plus ``RTT_SLACK``: enough for a busy
        host's delays, and a queue at the bottleneck cannot grow the window that
        lets it grow.
        """
        if self.srtt is None or self.min_rtt is None or self.btl_bw <= 0.0:
            return self.bdp
        return self.btl_bw * max(min(self.srtt, self.min_rtt + RTT_SLACK), self.min_rtt)

    # ------------------------------------------------------------ feedback

    def on_ack(self, delivered: int, prior_delivered: int, rate: float | None,
               app_limited: bool, rtt: float | None, in_flight: int, now: float) -> None:
        """Acknowledgements arrived.

        Args:
            delivered: bytes delivered in the session so far (after this ACK).
            prior_delivered: ``delivered`` when the newest acknowledged packet
                was sent (a round trip ends when a packet sent after the
                previous one ended is acknowledged: BBR's packet-timed rounds).
            rate: the delivery-rate sample of this ACK (bytes/s), or None.
            app_limited: the sample was taken while the sender had too little
                to send to fill the path (it may only raise the estimate).
            rtt: this ACK's RTT sample, or None.
            in_flight: bytes still in flight.
        """
        if rtt is not None:
            self.srtt = rtt if self.srtt is None else 0.875 * self.srtt + 0.125 * rtt
            if self.min_rtt is None or rtt <= self.min_rtt:
                self.min_rtt = rtt
                self.min_rtt_at = now
            if self.round_min_rtt is None or rtt < self.round_min_rtt:
                self.round_min_rtt = rtt
        if rate is not None and rate > self.round_all_bw:
            self.round_all_bw = rate
        if rate is not None and (not app_limited or rate > self.btl_bw):
            self.round_bw = max(self.round_bw, rate)
            self.btl_bw = max(self.btl_bw, rate)
        if prior_delivered >= self.round_start_delivered:
            self._end_round(delivered, app_limited, now)
        self._update_mode(in_flight, now)
        self._update_model()

    def _end_round(self, delivered: int, app_limited: bool, now: float) -> None:
        self.round_count += 1
        self.round_start_delivered = delivered
        if self.round_bw > 0.0:
            # A round with no sample that counts (app-limited and below the
            # estimate) neither adds to the window nor ages it: an application
            # that pauses must not forget what the path can carry.
            rounds = self.bw_rounds
            rounds.append(self.round_bw)
            if len(rounds) > BW_WINDOW_ROUNDS:
                del rounds[0]
            self.btl_bw = max(rounds)
        standing = (self.round_min_rtt is not None and self.min_rtt is not None
                    and self.round_min_rtt > 1.25 * self.min_rtt + QUEUE_TARGET)
        if now - self.min_rtt_at > MIN_RTT_WINDOW and self.round_min_rtt is not None:
            self.min_rtt = self.round_min_rtt
            self.min_rtt_at = now
            standing = False
        queue = standing and self.mode is Mode.PROBE_BW
        large = (queue and self.round_min_rtt is not None and self.min_rtt is not None
                 and self.round_min_rtt > 1.25 * self.min_rtt + LARGE_QUEUE)
        if queue and (self.short_rounds >= 1 or large):
            # Two round trips in a row with a standing queue: the path takes less
            # than we send (flows sharing a link can also each sustain one at
            # their estimates, and an application offering less than an
            # overestimate is app-limited yet fills the queue). Drain it, and take
            # the estimate down to what the round delivered, at most by half per
            # round trip (one noisy round on a busy host must not cut the rate).
            got = self.round_all_bw if self.round_all_bw > 0.0 else self.btl_bw
            # At most by half per round trip, or three quarters behind a large
            # queue (a rate that fell 3x is followed in one round, a stalled round
            # on a busy host does not zero the estimate).
            floor = (0.25 if large else 0.5) * self.btl_bw
            bw = max(floor, min(got, DECREASE * self.btl_bw), float(self.mss))
            self.bw_rounds = [bw]
            self.btl_bw = bw
            self.mode = Mode.DRAIN
            queue = False
        elif (self.mode is Mode.PROBE_BW and not standing and not app_limited
              and self.btl_bw > 0.0 and self.bw_rounds):
            # Additive increase: a sixteenth of a packet per round trip, every
            # round trip without a queue. With the multiplicative decrease above
            # this is AIMD on the rate, so flows sharing a bottleneck converge to
            # equal shares (Chiu and Jain); BBR's 1.25 probes alone are
            # multiplicative and keep whatever ratio the flows had.
            rtt = max(self.srtt or INITIAL_RTT, self.min_rtt or INITIAL_RTT)
            step = self.mss / (INCREASE_DIVISOR * rtt)
            self.bw_rounds = [r + step for r in self.bw_rounds]
            self.btl_bw += step
        self.short_rounds = self.short_rounds + 1 if queue else 0
        if self.mode is Mode.STARTUP and standing:
            # A queue is building: the pipe is full (a delay signal, as HyStart and
            # BBR v3 use, ends STARTUP before the buffer fills rather than after).
            self.mode = Mode.DRAIN
            self.full_bw = self.btl_bw
        elif self.mode is Mode.STARTUP and not app_limited:
            if self.btl_bw >= self.full_bw * FULL_BW_GROWTH:
                self.full_bw = self.btl_bw
                self.full_bw_count = 0
            else:
                self.full_bw_count += 1
                if self.full_bw_count >= FULL_BW_ROUNDS:
                    self.mode = Mode.DRAIN
        if self.loss_in_round:
            self.loss_in_round = False
        elif self.loss_cap is not None:
            self.loss_cap *= 1.25
            if self.loss_cap > CWND_GAIN * self.bdp + self.ack_allowance:
                self.loss_cap = None
        self.round_bw = 0.0
        self.round_all_bw = 0.0
        self.round_min_rtt = None

    def _update_mode(self, in_flight: int, now: float) -> None:
        if self.mode is Mode.DRAIN:
            if in_flight <= self.bdp:
                self.mode = Mode.PROBE_BW
                self.phase = 2  # start cruising; probe after a few round trips
                self.phase_at = now
        elif self.mode is Mode.PROBE_BW:
            # Each phase lasts a minimum RTT; probing up (1.25) goes on until the
            # extra data is in flight (or twice as long), draining (0.75) ends as
            # soon as the queue it made is gone (BBR's gain cycling).
            min_rtt = max(self.min_rtt if self.min_rtt is not None else INITIAL_RTT, 0.001)
            elapsed = now - self.phase_at
            gain = PROBE_GAINS[self.phase]
            if gain > 1.0:
                done = elapsed >= min_rtt and (in_flight >= gain * self.bdp
                                               or elapsed >= 2 * min_rtt)
            elif gain < 1.0:
                done = elapsed >= min_rtt or in_flight <= self.bdp
            else:
                done = elapsed >= min_rtt
            if done:
                self.phase = (self.phase + 1) % len(PROBE_GAINS)
                self.phase_at = now

    def _update_model(self) -> None:
        if self.mode is Mode.STARTUP:
            gain = STARTUP_GAIN
        elif self.mode is Mode.DRAIN:
            gain = 1.0 / STARTUP_GAIN
        else:
            gain = PROBE_GAINS[self.phase]
        self.pacing_gain = gain
        if self.btl_bw > 0.0:
            rate = gain * self.btl_bw
            if self.mode is Mode.STARTUP:
                rate = max(rate, self.pacing_rate)  # STARTUP never slows down
            self.pacing_rate = max(rate, self.mss / 0.1)  # at least a packet per 100 ms
        cwnd_gain = STARTUP_GAIN if self.mode is Mode.STARTUP else CWND_GAIN
        # The window covers the bandwidth over the smoothed RTT, not only the
        # minimum: a busy host delays ACKs by milliseconds, and a window of
        # 2 x bw x min RTT would then hold delivery below the estimate, which
        # looks like a slower path (BBR v2 adds an ACK-aggregation allowance for
        # the same reason). Pacing, not the window, keeps the queue short.
        # The receiver acknowledges every ACK_EVERY packets or within ACK_DELAY:
        # the window leaves room for what arrives between two ACKs, no more (a
        # fixed ACK_EVERY datagrams would be 100 ms of queue at 3 Mbit/s).
        allowance = float(self.ack_allowance)
        if self.btl_bw > 0.0:
            allowance = min(allowance, 2 * ACK_DELAY * self.btl_bw + 2 * self.mss)
        cwnd = max(cwnd_gain * self.bdp_srtt + allowance, float(self.min_cwnd))
        if self.loss_cap is not None:
            cwnd = max(min(cwnd, self.loss_cap), float(self.min_cwnd))
        self.cwnd = cwnd

    def on_loss(self, lost_bytes: int, in_flight: int, now: float) -> None:
        """Packets were declared lost; back off once per round trip."""
        if lost_bytes <= 0 or self.loss_in_round:
            return
        self.loss_in_round = True
        cap = max(float(self.min_cwnd), (in_flight + lost_bytes) * LOSS_BACKOFF)
        self.loss_cap = cap if self.loss_cap is None else min(self.loss_cap, cap)
        if self.mode is Mode.STARTUP:
            self.mode = Mode.DRAIN
            self.full_bw = self.btl_bw
        self._update_model()

    def on_spurious_loss(self) -> None:
        """A packet declared lost was acknowledged after all (reordering): undo the
        backoff the loss caused."""
        self.loss_cap = None
        self._update_model()

    def reset(self, now: float) -> None:
        """A new path (roaming): forget the model and start again."""
        self.__init__(self.mss, self.ack_allowance // self.mss, now,  # type: ignore[misc]
                      self.enabled)
