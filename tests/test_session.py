"""Sessions of docs/protocol.md sections 4, 6 and 8 over the seeded in-memory link (fake clock)."""

from __future__ import annotations

from collections import Counter

import pytest

from corelink import LATENCY, Datagram, DropFirst, Link, Node, connected_pair, is_type
from intentra.config import EndpointConfig
from intentra.constants import (
    HEADER_LEN,
    LEN_PREFIX,
    RSEQ_LEN,
    TAG_LEN,
    CloseReason,
    Intent,
    PacketType,
)
from intentra.core.wire import ACK_BODY, U32, unpack_header
from intentra.events import MessageReceived, PeerRoamed, SessionClosed

RELIABLE, REALTIME = Intent.RELIABLE, Intent.REALTIME
DATA = is_type(PacketType.DATA)


def setup(seed: int = 1, config: EndpointConfig | None = None,
          config_b: EndpointConfig | None = None) -> tuple[Link, Node, Node, int, int]:
    """Two endpoints with an established session; the link is quiet afterwards."""
    return connected_pair(seed, config, config_b)


def forge(link: Link, node: Node, conn_id: int, ptype: PacketType, intent: Intent,
          plaintext: bytes, ack: int | None = None, priority: int = 0) -> None:
    """Seal an arbitrary plaintext with the session's real keys and send it.

    This is what a hostile peer holding valid keys can do; the receiver must
    treat it as an authenticated violation.
    """
    session = node.endpoint.sessions[conn_id]
    if ack is None:
        ack = session.recv_window.ack
    assert session._seal(int(ptype), int(intent), priority, ack, plaintext, link.now)
    link.pump(node)


def data_sent(link: Link, node: Node) -> list[bytes]:
    return [d.data for d in link.sent_by(node, DATA)]


# --------------------------------------------------------------- packing


def expected_packing(sizes_prios: list[tuple[int, int]], limit: int, first: int) -> list[int]:
    """Header priorities of the datagrams a greedy packer builds, in order."""
    prios: list[int] = []
    size = first
    prio = -1
    for length, p in sizes_prios:
        need = LEN_PREFIX + length
        if prio >= 0 and size + need > limit:
            prios.append(prio)
            size, prio = first, -1
        size += need
        prio = max(prio, p)
    prios.append(prio)
    return prios


@pytest.mark.parametrize("intent", [RELIABLE, REALTIME])
@pytest.mark.parametrize("max_datagram", [1200, 200])
def test_messages_queued_in_one_turn_share_datagrams(intent: Intent, max_datagram: int) -> None:
    config = EndpointConfig(max_datagram=max_datagram)
    link, a, b, cid_a, _ = setup(config=config)
    messages = [(bytes([i]) * 20, (i * 3) % 5) for i in range(40)]
    before = len(data_sent(link, a))
    for data, prio in messages:
        link.send(a, cid_a, data, intent, prio)
    link.pump(a)
    sent = data_sent(link, a)[before:]
    link.advance(0.5)

    # REALTIME leaves by priority (stable: FIFO within a level); RELIABLE messages of
    # one lane leave in the order sent, whatever their priorities (protocol.md 14.8).
    by_priority = sorted(messages, key=lambda m: -m[1]) if intent == REALTIME else messages
    first = RSEQ_LEN if intent == RELIABLE else 0
    limit = max_datagram - HEADER_LEN - TAG_LEN
    expected = expected_packing([(len(d), p) for d, p in by_priority], limit, first)
    assert len(sent) == len(expected)
    assert all(len(d) <= max_datagram for d in sent)
    headers = [unpack_header(d) for d in sent]
    assert [h.priority for h in headers if h is not None] == expected
    assert all(h is not None and h.intent == intent for h in headers)
    assert b.payloads() == [d for d, _ in by_priority]
    # Every message reports the header priority of the packet that carried it.
    received = b.of_type(MessageReceived)
    assert received[0].priority == expected[0] == 4
    assert {m.priority for m in received} == set(expected)


def test_realtime_and_reliable_never_share_a_datagram() -> None:
    link, a, b, cid_a, _ = setup()
    before = len(data_sent(link, a))
    for i in range(10):
        link.send(a, cid_a, b"r%d" % i, RELIABLE, 1)
        link.send(a, cid_a, b"t%d" % i, REALTIME, 2)
    link.pump(a)
    sent = [unpack_header(d) for d in data_sent(link, a)[before:]]
    assert sorted((h.intent, h.priority) for h in sent if h is not None) == [(0, 1), (1, 2)]
    link.advance(0.1)
    assert b.payloads(RELIABLE) == [b"r%d" % i for i in range(10)]
    assert b.payloads(REALTIME) == [b"t%d" % i for i in range(10)]


