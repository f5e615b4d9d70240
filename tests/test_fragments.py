"""Large messages and lanes (docs/protocol.md section 14) over the fake-clock link.

Fragmenting and reassembly at every size boundary for both intents, lane order and
lane independence, the ordering contract of section 14.8, the X bit's use (version
2's packets whenever a message fits and no other lane is pending), the memory and
window bounds during a transfer, loss, the endpoint-wide credit budget, and the
worked example of section 14.9 byte for byte.
"""

from __future__ import annotations

import random

import pytest

from corelink import LATENCY, Datagram, DropFirst, Link, Node, connected_pair, is_type
from intentra.config import EndpointConfig
from intentra.constants import (
    EXTENDED_BIT,
    HEADER_LEN,
    RECORD_FRAGMENT,
    RECORD_RELIABLE,
    RSEQ_LEN,
    TAG_LEN,
    Intent,
    PacketType,
)
from intentra.core.wire import (
    U32,
    pack_header,
    pack_record,
    unpack_header,
    unpack_records,
)
from intentra.errors import InvalidMessageError, MessageTooLargeError
from intentra.events import MessageReceived, SessionClosed

RELIABLE, REALTIME = Intent.RELIABLE, Intent.REALTIME
DATA = is_type(PacketType.DATA)
SMALL_MAX = 64 * 1024
"""max_message_size of most tests here: every boundary, in a fraction of the time."""
CONFIG = EndpointConfig(max_message_size=SMALL_MAX)


def setup(config: EndpointConfig = CONFIG, seed: int = 1,
          config_b: EndpointConfig | None = None) -> tuple[Link, Node, Node, int, int]:
    return connected_pair(seed, config, config_b)


def extended(d: Datagram) -> bool:
    return d.ptype == PacketType.DATA and bool(d.data[1] & EXTENDED_BIT)


def messages(node: Node, lane: int | None = None,
             intent: Intent | None = None) -> list[bytes]:
    return [m.data for m in node.messages
            if (lane is None or m.lane == lane) and (intent is None or m.intent == intent)]


def boundaries(config: EndpointConfig) -> list[int]:
    """Every size where the framing changes (docs/protocol.md 5 and 14.2)."""
    limit = config.max_datagram - HEADER_LEN - TAG_LEN
    one = config.max_datagram_message                     # X = 0, RELIABLE
    whole = limit - RSEQ_LEN - RECORD_RELIABLE            # one extended RELIABLE record
    frag = limit - RSEQ_LEN - RECORD_FRAGMENT             # a full fragment
    top = config.max_message_size
    return sorted({1, whole, whole + 1, one, one + 1, one + 4, one + 5, frag, frag + 1,
                   2 * frag, 2 * frag + 1, top - 1, top})


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("lane", [0, 1, 255])
def test_reliable_round_trips_at_every_boundary_in_order(lane: int) -> None:
    """One of each size, queued in one turn: all arrive, whole, once, in the order sent."""
    link, a, b, cid_a, _ = setup()
    rng = random.Random(lane)
    sent = [rng.randbytes(n) for n in boundaries(CONFIG)]
    for data in sent:
        assert a.endpoint.send(cid_a, data, RELIABLE, 0, link.now, lane=lane)
    link.advance(2.0)
    assert messages(b, lane) == sent
    assert all(len(d.data) <= CONFIG.max_datagram for d in link.sent)
    assert b.endpoint.stats.strike_events == 0
    with pytest.raises(MessageTooLargeError):
        a.endpoint.send(cid_a, bytes(SMALL_MAX + 1), RELIABLE, 0, link.now, lane=lane)


@pytest.mark.parametrize("lane", [0, 7])
def test_realtime_round_trips_at_every_boundary(lane: int) -> None:
    """Sent one by one (a REALTIME message is never late: each gets the path to itself)."""
    link, a, b, cid_a, _ = setup()
    rng = random.Random(100 + lane)
    sent = [rng.randbytes(n) for n in boundaries(CONFIG)]
    for data in sent:
        assert a.endpoint.send(cid_a, data, REALTIME, 3, link.now, lane=lane)
        link.advance(0.2)
    assert messages(b, lane, REALTIME) == sent
    assert all(m.lane == lane and m.intent is REALTIME for m in b.messages)
    assert b.endpoint.stats.messages_dropped_reassembly == 0


