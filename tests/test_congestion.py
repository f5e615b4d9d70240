"""Congestion control, pacing and credit in the core, over a simulated bottleneck.

The seeded link (tests/corelink.py) shapes one direction like tbf does: a FIFO
at a fixed rate behind a 300 ms queue. Time is the link's fake clock, so each
run is exact and reproducible; tests/test_bottleneck.py runs the same shapes
through a real kernel bottleneck. The figures asked of both are those of
docs/performance.md ("Bottleneck"): at 2.4x the link, REALTIME p99 under 50 ms
with at least 75% of the link carrying REALTIME payload, RELIABLE priority 7
complete and in order with p99 under 100 ms.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest

from corelink import Link, Node
from intentra.config import EndpointConfig
from intentra.constants import Intent
from intentra.events import MessageReceived

LINK_RATE = 10e6 / 8        # 10 Mbit/s in bytes per second
MESSAGE = 200               # REALTIME payload bytes
STAMP = struct.Struct("!dI")
TICK = 0.001                # the application sends every millisecond
WARM_UP = 0.5


@dataclass
class Flow:
    """One sender's traffic and what its receiver got."""

    node: Node
    conn_id: int
    load: float                         # offered REALTIME load, a multiple of the link
    sent: int = 0
    reliable_sent: int = 0
    credit: float = 0.0
    latencies: list[float] = field(default_factory=list)
    reliable_latencies: list[float] = field(default_factory=list)
    reliable_seen: list[int] = field(default_factory=list)
    realtime_bytes: int = 0
    arrivals: list[tuple[float, int, float]] = field(default_factory=list)
    """Every REALTIME message received: (time, bytes, latency), warm-up included."""


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run(link: Link, server: Node, flows: list[Flow], duration: float,
        rates: dict[float, float] | None = None) -> dict[int, Flow]:
    """Drive the flows for ``duration`` seconds of fake time; the server collects."""
    by_peer: dict[bytes, Flow] = {f.node.public: f for f in flows}
    start = link.now
    seen = 0
    per_tick = [f.load * LINK_RATE / MESSAGE * TICK for f in flows]
    next_reliable = start
    while link.now < start + duration:
        t = link.now - start
        for at, rate in (rates or {}).items():
            if abs(t - at) < TICK / 2:
                for f in flows:
                    link.path(f.node, server).rate = rate
        for f, n in zip(flows, per_tick, strict=True):
            f.credit += n
            while f.credit >= 1:
                f.credit -= 1
                payload = STAMP.pack(link.now, f.sent) + bytes(MESSAGE - STAMP.size)
                link.send(f.node, f.conn_id, payload, Intent.REALTIME, 0)
                f.sent += 1
        if link.now >= next_reliable:
            next_reliable += 0.01
            for f in flows:
                link.send(f.node, f.conn_id, STAMP.pack(link.now, f.reliable_sent),
                          Intent.RELIABLE, 7)
                f.reliable_sent += 1
        link.advance(TICK)
        for msg in server.messages[seen:]:
            assert isinstance(msg, MessageReceived)
            flow = by_peer[server.endpoint.peer_key(msg.conn_id) or b""]
            sent_at, number = STAMP.unpack_from(msg.data)
            if msg.intent is Intent.REALTIME:
                flow.arrivals.append((link.now, len(msg.data), link.now - sent_at))
            if sent_at - start < WARM_UP:
                continue
            if msg.intent is Intent.RELIABLE:
                flow.reliable_latencies.append(link.now - sent_at)
                flow.reliable_seen.append(number)
            else:
                flow.latencies.append(link.now - sent_at)
                flow.realtime_bytes += len(msg.data)
        seen = len(server.messages)
    return {f.conn_id: f for f in flows}


def setup(senders: int, seed: int = 7) -> tuple[Link, Node, list[Flow]]:
    link = Link(seed=seed, latency=0.002)
    config = EndpointConfig()
    server = link.add("server", config)
    flows = []
    for i in range(senders):
        node = link.add(f"peer{i}", config)
        conn_id, _ = link.establish(node, server)
        link.path(node, server).rate = LINK_RATE
        flows.append(Flow(node, conn_id, 0.0))
    link.advance(0.05)
    return link, server, flows


def check_reliable(flow: Flow) -> None:
    numbers = flow.reliable_seen
    assert numbers == sorted(numbers), "RELIABLE out of order"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "RELIABLE lost"
    assert p99(flow.reliable_latencies) < 0.1, \
        f"RELIABLE p99 {p99(flow.reliable_latencies) * 1e3:.1f} ms"


def test_light_load_is_delivered_whole_and_fast() -> None:
    link, server, [flow] = setup(1)
    flow.load = 0.4
    run(link, server, [flow], 3.0)
    expected = (3.0 - WARM_UP) * 0.4 * LINK_RATE / MESSAGE
    assert len(flow.latencies) >= 0.97 * expected
    assert p99(flow.latencies) < 0.01, f"p99 {p99(flow.latencies) * 1e3:.1f} ms"
    assert server.endpoint.stats.messages_dropped_congestion == 0
    check_reliable(flow)