# --------------------------------------------------------------- violations


def _bad_cases() -> list[tuple[str, PacketType, Intent, bytes, int | None]]:
    config = EndpointConfig()
    # v1 bounded rseq by MAX_RELIABLE_IN_FLIGHT; v2 by the receiver's credit edge, which
    # reserves max_datagram bytes per message: 262144 // 1200 = 218 messages.
    edge = config.max_reorder_buffer // config.max_datagram
    return [
        ("realtime-length-beyond", PacketType.DATA, REALTIME, b"\x00\x09abc", None),
        ("realtime-length-zero", PacketType.DATA, REALTIME, b"\x00\x00\x00\x01a", None),
        ("realtime-truncated-prefix", PacketType.DATA, REALTIME, b"\x00\x01a\x00", None),
        ("reliable-length-beyond", PacketType.DATA, RELIABLE, U32.pack(1) + b"\x00\x05ab", None),
        ("reliable-trailing-byte", PacketType.DATA, RELIABLE, U32.pack(1) + b"\x00\x01ab", None),
        ("reliable-rseq-beyond-credit-edge", PacketType.DATA, RELIABLE,
         U32.pack(1 + edge) + b"\x00\x01a", None),
        ("data-ack-never-sent", PacketType.DATA, REALTIME, b"\x00\x01a", 7),
        ("ack-never-sent", PacketType.ACK, RELIABLE, ACK_BODY.pack(0, 0, 0, 0, 0), 7),
        ("ack-bitmap-never-sent", PacketType.ACK, RELIABLE, ACK_BODY.pack(1 << 5, 0, 0, 0, 0), 0),
        ("ack-largest-pn-never-sent", PacketType.ACK, RELIABLE,
         ACK_BODY.pack(0, 10**6, 0, 0, 0), 0),
        ("ack-pn-bitmap-below-pn-1", PacketType.ACK, RELIABLE, ACK_BODY.pack(0, 1, 1, 0, 0), 0),
    ]


@pytest.mark.parametrize(("ptype", "intent", "plaintext", "ack"),
                         [c[1:] for c in _bad_cases()], ids=[c[0] for c in _bad_cases()])
def test_authenticated_violation_strikes_and_delivers_nothing(
        ptype: PacketType, intent: Intent, plaintext: bytes, ack: int | None) -> None:
    link, a, b, cid_a, cid_b = setup()
    forge(link, a, cid_a, ptype, intent, plaintext, ack)
    link.advance(0.1)

    assert b.endpoint.stats.strike_events == 1
    assert b.endpoint.sessions[cid_b].strikes == 1
    assert b.of_type(MessageReceived) == []
    assert b.established(cid_b)
    # The session still works.
    link.send(a, cid_a, b"fine")
    link.advance(0.1)
    assert b.payloads() == [b"fine"]
    assert b.endpoint.stats.strike_events == 1


def test_well_formed_forged_packet_is_not_a_violation() -> None:
    """The control case of the table above: the same path with valid framing."""
    link, a, b, cid_a, _ = setup()
    forge(link, a, cid_a, PacketType.DATA, REALTIME, b"\x00\x02ok\x00\x01!")
    link.advance(0.1)
    assert b.endpoint.stats.strike_events == 0
    assert b.payloads() == [b"ok", b"!"]


@pytest.mark.parametrize("strikes", [9, 10])
def test_strike_threshold_closes_with_protocol_violation(strikes: int) -> None:
    link, a, b, cid_a, cid_b = setup()
    threshold = b.endpoint.config.strike_threshold
    for _ in range(strikes):
        forge(link, a, cid_a, PacketType.DATA, REALTIME, b"\x00\x00\x00")
    link.advance(0.2)

    assert b.endpoint.stats.strike_events == strikes
    if strikes < threshold:
        assert b.established(cid_b)
        assert a.established(cid_a)
        return
    closed_b = b.closed(cid_b)
    assert closed_b is not None
    assert (closed_b.reason, closed_b.by_peer) == (CloseReason.PROTOCOL_VIOLATION, False)
    closed_a = a.closed(cid_a)
    assert closed_a is not None
    assert (closed_a.reason, closed_a.by_peer) == (CloseReason.PROTOCOL_VIOLATION, True)
    assert b.endpoint.sessions == {}