def test_the_default_largest_message_both_intents_and_one_byte_more() -> None:
    """1 MiB, the default max_message_size, both intents; 1 MiB + 1 is refused.

    The receiver's RATE_LIMIT_PPS (10,000 packets/s by default, about 11 MB/s at 1200-byte
    datagrams) would drop part of a 1 MiB REALTIME message arriving within the 100 ms
    deadline: this receiver allows more (README says so)."""
    config = EndpointConfig()
    fast = EndpointConfig(rate_limit_pps=100_000, rate_limit_burst=5_000)
    link, a, b, cid_a, _ = setup(config, config_b=fast)
    big = random.Random(5).randbytes(config.max_message_size)
    a.endpoint.send(cid_a, big, RELIABLE, 0, link.now, lane=2)
    link.advance(3.0)
    a.endpoint.send(cid_a, big[::-1], REALTIME, 0, link.now)
    link.advance(0.5)
    assert messages(b, 2, RELIABLE) == [big]
    assert messages(b, 0, REALTIME) == [big[::-1]]
    for intent in (RELIABLE, REALTIME):
        with pytest.raises(MessageTooLargeError, match="max_message_size"):
            a.endpoint.send(cid_a, big + b"!", intent, 0, link.now)
    with pytest.raises(InvalidMessageError, match="lane"):
        a.endpoint.send(cid_a, b"x", RELIABLE, 0, link.now, lane=256)
    with pytest.raises(InvalidMessageError, match="lane"):
        a.endpoint.send(cid_a, b"x", RELIABLE, 0, link.now, lane=-1)


# ------------------------------------------------------------------ the X bit

def test_lane_zero_messages_that_fit_keep_version_2_packets() -> None:
    """No lanes, no large messages: not one extended packet (protocol.md 14.6)."""
    link, a, b, cid_a, _ = setup()
    for i in range(300):
        link.send(a, cid_a, b"m%d" % i, RELIABLE, i % 8)
        link.send(a, cid_a, b"r%d" % i, REALTIME, i % 8)
    link.advance(1.0)
    assert len(messages(b, 0, RELIABLE)) == 300
    assert not any(extended(d) for d in link.sent)


def test_lane_zero_goes_extended_only_while_another_lane_is_unacknowledged() -> None:
    """Rule 5 of 14.3: behind an unacknowledged record of lane 1, a lane-0 message goes
    as an X = 1 record (with its lseq); once lane 1 is acknowledged, X = 0 again."""
    link, a, b, cid_a, _ = setup()
    a.endpoint.send(cid_a, b"lane one", RELIABLE, 0, link.now, lane=1)
    link.send(a, cid_a, b"zero-1")
    link.pump(a)
    first = [d for d in link.sent_by(a, DATA)]
    assert [extended(d) for d in first] == [True], "both records share one extended packet"
    link.advance(0.5)  # lane 1 acknowledged
    before = len(link.sent_by(a, DATA))
    link.send(a, cid_a, b"zero-2")
    link.advance(0.5)
    assert [extended(d) for d in link.sent_by(a, DATA)[before:]] == [False]
    assert messages(b, 0) == [b"zero-1", b"zero-2"]
    assert messages(b, 1) == [b"lane one"]


# ------------------------------------------------------------------ ordering contract

def test_one_lane_keeps_the_order_sent_whatever_the_priorities() -> None:
    """Issue 10's case: cmd1 p0, cmd2 p7, cmd3 p3, cmd4 p0 in one turn arrive in order."""
    link, a, b, cid_a, _ = setup()
    for name, prio in ((b"cmd1", 0), (b"cmd2", 7), (b"cmd3", 3), (b"cmd4", 0)):
        link.send(a, cid_a, name, RELIABLE, prio)
    link.advance(0.5)
    assert messages(b) == [b"cmd1", b"cmd2", b"cmd3", b"cmd4"]


def test_a_lane_waits_at_the_highest_priority_queued_on_it() -> None:
    """A p7 message behind a p0 one on lane 1 lends it its priority: lane 1 goes before
    REALTIME p3 and lane 2's p5 (protocol.md 14.8), and still in its own order."""
    config = EndpointConfig(max_message_size=SMALL_MAX, max_reliable_in_flight=1)
    link, a, b, cid_a, _ = setup(config)
    link.send(a, cid_a, b"fill")   # fills the window of one
    link.pump(a)
    ep = a.endpoint
    ep.send(cid_a, b"l1-p0", RELIABLE, 0, link.now, lane=1)
    ep.send(cid_a, b"l2-p5", RELIABLE, 5, link.now, lane=2)
    ep.send(cid_a, b"l1-p7", RELIABLE, 7, link.now, lane=1)
    link.advance(1.0)
    assert messages(b) == [b"fill", b"l1-p0", b"l1-p7", b"l2-p5"]