def test_overload_keeps_realtime_fresh_and_the_link_full() -> None:
    link, server, [flow] = setup(1)
    flow.load = 2.4
    run(link, server, [flow], 5.0)
    payload_rate = flow.realtime_bytes / (5.0 - WARM_UP)
    assert payload_rate >= 0.75 * LINK_RATE, f"REALTIME payload {payload_rate / LINK_RATE:.0%}"
    assert p99(flow.latencies) < 0.05, f"REALTIME p99 {p99(flow.latencies) * 1e3:.1f} ms"
    sender = flow.node.endpoint
    assert sender.stats.messages_dropped_congestion > 0  # dropped at the sender, counted
    check_reliable(flow)


def test_two_sessions_share_the_link_fairly() -> None:
    link, server, flows = setup(2)
    # Both through one bottleneck: the second path shares the first one's queue.
    shared = link.path(flows[0].node, server)
    link._paths[(flows[1].node.name, server.name)] = shared
    for f in flows:
        f.load = 1.2
    run(link, server, flows, 6.0)
    rates = [f.realtime_bytes for f in flows]
    jain = sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates))
    assert jain >= 0.9, f"Jain's index {jain:.3f} of {rates}"
    for f in flows:
        assert p99(f.latencies) < 0.05, f"REALTIME p99 {p99(f.latencies) * 1e3:.1f} ms"
        check_reliable(f)


@pytest.mark.parametrize("low", [0.3, 0.5])
def test_the_controller_follows_the_link_rate_down_and_up(low: float) -> None:
    link, server, [flow] = setup(1)
    flow.load = 1.5
    phases = ((2.0, LINK_RATE), (3.0, LINK_RATE * low), (3.0, LINK_RATE))
    ends = []
    for duration, rate in phases:
        link.path(flow.node, server).rate = rate
        run(link, server, [flow], duration)
        ends.append(link.now)
    # Within about a second of each change the delivered rate is that of the
    # new link (at least 75% of it carried as REALTIME payload), and latency is
    # back under 50 ms: the controller followed the rate down and back up.
    for (_, rate), end in zip(phases, ends, strict=True):
        window = [a for a in flow.arrivals if end - 1.5 <= a[0] < end]
        carried = sum(a[1] for a in window) / 1.5
        assert carried >= 0.75 * rate, f"{carried / rate:.0%} of {rate * 8 / 1e6:.0f} Mbit/s"
        assert p99([a[2] for a in window]) < 0.05


def test_reordering_is_not_taken_for_loss() -> None:
    """30% of the packets held 20 ms each way, nothing lost: packets declared lost that
    are acknowledged after all widen the reordering thresholds and undo the backoff
    (RACK's adaptive window, RFC 8985). Without that, 2,000 RELIABLE messages of 400 B
    took 3.3 s here (the window held at its minimum by spurious losses), against
    0.13 s without reordering."""
    link = Link(seed=5)
    a, b = link.add("a"), link.add("b")
    cid_a, _ = link.establish(a, b)
    link.advance(0.05)
    for path in link.both(a, b):
        path.reorder, path.hold = 0.3, 0.005
    start, n, sent = link.now, 2000, 0
    while len(b.messages) < n and link.now < start + 10:
        for _ in range(min(a.endpoint.reliable_capacity(cid_a), n - sent)):
            link.send(a, cid_a, b"%d " % sent + bytes(400))
            sent += 1
        link.advance(0.002)
    recovery = a.endpoint.sessions[cid_a].recovery
    assert [m.data.split(b" ")[0] for m in b.messages] == [b"%d" % i for i in range(n)]
    assert recovery.spurious > 0 and recovery.reorder_threshold > 3
    assert link.now - start < 1.0, f"{link.now - start:.2f} s"


def test_a_bursty_quiet_sender_on_a_clean_path_sheds_nothing() -> None:
    """A hub's fan-out: bursts of 19 small REALTIME messages every 20 ms, far below
    what the path takes, on a path with some delay jitter: nothing may be shed. (The
    busy-host case where such sessions did shed, their window full before an ACK was
    due, needs real processes on loaded cores: test_cli's 50 Hz hub test reproduces
    it; this simulated one guards the clean-path behaviour.)"""
    link = Link(seed=13)
    a, b = link.add("a"), link.add("b")
    cid_a, _ = link.establish(a, b)
    for path in link.both(a, b):  # a busy host: delays of 10-30 ms now and then
        path.reorder, path.hold = 0.3, 0.005
    sent = 0
    for _ in range(250):  # 5 s
        for _ in range(19):
            link.send(a, cid_a, STAMP.pack(link.now, sent) + bytes(40), Intent.REALTIME)
            sent += 1
        link.advance(0.02)
    link.advance(1.0)
    stats = a.endpoint.stats
    assert stats.messages_dropped_congestion == 0 and stats.messages_dropped_deadline == 0
    assert len(b.payloads(Intent.REALTIME)) == sent