def test_strikes_decay() -> None:
    link, a, b, cid_a, cid_b = setup()
    cfg = b.endpoint.config
    for _ in range(2 * cfg.strike_threshold):
        forge(link, a, cid_a, PacketType.DATA, REALTIME, b"\x00\x00\x00")
        link.advance(cfg.strike_decay + 0.5)
    assert b.endpoint.stats.strike_events == 2 * cfg.strike_threshold
    assert b.established(cid_b)
    assert b.endpoint.sessions[cid_b].strikes == 1


# --------------------------------------------------------------- packet numbers


def test_packet_numbers_cross_the_32_bit_wrap() -> None:
    start = 2**32 - 50
    link, a, b, cid_a, cid_b = setup(config=EndpointConfig(initial_pn=start))
    for i in range(100):
        link.send(a, cid_a, b"rel%d" % i, RELIABLE)
        link.advance(0.002)
        link.send(a, cid_a, b"rt%d" % i, REALTIME)
        link.advance(0.002)
        link.send(b, cid_b, b"back%d" % i, RELIABLE)
    link.advance(1.0)

    seqs = [d.seq for d in link.sent_by(a, DATA)]
    assert len(seqs) >= 200
    assert max(seqs) >= start and min(seqs) < 200  # it did wrap
    assert b.payloads(RELIABLE) == [b"rel%d" % i for i in range(100)]
    assert b.payloads(REALTIME) == [b"rt%d" % i for i in range(100)]
    assert a.payloads(RELIABLE) == [b"back%d" % i for i in range(100)]
    for node in (a, b):
        assert node.endpoint.stats.replay_rejections == 0
        assert node.endpoint.stats.packets_dropped_crypto == 0
        assert node.endpoint.stats.retransmissions == 0


def test_pn_limit_closes_with_key_exhausted() -> None:
    limit = 40
    config = EndpointConfig(initial_pn=1, pn_limit=limit)
    link, a, b, cid_a, cid_b = setup(config=config)
    for i in range(2 * limit):
        if not a.established(cid_a):
            break
        link.send(a, cid_a, b"m%d" % i, REALTIME)
        link.advance(0.002)
    link.advance(0.5)

    closed_a = a.closed(cid_a)
    assert closed_a is not None
    assert (closed_a.reason, closed_a.by_peer) == (CloseReason.KEY_EXHAUSTED, False)
    closed_b = b.closed(cid_b)
    assert closed_b is not None
    assert (closed_b.reason, closed_b.by_peer) == (CloseReason.KEY_EXHAUSTED, True)
    encrypted = [d for d in link.sent_by(a) if d.ptype != PacketType.HS]
    assert encrypted[-1].ptype == PacketType.CLOSE
    assert all(1 <= d.seq < limit for d in encrypted)
    assert len({d.seq for d in encrypted}) == len(encrypted)  # never reused
    # every DATA sent before the CLOSE was delivered (v2: ACKs share the pn space)
    assert len(b.payloads()) == len([d for d in encrypted if d.ptype == PacketType.DATA])


# --------------------------------------------------------------- key update


def test_key_updates_in_both_directions_with_reordering() -> None:
    config = EndpointConfig(key_update_packets=20, key_update_min_interval=0.001)
    link, a, b, cid_a, cid_b = setup(seed=7, config=config)
    for path in link.both(a, b):
        path.reorder = 0.15
        path.hold = 0.02
        path.dup = 0.02
    n = 300
    for i in range(n):
        link.send(a, cid_a, b"a-rel-%d" % i, RELIABLE)
        link.send(a, cid_a, b"a-rt-%d" % i, REALTIME)
        link.send(b, cid_b, b"b-rel-%d" % i, RELIABLE)
        link.send(b, cid_b, b"b-rt-%d" % i, REALTIME)
        link.advance(0.003)
    link.advance(5.0)

    for node in (a, b):
        stats = node.endpoint.stats
        assert stats.key_updates_send >= 5, node.name
        assert stats.key_updates_receive >= 5, node.name
    assert a.established(cid_a) and b.established(cid_b)
    assert b.payloads(RELIABLE) == [b"a-rel-%d" % i for i in range(n)]
    assert a.payloads(RELIABLE) == [b"b-rel-%d" % i for i in range(n)]
    for node, name in ((a, b"b"), (b, b"a")):
        realtime = node.payloads(REALTIME)
        assert max(Counter(realtime).values()) == 1
        assert set(realtime) <= {name + b"-rt-%d" % i for i in range(n)}
        assert len(realtime) > n // 2