def test_a_large_low_priority_message_interleaves_with_small_urgent_ones() -> None:
    """Fragment by fragment: small p7 commands queued after a 64 KiB p0 message on another
    lane leave (and arrive) long before its last fragment."""
    link, a, b, cid_a, _ = setup()
    big = bytes(SMALL_MAX)
    a.endpoint.send(cid_a, big, RELIABLE, 0, link.now, lane=1)
    link.pump(a)  # the first window of fragments leaves
    for i in range(5):
        link.send(a, cid_a, b"cmd%d" % i, RELIABLE, 7)
    link.advance(2.0)
    order = [(m.lane, len(m.data)) for m in b.messages]
    assert order[-1] == (1, SMALL_MAX), order
    assert messages(b, 0) == [b"cmd%d" % i for i in range(5)]


# ------------------------------------------------------------------ lane independence

def _small_after_large(one_lane: bool) -> float:
    """Seconds from sending a small lane-0 message to its delivery, sent right after a
    large message whose first packet is lost."""
    link, a, b, cid_a, _ = setup()
    link.path(a, b).drop = DropFirst(extended)
    # 7 fragments: within the first congestion window, so "stop" leaves at once too
    a.endpoint.send(cid_a, bytes(8_000), RELIABLE, 0, link.now, lane=0 if one_lane else 1)
    link.pump(a)
    t0 = link.now
    link.send(a, cid_a, b"stop", RELIABLE, 7)
    link.advance(2.0)
    [t] = [t for t, e in b.timed(MessageReceived) if e.data == b"stop"]
    assert len(messages(b)) == 2, "both arrive in the end"
    return t - t0


def test_a_loss_on_another_lane_never_delays_lane_zero() -> None:
    separate = _small_after_large(one_lane=False)
    shared = _small_after_large(one_lane=True)
    assert separate <= 2 * LATENCY, f"lane 0 waited {separate * 1000:.1f} ms for lane 1"
    assert shared > 3 * LATENCY, "on one lane the small message must wait for the resend"


# ------------------------------------------------------------------ bounds and loss

def test_a_large_transfer_stays_within_the_window_and_the_credit() -> None:
    """A 1 MiB message is never all in flight: its fragments take positions as the window
    (MAX_RELIABLE_IN_FLIGHT) and the receiver's credit allow; the receiver never holds
    more than MAX_REORDER_BUFFER."""
    config = EndpointConfig()
    link, a, b, cid_a, cid_b = setup(config)
    sender = a.endpoint.sessions[cid_a]
    receiver = b.endpoint.sessions[cid_b]
    link.path(a, b).loss = 0.05
    big = random.Random(9).randbytes(config.max_message_size)
    a.endpoint.send(cid_a, big, RELIABLE, 0, link.now, lane=3)
    peak_flight = peak_held = 0
    for _ in range(300):
        link.advance(0.01)
        peak_flight = max(peak_flight, sender.send_window.in_flight)
        peak_held = max(peak_held, receiver.recv_window.reservation())
        if messages(b, 3):
            break
    assert messages(b, 3) == [big]
    assert peak_flight <= config.max_reliable_in_flight
    assert peak_held <= config.max_reorder_buffer
    assert sender.send_window.in_flight == 0 or link.advance(0.5) is not None


def test_reliable_large_messages_exactly_once_in_order_under_20_percent_loss() -> None:
    link, a, b, cid_a, cid_b = setup(seed=4)
    link.path(a, b).loss = link.path(b, a).loss = 0.2
    rng = random.Random(4)
    up = [rng.randbytes(rng.randint(1, 20_000)) for _ in range(30)]
    down = [rng.randbytes(rng.randint(1, 20_000)) for _ in range(30)]
    for i, (u, d) in enumerate(zip(up, down, strict=True)):
        a.endpoint.send(cid_a, u, RELIABLE, i % 8, link.now, lane=i % 3)
        b.endpoint.send(cid_b, d, RELIABLE, 0, link.now, lane=5)
    link.advance(20.0)
    for lane in range(3):
        assert messages(b, lane) == [u for i, u in enumerate(up) if i % 3 == lane]
    assert messages(a, 5) == down
    assert a.endpoint.stats.strike_events == b.endpoint.stats.strike_events == 0