def test_late_packet_of_the_previous_phase_opens_until_the_old_key_expires() -> None:
    config = EndpointConfig(key_update_packets=5, key_update_min_interval=0.001)
    link, a, b, cid_a, cid_b = setup(config=config)
    held = DropFirst(lambda d: d.ptype == PacketType.DATA and d.src == a.addr
                     and d.data[1] & 1 == 0 and d.seq >= 4, 2)
    link.path(a, b).drop = held
    for i in range(8):
        link.send(a, cid_a, b"m%d" % i, REALTIME)
        link.advance(0.001)
    link.advance(0.01)
    # v2: the initiator's first two packets under the first key are ACKs (its credit,
    # and its answer to the responder's ack-eliciting ACK): pns 1 and 2; DATA from pn 3.
    phases = [d.data[1] & 1 for d in link.sent_by(a, DATA)]
    assert phases == [0] * 3 + [1] * 5
    assert [d.seq for d in held.dropped] == [4, 5]
    assert b.endpoint.stats.key_updates_receive == 1
    assert b.payloads() == [b"m0", b"m3", b"m4", b"m5", b"m6", b"m7"]

    # Within 3 x RTO: the previous key still opens it.
    link.deliver(held.dropped[1].data, a.addr, b)
    assert b.payloads()[-1] == b"m2"
    # After it: the previous key is gone (docs/protocol.md 4), the packet cannot be opened.
    link.advance(3 * b.endpoint.sessions[cid_b].rtt.rto + 0.1)
    crypto = b.endpoint.stats.packets_dropped_crypto
    link.deliver(held.dropped[0].data, a.addr, b)
    assert b.endpoint.stats.packets_dropped_crypto == crypto + 1
    assert b"m1" not in b.payloads()
    assert b.established(cid_b)


# --------------------------------------------------------------- reliability


def test_reliable_exactly_once_in_order_under_loss_dup_reorder() -> None:
    link, a, b, cid_a, cid_b = setup(seed=3)
    for path in link.both(a, b):
        path.loss = 0.2
        path.dup = 0.05
        path.reorder = 0.1
    n = 2000
    sent = {a.name: 0, b.name: 0}

    def message(name: str, i: int) -> bytes:
        # One message per datagram (two do not fit 1200 bytes): under v2's congestion
        # control queued messages pack together, and this test wants many datagrams.
        return b"%s-%d-" % (name.encode(), i) + bytes(600)

    def feed(node: Node, conn_id: int) -> None:
        # A few messages per turn, so that they travel in many datagrams.
        room = node.endpoint.reliable_capacity(conn_id)
        for _ in range(min(room, 4, n - sent[node.name])):
            link.send(node, conn_id, message(node.name, sent[node.name]))
            sent[node.name] += 1

    def done() -> bool:
        return len(a.messages) >= n and len(b.messages) >= n

    while not done() and link.now < 120.0:
        feed(a, cid_a)
        feed(b, cid_b)
        link.advance(0.002, done)

    assert b.payloads() == [message("a", i) for i in range(n)]
    assert a.payloads() == [message("b", i) for i in range(n)]
    assert len(link.sent_by(a, DATA)) > 1000
    assert a.established(cid_a) and b.established(cid_b)
    assert a.endpoint.stats.retransmissions > 0
    assert b.endpoint.stats.replay_rejections > 0


# --------------------------------------------------------------- queueing


@pytest.mark.parametrize(("wait", "delivered"), [(0.05, 3), (0.2, 0)])
def test_realtime_past_its_deadline_is_dropped(wait: float, delivered: int) -> None:
    link, a, b, cid_a, _ = setup()
    for i in range(3):
        link.send(a, cid_a, b"late%d" % i, REALTIME, i)
    link.now += wait  # the loop turn took this long before the flush
    link.pump(a)
    link.advance(0.1)

    assert len(b.payloads(REALTIME)) == delivered
    assert a.endpoint.stats.messages_dropped_deadline == 3 - delivered


def test_realtime_behind_a_full_window_is_dropped_at_its_deadline() -> None:
    """docs/protocol.md 6: REALTIME older than its deadline is dropped at the sender,
    oldest first, also when no ACK comes back to open the congestion window (a
    blackhole): it must not wait, late, until the send queue is full."""
    link, a, b, cid_a, _ = setup()
    link.path(b, a).loss = 1.0  # no ACK ever comes back
    session = a.endpoint.sessions[cid_a]
    deadline = a.endpoint.config.realtime_deadline
    big = bytes(1100)
    while session.recovery.in_flight < session.cc.cwnd:  # fill the window
        link.send(a, cid_a, big, REALTIME)
        link.advance(0.001)
    for i in range(100):
        link.send(a, cid_a, b"waits-%d" % i, REALTIME)
    link.pump(a)
    assert session.realtime_queued == 100  # held by the window
    dropped = a.endpoint.stats.messages_dropped_deadline
    link.advance(deadline + 0.01)
    link.send(a, cid_a, b"new", REALTIME)  # a flush, still blocked by the window
    link.pump(a)
    assert a.endpoint.stats.messages_dropped_deadline == dropped + 100
    assert session.realtime_queued == 1


def test_a_send_queue_full_of_late_realtime_takes_a_new_message() -> None:
    """The queue is full only of messages past their deadline: they go (counted as
    deadline drops), not the new message (a queue-full drop)."""
    link, a, b, cid_a, _ = setup(config=EndpointConfig(max_send_queue=50))
    link.path(b, a).loss = 1.0  # no ACK ever comes back
    session = a.endpoint.sessions[cid_a]
    while session.recovery.in_flight < session.cc.cwnd:  # fill the window
        link.send(a, cid_a, bytes(1100), REALTIME)
        link.advance(0.001)
    for i in range(50):
        assert link.send(a, cid_a, b"old-%d" % i, REALTIME)
    assert not link.send(a, cid_a, b"refused", REALTIME)  # full, and none is late yet
    link.now += a.endpoint.config.realtime_deadline + 0.01  # no flush in between
    stats = a.endpoint.stats
    full, late = stats.messages_dropped_queue_full, stats.messages_dropped_deadline
    assert link.send(a, cid_a, b"new", REALTIME)
    assert stats.messages_dropped_queue_full == full
    assert stats.messages_dropped_deadline == late + 50
    assert session.realtime_queued == 1


@pytest.mark.parametrize("one_lane", [True, False])
def test_backed_up_messages_keep_lane_order_and_lanes_leave_by_priority(
        one_lane: bool) -> None:
    """docs/protocol.md 14.8: on one lane RELIABLE messages leave (and arrive) in the
    order sent, whatever their priorities; across lanes priority decides, lanes at one
    level taking turns in the order they became ready."""
    link, a, b, cid_a, _ = setup(config=EndpointConfig(max_reliable_in_flight=2))
    link.send(a, cid_a, b"fill1")
    link.send(a, cid_a, b"fill2")
    link.pump(a)
    assert a.endpoint.reliable_capacity(cid_a) == 0
    queued = [(1, b"a"), (5, b"b"), (1, b"c"), (7, b"d"), (5, b"e"), (0, b"f"), (7, b"g")]
    for lane, (prio, data) in enumerate(queued, 1):
        a.endpoint.send(cid_a, data, RELIABLE, prio, link.now, lane=0 if one_lane else lane)
    link.advance(1.0)

    if one_lane:
        assert b.payloads() == [b"fill1", b"fill2", b"a", b"b", b"c", b"d", b"e", b"f", b"g"]
    else:
        assert b.payloads() == [b"fill1", b"fill2", b"d", b"g", b"b", b"e", b"a", b"c", b"f"]


def test_queued_messages_leave_as_soon_as_an_ack_opens_the_window() -> None:
    """docs/protocol.md 4: a sender flushes what it has queued once per turn; the turn that
    takes the ACK freeing window room must send what waited for it."""
    config = EndpointConfig(max_reliable_in_flight=2)
    link, a, b, cid_a, _ = setup(config=config)
    t0 = link.now
    for i in range(6):
        link.send(a, cid_a, b"m%d" % i)
    link.advance(2.0)

    assert b.payloads() == [b"m%d" % i for i in range(6)]
    round_trip = 2 * LATENCY + config.ack_delay  # the receiver delays its ACK
    sent = [d.sent_at - t0 for d in link.sent_by(a, DATA)]
    assert sent == pytest.approx([0.0, round_trip, 2 * round_trip], abs=0.002)