def test_realtime_large_messages_arrive_whole_or_not_at_all_under_loss() -> None:
    link, a, b, cid_a, cid_b = setup(seed=6)
    link.path(a, b).loss = 0.2
    rng = random.Random(6)
    sent = [rng.randbytes(rng.randint(2_000, 12_000)) for _ in range(40)]
    for i, data in enumerate(sent):
        a.endpoint.send(cid_a, data, REALTIME, 2, link.now, lane=i % 2)
        link.advance(0.05)
    link.advance(0.5)
    got = b.messages
    assert 0 < len(got) < len(sent), "some whole, some lost"
    assert all(m.data == sent[sent.index(m.data)] and m.lane == sent.index(m.data) % 2
               for m in got), "never corrupted, never mixed"
    assert len({m.data for m in got}) == len(got), "at most once"
    stats = b.endpoint.stats
    assert stats.messages_dropped_reassembly > 0, "partial messages are counted"
    reassembly = b.endpoint.sessions[cid_b].rt_reassembly
    assert reassembly.partials == {} and reassembly.used == 0, "and released after the deadline"
    assert b.endpoint.reassembly_budget.used == 0


def test_partial_messages_of_several_sessions_do_not_stop_each_other() -> None:
    """The endpoint-wide credit budget (max_reorder_total) smaller than two messages:
    the session holding a partial message may finish it (protocol.md 12), so both
    senders' messages arrive rather than each waiting for the other's room."""
    link = Link(8)
    server = link.add("server", EndpointConfig(max_message_size=SMALL_MAX * 4,
                                               max_reorder_total=96 * 1024))
    senders = [link.add(f"s{i}", EndpointConfig(max_message_size=SMALL_MAX * 4))
               for i in range(3)]
    ids = [link.establish(s, server)[0] for s in senders]
    link.advance(0.1)
    big = [bytes([i]) * (SMALL_MAX * 4) for i in range(3)]
    for s, cid, data in zip(senders, ids, big, strict=True):
        s.endpoint.send(cid, data, RELIABLE, 0, link.now, lane=1)
    link.advance(10.0)
    assert sorted(messages(server, 1)) == big


def test_a_session_that_ends_reports_a_large_message_once_whole() -> None:
    link, a, b, cid_a, _ = setup()
    link.path(a, b).loss = 1.0  # nothing arrives: everything stays unacknowledged
    big = bytes(range(256)) * 100
    a.endpoint.send(cid_a, big, RELIABLE, 3, link.now, lane=4)
    a.endpoint.send(cid_a, b"after", RELIABLE, 1, link.now, lane=4)
    link.send(a, cid_a, b"zero", RELIABLE, 0)
    link.pump(a)
    a.endpoint.close(cid_a, link.now)
    link.pump(a)
    [closed] = a.of_type(SessionClosed)
    # in flight first (the large one once, whole), then each lane's queue in order
    assert closed.pending[0] == (big, 3, 4)
    assert sorted(closed.pending, key=lambda p: p[2]) == [
        (b"zero", 0, 0), (big, 3, 4), (b"after", 1, 4)]
    assert closed.unacked_reliable == 3


# ------------------------------------------------------------------ the worked example

def test_the_worked_example_of_section_14_9_byte_for_byte() -> None:
    """docs/protocol.md 14.9: packet P2 (its header and plaintext), built with the codec."""
    stop = b"stop"
    second = b"GHIJ"
    plaintext = (U32.pack(262)
                 + pack_record(True, 0, 7, stop) + stop
                 + pack_record(True, 1, 2, second, offset=6, total=10) + second)
    header = pack_header(PacketType.DATA, RELIABLE, 6, 0, len(plaintext), 0x8A3F12C4, 0x12,
                         44, 1, extended=1)
    expected = bytes.fromhex(
        "20 36 00 24 8a 3f 12 c4 00 00 00 12 00 00 00 2c"
        "00 00 01 06"
        "00 00 00 00 00 07 00 04 73 74 6f 70"
        "01 01 00 00 00 02 00 00 00 06 00 00 00 0a 00 04"
        "47 48 49 4a")
    assert header + plaintext == expected
    parsed = unpack_header(header + plaintext + bytes(TAG_LEN))
    assert parsed is not None and parsed.extended == 1 and parsed.priority == 6
    assert unpack_records(plaintext, RSEQ_LEN, True, 10) == [
        (0, 0, 7, 0, 4, stop), (1, 1, 2, 6, 10, second)]
    first = U32.pack(261) + pack_record(True, 1, 2, b"ABCDEF", 0, 10) + b"ABCDEF"
    assert first.hex(" ") == ("00 00 01 05 01 01 00 00 00 02 00 00 00 00 00 00 00 0a 00 06 "
                              "41 42 43 44 45 46")
    assert len(header) + len(plaintext) + TAG_LEN == 68