def test_loss_recovery_does_not_inflate_the_rtt_estimate() -> None:
    """docs/protocol.md 6: RTT samples come from pn acknowledgements only, when
    ``largest_pn`` is newly acknowledged (RFC 9002 section 5). A retransmission goes
    under a new pn, so the ACK that the hole's filling causes samples that new pn's
    round trip, never the age of a message SACKed long before (v1's Karn rule by
    rseq, now by pn); loss and retransmissions must not inflate the estimate."""
    link, a, b, cid_a, _ = setup()
    link.path(a, b).drop = DropFirst(DATA)  # the packet carrying rseq 1
    for i in range(8):
        link.send(a, cid_a, b"m%d" % i)
        link.advance(0.001)
    link.path(a, b).loss = 1.0  # its first retransmissions are lost too
    link.advance(0.1)
    link.path(a, b).loss = 0.0
    link.advance(2.0)

    assert b.payloads() == [b"m%d" % i for i in range(8)]
    assert a.endpoint.stats.retransmissions >= 2
    srtt = a.endpoint.sessions[cid_a].rtt.srtt
    assert srtt is not None
    assert srtt < 1.5 * 2 * LATENCY  # the path's round trip (a gap is ACKed at once)


def test_realtime_in_one_turn_leaves_by_priority() -> None:
    link, a, b, cid_a, _ = setup()
    for prio, data in [(1, b"a"), (5, b"b"), (1, b"c"), (7, b"d"), (0, b"e")]:
        link.send(a, cid_a, data, REALTIME, prio)
    link.advance(0.1)
    assert b.payloads() == [b"d", b"b", b"a", b"c", b"e"]


# --------------------------------------------------------------- life and death


def test_idle_timeout_closes_with_timeout() -> None:
    link, a, b, cid_a, cid_b = setup(config=EndpointConfig(idle_timeout=3.0),
                                     config_b=EndpointConfig())
    last_recv = a.endpoint.sessions[cid_a].last_recv_at
    link.advance(10.0)

    [(t, closed_a)] = a.timed(SessionClosed)
    assert (closed_a.conn_id, closed_a.reason, closed_a.by_peer) == (
        cid_a, CloseReason.TIMEOUT, False)
    assert t == pytest.approx(last_recv + 3.0)
    closed_b = b.closed(cid_b)
    assert closed_b is not None
    assert closed_b.reason == CloseReason.TIMEOUT
    assert a.endpoint.sessions == {} and b.endpoint.sessions == {}


QUICK = EndpointConfig(idle_timeout=5.0, keepalive_interval=1.0)


def test_partitioned_session_times_out_on_both_sides() -> None:
    link, a, b, cid_a, cid_b = setup(config=QUICK)
    for path in link.both(a, b):
        path.loss = 1.0
    link.advance(10.0)
    for node, cid in ((a, cid_a), (b, cid_b)):
        closed = node.closed(cid)
        assert closed is not None
        assert (closed.reason, closed.by_peer) == (CloseReason.TIMEOUT, False)


@pytest.mark.parametrize("config", [QUICK, EndpointConfig()], ids=["quick", "defaults"])
def test_keepalive_keeps_a_quiet_session_alive(config: EndpointConfig) -> None:
    link, a, b, cid_a, cid_b = setup(config=config)
    link.advance(4 * config.idle_timeout)
    assert a.of_type(SessionClosed) == [] and b.of_type(SessionClosed) == []
    assert a.established(cid_a) and b.established(cid_b)
    acks = link.sent_by(a, is_type(PacketType.ACK))
    assert len(acks) >= 4 * config.idle_timeout / config.keepalive_interval - 1
    link.send(a, cid_a, b"still here")
    link.advance(0.1)
    assert b.payloads() == [b"still here"]


def test_a_dead_peer_is_noticed_peer_timeout_after_the_first_unanswered_packet() -> None:
    config = EndpointConfig()
    link, a, b, cid_a, _ = setup(config=config)
    link.advance(3.0)  # quiet a while: the silence counts from the data, not from before
    link.path(a, b).loss = 1.0  # b is gone: nothing reaches it, nothing comes back
    sent_at = link.now
    link.send(a, cid_a, b"anyone there?")
    link.advance(30.0)

    [(t, closed)] = a.timed(SessionClosed)
    assert (closed.reason, closed.by_peer) == (CloseReason.TIMEOUT, False)
    # PEER_TIMEOUT, not MAX_RETRANSMISSIONS' backoff (about 11 s) or IDLE_TIMEOUT.
    assert t == pytest.approx(sent_at + config.peer_timeout, abs=0.01)


def test_a_dead_idle_peer_is_noticed_after_a_keepalive() -> None:
    config = EndpointConfig()
    link, a, b, _, _ = setup(config=config)
    for path in link.both(a, b):
        path.loss = 1.0
    started = link.now
    link.advance(60.0)

    [(t, closed)] = a.timed(SessionClosed)
    assert closed.reason is CloseReason.TIMEOUT
    assert t <= started + config.keepalive_interval + config.peer_timeout + 0.01


def test_a_slow_path_is_not_taken_for_a_dead_peer() -> None:
    """Three probe timeouts of the path bound PEER_TIMEOUT from below: once the
    round trip is known to be seconds long, an answer 6 s late is late, not never."""
    config = EndpointConfig()
    link, a, b, cid_a, _ = setup(config=config)
    sent: list[bytes] = []
    for hold in (2.0, 3.0):  # every datagram 2 s late (a 4 s round trip), then 3 s
        for path in link.both(a, b):
            path.reorder, path.hold = 1.0, hold
        for _ in range(3):
            sent.append(b"slow %d" % len(sent))
            link.send(a, cid_a, sent[-1])
            link.advance(10.0)
    assert a.of_type(SessionClosed) == [] and b.of_type(SessionClosed) == []
    assert b.payloads() == sent
    assert a.endpoint.sessions[cid_a].send_window.outstanding == {}


@pytest.mark.parametrize("reason", list(CloseReason))
def test_close_reason_reaches_the_peer(reason: CloseReason) -> None:
    link, a, b, cid_a, cid_b = setup()
    link.send(a, cid_a, b"last words")
    a.endpoint.close(cid_a, link.now, reason)
    link.pump(a)
    link.advance(0.5)

    closed_a = a.closed(cid_a)
    assert closed_a is not None
    assert (closed_a.reason, closed_a.by_peer) == (reason, False)
    closed_b = b.closed(cid_b)
    assert closed_b is not None
    assert (closed_b.reason, closed_b.by_peer) == (reason, True)
    assert b.payloads() == [b"last words"]
    assert a.endpoint.sessions == {} and b.endpoint.sessions == {}
    # Nothing answers a CLOSE.
    assert link.sent_by(b, is_type(PacketType.CLOSE)) == []


def test_replayed_data_is_not_delivered_twice() -> None:
    link, a, b, cid_a, _ = setup()
    link.send(a, cid_a, b"once", REALTIME)
    link.advance(0.1)
    [datagram] = link.sent_by(a, DATA)

    link.deliver(datagram.data, a.addr, b)
    link.deliver(datagram.data, ("10.66.0.1", 666), b)  # from elsewhere: no roaming either
    link.advance(0.1)

    assert b.payloads() == [b"once"]
    assert b.endpoint.stats.replay_rejections == 2
    assert b.of_type(PeerRoamed) == []


def test_authenticated_packet_from_a_new_address_roams() -> None:
    link, a, b, cid_a, cid_b = setup()
    old = a.addr
    new = ("10.1.2.3", 5678)
    # A corrupted packet from another address does not move the session.
    link.send(a, cid_a, b"probe", REALTIME)
    link.pump(a)
    probe = link.sent_by(a, DATA)[-1].data
    link.advance(0.1)
    link.deliver(probe[:-1] + bytes([probe[-1] ^ 1]), ("10.66.0.1", 666), b)
    assert b.endpoint.address(cid_b) == old

    link.move(a, new)
    link.send(a, cid_a, b"moved")
    link.advance(0.1)

    assert b.payloads() == [b"probe", b"moved"]
    assert b.of_type(PeerRoamed) == [PeerRoamed(cid_b, old, new)]
    assert b.endpoint.address(cid_b) == new
    link.send(b, cid_b, b"reply")
    link.advance(0.1)
    assert a.payloads() == [b"reply"]
    assert link.sent_by(b, DATA)[-1].dst == new



def is_ack(d: Datagram) -> bool:
    return d.ptype == PacketType.ACK


@pytest.mark.parametrize("ack_every", [8, 32])
def test_receiver_acknowledges_at_once_after_ack_every_messages(ack_every: int) -> None:
    """docs/protocol.md section 4: a receiver that has authenticated a DATA pn
    ``ack_every`` beyond its previous ACK's ``largest_pn`` acknowledges in the same
    turn; below that it waits ACK_DELAY. (v1 counted reliable messages; v2 counts pns,
    so each message here is sized to fill a datagram of its own. The sender's
    congestion controller is off: its initial window would hold back part of a
    burst, and the receiver's rule is what is tested.)"""
    config = EndpointConfig(ack_every=ack_every, max_datagram=200, congestion_control=False)
    link, a, b, cid_a, _ = setup(config=config)

    def msg(tag: bytes, i: int) -> bytes:
        return tag + b"%03d" % i + bytes(100)  # two do not fit one 200-byte datagram

    # One message and its delayed ACK: b's last ACK names a's latest pn.
    link.send(a, cid_a, msg(b"w", 0))
    link.advance(0.05)
    t0 = link.now
    for i in range(ack_every - 1):
        link.send(a, cid_a, msg(b"x", i))
    link.advance(LATENCY * 1.5)
    assert len(link.sent_by(a, lambda d: d.ptype == PacketType.DATA and d.sent_at >= t0)) \
        == ack_every - 1
    assert not [d for d in link.sent_by(b, is_ack) if d.sent_at > t0], \
        "below ack_every the receiver waits for ACK_DELAY"
    link.advance(0.05)
    delayed = [d.sent_at - t0 for d in link.sent_by(b, is_ack) if d.sent_at > t0]
    assert delayed == pytest.approx([LATENCY + config.ack_delay], abs=0.002)

    t1 = link.now
    for i in range(ack_every):
        link.send(a, cid_a, msg(b"y", i))
    link.advance(0.05)
    prompt = [d.sent_at - t1 for d in link.sent_by(b, is_ack) if d.sent_at > t1]
    assert prompt and prompt[0] == pytest.approx(LATENCY, abs=0.001), \
        "the turn that brings the ack_every-th pn sends the ACK"
    assert len(b.payloads(RELIABLE)) == 2 * ack_every


def test_the_ack_timer_fires_once_per_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/protocol.md 4: packets that follow each other within ``ack_delay`` wait for
    the ACK timer, which fires once: the deadline is re-armed after the ACK it made due
    has gone, so it does not name the ACK timer a second time."""
    link, a, b, cid_a, cid_b = setup()
    fired: list[float] = []
    handle_timer = b.endpoint.handle_timer

    def firing(now: float) -> None:
        fired.append(now)
        handle_timer(now)

    monkeypatch.setattr(b.endpoint, "handle_timer", firing)
    t0 = link.now
    link.send(a, cid_a, b"first", RELIABLE)
    link.advance(0.002)
    link.send(a, cid_a, b"second", RELIABLE)
    link.advance(0.1)

    assert b.payloads(RELIABLE) == [b"first", b"second"]
    acks = [d.sent_at - t0 for d in link.sent_by(b, is_ack) if d.sent_at > t0]
    delay = b.endpoint.config.ack_delay
    assert acks == pytest.approx([LATENCY + delay], abs=1e-9)  # one ACK for both
    assert [t - t0 for t in fired] == pytest.approx([LATENCY + delay], abs=1e-9)
    assert b.endpoint.sessions[cid_b].ack_at is None


def test_reading_moves_the_credit_edge_and_an_ack_tells_the_sender() -> None:
    """docs/protocol.md 6: unread messages hold the receiver's credit; when the
    application reads, the edge moves, and once it can move by a quarter of
    max_reliable_in_flight an ACK says so at once, and the waiting sender goes on."""
    link = Link(1)
    small = EndpointConfig(max_reorder_buffer=262_144, max_message_size=65_536)
    a, b = link.add("a"), link.add("b", small, release_on_take=False)
    cid, bid = link.establish(a, b)
    link.advance(0.1)
    rs, ss = b.endpoint.sessions[bid], a.endpoint.sessions[cid]
    for _ in range(300):
        link.send(a, cid, bytes(1000))
    link.advance(1.0)
    edge = rs.recv_window.edge
    assert ss.send_window.edge == edge
    assert ss.queued_reliable > 0, "the sender waits for credit"
    quarter = b.endpoint.config.max_reliable_in_flight // 4

    def acks() -> int:
        return len(link.sent_by(b, is_ack))

    before = acks()
    gain = 0
    while acks() == before:
        gain = rs.recv_window.edge_gain()
        assert gain < quarter, "the edge could move by a quarter and no ACK said so"
        b.endpoint.release(bid, 1000)  # the application reads one message
        link.pump(b)
    assert rs.recv_window.edge - edge >= quarter
    link.advance(0.5)
    assert ss.send_window.edge >= edge + quarter  # the ACK reached the sender
    assert ss.send_window.next_rseq - 1 > edge, "the sender did not go on"
