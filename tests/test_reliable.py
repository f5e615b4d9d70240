"""SendWindow / ReceiveWindow (docs/protocol.md sections 4 and 6): cumulative and
selective acknowledgement by rseq, the credit edge on both sides, the retransmission
timer's choice, RFC 1982 serial arithmetic across 2**32, the reorder buffer and its
reservation.

Loss detection and RTT samples moved to packet numbers in version 2: they are
tested in test_recovery.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentra.config import EndpointConfig
from intentra.core.reliable import ReceiveWindow, SendWindow, Violation, serial_gt
from intentra.errors import ConfigError

M = 2**32
RTO = 0.25
LIMIT = 256  # MAX_RELIABLE_IN_FLIGHT
REORDER = 262144  # MAX_REORDER_BUFFER
RESERVE = 1200  # MAX_DATAGRAM: bytes reserved per message of credit
MAX_CREDIT = 0xFFFF  # the credit field is 16 bits


def bits(*offsets: int) -> int:
    """Bitmap with bit i set for each i given (bit i = rseq ack + 2 + i)."""
    out = 0
    for i in offsets:
        out |= 1 << i
    return out


def sent(n: int, first: int = 1, times: list[float] | None = None,
         data: bytes | None = None) -> SendWindow:
    w = SendWindow(LIMIT, first_rseq=first)
    w.apply_credit((first - 1) % M, LIMIT)  # the peer's first ACK
    for k in range(n):
        now = times[k] if times else 0.0
        payload = data if data is not None else bytes([k % 256])
        assert w.assign(payload, 0, now, RTO) == (first + k) % M
    return w


def retransmitted(w: SendWindow, rseq: int, now: float) -> None:
    """What the session does when it sends a message again."""
    entry = w.outstanding[rseq]
    entry.retries += 1
    entry.sent_at = now


# --- serial arithmetic ---------------------------------------------------------------

SERIAL = [
    (1, 0, True), (0, 1, False), (5, 5, False),
    (0, M - 1, True), (M - 1, 0, False), (2, M - 3, True),
    (2**31 - 1, 0, True), (2**31 + 1, 0, False),
]


@pytest.mark.parametrize(("a", "b", "gt"), SERIAL)
def test_serial_gt(a: int, b: int, gt: bool) -> None:
    assert serial_gt(a, b) is gt


# --- SendWindow ----------------------------------------------------------------------


def test_assign_numbers_from_one_and_starts_timer() -> None:
    w = SendWindow(LIMIT)
    w.apply_credit(0, LIMIT)
    assert w.rto_at is None
    assert w.assign(b"a", 3, 10.0, RTO) == 1
    assert w.assign(b"b", 0, 10.5, RTO) == 2
    assert w.in_flight == 2
    assert w.room == LIMIT - 2
    assert w.rto_at == pytest.approx(10.0 + RTO)
    assert w.outstanding[1].data == b"a"
    assert w.outstanding[1].priority == 3


CUMULATIVE = [
    # messages sent, ack, rseqs left outstanding
    pytest.param(5, 0, [1, 2, 3, 4, 5], id="ack0-nothing"),
    pytest.param(5, 1, [2, 3, 4, 5], id="ack1"),
    pytest.param(5, 3, [4, 5], id="ack3"),
    pytest.param(5, 5, [], id="ack-all"),
]


@pytest.mark.parametrize(("n", "ack", "left"), CUMULATIVE)
def test_cumulative_ack_removes(n: int, ack: int, left: list[int]) -> None:
    w = sent(n)
    w.check_ack(ack, 0)
    assert w.on_ack(ack, 0) is (ack > 0)  # True when it acknowledged anything
    assert sorted(w.outstanding) == left
    assert w.acked == ack


def test_stale_ack_ignored() -> None:
    w = sent(6)
    assert w.on_ack(4, 0)
    assert w.on_ack(2, 0) is False
    assert w.acked == 4
    assert sorted(w.outstanding) == [5, 6]
    # a stale ack's bitmap is ignored too (it may describe an older state)
    assert w.on_ack(3, bits(0, 1)) is False
    assert sorted(w.outstanding) == [5, 6]


def test_repeated_ack_applies_bitmap() -> None:
    """v1 marked bitmap rseqs "sacked"; v2 acknowledges (drops) them outright: the
    receiver never drops a message within its edge (docs/protocol.md section 6)."""
    w = sent(4)
    assert w.on_ack(1, 0)
    assert w.on_ack(1, bits(1))  # rseq 1 + 2 + 1 = 4
    assert sorted(w.outstanding) == [2, 3]
    assert w.on_ack(1, bits(1)) is False  # nothing new


VIOLATIONS = [
    # sent, ack, bitmap
    pytest.param(0, 1, 0, id="ack1-nothing-sent"),
    pytest.param(3, 4, 0, id="ack-beyond-sent"),
    pytest.param(3, 100, 0, id="ack-far-beyond"),
    pytest.param(5, 1, bits(3), id="bit-beyond-sent"),  # 1 + 2 + 3 = 6 > 5
    pytest.param(5, 0, bits(4), id="bit-beyond-sent-ack0"),  # 0 + 2 + 4 = 6
    pytest.param(5, 0, bits(0, 63), id="bit63"),
    pytest.param(5, 5, bits(0), id="bit-after-all-acked"),
    pytest.param(1, 0, bits(0), id="only-hole-sent"),  # rseq 2 never sent
]


@pytest.mark.parametrize(("n", "ack", "bitmap"), VIOLATIONS)
def test_never_sent_is_violation_and_changes_nothing(n: int, ack: int, bitmap: int) -> None:
    w = sent(n)
    with pytest.raises(Violation):
        w.check_ack(ack, bitmap)
    assert (w.acked, sorted(w.outstanding)) == (0, list(range(1, n + 1)))


NOT_VIOLATIONS = [
    pytest.param(3, 3, 0, id="ack-last-sent"),
    pytest.param(5, 1, bits(2), id="bit-last-sent"),  # 1 + 2 + 2 = 5
    pytest.param(5, 0, bits(3), id="bit-last-sent-ack0"),
    pytest.param(0, 0, 0, id="ack0-nothing-sent"),
]


@pytest.mark.parametrize(("n", "ack", "bitmap"), NOT_VIOLATIONS)
def test_edge_of_sent_is_fine(n: int, ack: int, bitmap: int) -> None:
    w = sent(n)
    w.check_ack(ack, bitmap)
    w.on_ack(ack, bitmap)


BITMAP_ACKS = [
    # sent, ack, bitmap, left outstanding. v1 fast-retransmitted holes below three
    # SACKed messages; v2 leaves loss to packet numbers (test_recovery.py): the rseq
    # bitmap only acknowledges, it never schedules a retransmission.
    pytest.param(5, 0, bits(0, 1, 2), [1, 5], id="three-later-hole1"),
    pytest.param(6, 0, bits(1, 2, 3), [1, 2, 6], id="two-holes"),
    pytest.param(8, 2, bits(0, 1, 2), [3, 7, 8], id="after-cumulative"),
    pytest.param(10, 0, bits(0, 4, 5, 6), [1, 3, 4, 5, 9, 10], id="four-holes"),
]


@pytest.mark.parametrize(("n", "ack", "bitmap", "left"), BITMAP_ACKS)
def test_bitmap_acknowledges_and_schedules_nothing(n: int, ack: int, bitmap: int,
                                                  left: list[int]) -> None:
    w = sent(n)
    w.check_ack(ack, bitmap)
    assert w.on_ack(ack, bitmap)
    assert sorted(w.outstanding) == left


# --- the retransmission timer's choice (RFC 6298 5.4) -----------------------------------


def test_timeout_resends_the_expired_by_send_time() -> None:
    w = sent(3, times=[0.0, 0.1, 0.2])
    budget = 1000
    assert w.on_timeout(0.25, RTO, budget) == [1]
    assert w.on_timeout(0.36, RTO, budget) == [1, 2]
    retransmitted(w, 1, 0.3)
    assert w.on_timeout(0.46, RTO, budget) == [2, 3]


def test_timeout_with_nothing_expired_resends_the_earliest() -> None:
    """A loss-detected retransmission reset the clocks: the timer still resends one."""
    w = sent(3, times=[0.0, 0.1, 0.2])
    assert w.on_timeout(0.1, RTO, 1000) == [1]


def test_timeout_takes_what_fits_one_datagram_but_at_least_one() -> None:
    w = sent(4, data=b"x" * 98)  # 2 + 98 = 100 bytes of framing each
    assert w.on_timeout(10.0, RTO, 250) == [1, 2]
    assert w.on_timeout(10.0, RTO, 50) == [1]


def test_acknowledged_messages_are_not_resent_on_timeout() -> None:
    w = sent(4)
    w.on_ack(0, bits(0, 1))  # 2 and 3 received
    assert w.on_timeout(10.0, RTO, 1000) == [1, 4]


# --- credit: the sender's limit ----------------------------------------------------------


def test_nothing_reliable_may_leave_before_the_peers_first_ack() -> None:
    """The initial edge is 0 (docs/protocol.md section 6)."""
    w = SendWindow(LIMIT)
    assert (w.edge, w.credit, w.room) == (0, 0, 0)
    assert w.apply_credit(0, 3)
    assert (w.edge, w.credit, w.room) == (3, 3, 3)


def test_room_is_the_lower_of_credit_and_the_in_flight_limit() -> None:
    w = SendWindow(4)
    w.apply_credit(0, 100)
    assert w.room == 4
    for _ in range(4):
        w.assign(b"x", 0, 0.0, RTO)
    assert (w.credit, w.room) == (96, 0)
    w.on_ack(4, 0)
    assert w.room == 4
    w2 = SendWindow(LIMIT)
    w2.apply_credit(0, 2)
    w2.assign(b"x", 0, 0.0, RTO)
    assert (w2.credit, w2.room) == (1, 1)
    w2.assign(b"x", 0, 0.0, RTO)
    assert (w2.credit, w2.room) == (0, 0)


CREDIT_PAIRS = [
    # ACKs (ack, credit) in arrival order, the edge after each
    pytest.param([(0, 10), (5, 10), (8, 5)], [10, 15, 15], id="lower-edge-changes-nothing"),
    pytest.param([(5, 10), (2, 20)], [15, 22], id="stale-ack-with-higher-edge-counts"),
    pytest.param([(5, 10), (8, 0)], [15, 15], id="credit-0-never-shrinks"),
    pytest.param([(0, 10), (10, 0), (10, 1)], [10, 10, 11], id="at-the-edge-then-one-more"),
]


@pytest.mark.parametrize(("acks", "edges"), CREDIT_PAIRS)
def test_apply_credit_takes_the_highest_edge_of_one_ack_pair(
        acks: list[tuple[int, int]], edges: list[int]) -> None:
    """The limit is the highest ``ack + credit`` of any one ACK: never a mix of one
    ACK's ack and another's credit (8 + 10 = 18 is not an edge in the first case)."""
    w = SendWindow(LIMIT)
    got = []
    for ack, credit in acks:
        w.apply_credit(ack, credit)
        got.append(w.edge)
    assert got == edges


def test_apply_credit_across_wrap() -> None:
    w = SendWindow(LIMIT, first_rseq=M - 2)
    assert w.edge == M - 3
    assert w.apply_credit(M - 3, 5)  # edge M - 3 + 5 = 2: M-2, M-1, 0, 1, 2 allowed
    assert w.edge == 2
    assert w.credit == 5
    assert not w.apply_credit(M - 1, 2)  # edge 1: lower, across the wrap
    assert w.edge == 2


# --- serial arithmetic across the 2**32 wrap ------------------------------------------


def test_send_window_across_wrap() -> None:
    first = M - 2
    w = sent(4, first=first)  # rseqs M-2, M-1, 0, 1
    assert sorted(w.outstanding) == [0, 1, M - 2, M - 1]
    assert w.acked == M - 3
    with pytest.raises(Violation):
        w.check_ack(2, 0)
    w.on_ack(M - 1, 0)
    assert sorted(w.outstanding) == [0, 1]
    assert w.on_ack(M - 2, 0) is False  # stale
    assert sorted(w.outstanding) == [0, 1]
    w.on_ack(0, 0)
    assert sorted(w.outstanding) == [1]
    assert w.acked == 0
    w.on_ack(1, 0)
    assert w.outstanding == {}


def test_send_window_nothing_sent_near_wrap() -> None:
    w = SendWindow(LIMIT, first_rseq=M - 2)
    w.check_ack(M - 3, 0)  # "as if first - 1 had been received"
    with pytest.raises(Violation):
        w.check_ack(M - 2, 0)


def test_bitmap_across_wrap() -> None:
    w = sent(5, first=M - 2)  # M-2, M-1, 0, 1, 2
    # ack M-3 (nothing), bits 0,1,2 = rseq M-1, 0, 1 received
    w.check_ack(M - 3, bits(0, 1, 2))
    assert w.on_ack(M - 3, bits(0, 1, 2))
    assert sorted(w.outstanding) == [2, M - 2]
    with pytest.raises(Violation):
        w.check_ack(M - 3, bits(4))  # rseq 3 never sent
    w.on_ack(M - 1, bits(1))  # ack M-1: bit 1 is rseq 2
    assert w.outstanding == {}


def test_wrap_with_first_rseq_zero() -> None:
    w = sent(3, first=0)  # 0, 1, 2 with acked = M - 1
    assert w.acked == M - 1
    w.on_ack(0, 0)
    assert sorted(w.outstanding) == [1, 2]


# --- ReceiveWindow ------------------------------------------------------------------------


def rw(max_bytes: int = REORDER, reserve: int = RESERVE, first: int = 1,
       advertise: bool = True) -> ReceiveWindow:
    w = ReceiveWindow(max_bytes, reserve, first_rseq=first)
    if advertise:
        w.advertise()  # the first ACK
    return w


def feed(w: ReceiveWindow, steps: list[tuple[int, int, list[bytes]]]) -> None:
    for rseq, status, delivered in steps:
        out: list[bytes] = []
        w.check(rseq, 1)
        assert w.receive(rseq, b"m%d" % rseq, out) == status, rseq
        assert out == delivered, rseq


RECEIVE = [
    pytest.param([(1, 0, [b"m1"]), (2, 0, [b"m2"]), (3, 0, [b"m3"])], 3, id="in-order"),
    pytest.param([(2, 1, []), (3, 1, []), (1, 0, [b"m1", b"m2", b"m3"])], 3, id="reverse"),
    pytest.param([(3, 1, []), (1, 0, [b"m1"]), (2, 0, [b"m2", b"m3"])], 3, id="gap-then-fill"),
    pytest.param([(1, 0, [b"m1"]), (1, 2, []), (3, 1, []), (3, 2, []), (2, 0, [b"m2", b"m3"]),
                  (2, 2, []), (3, 2, [])], 3, id="duplicates"),
    pytest.param([(5, 1, []), (3, 1, []), (1, 0, [b"m1"]), (2, 0, [b"m2", b"m3"]),
                  (4, 0, [b"m4", b"m5"])], 5, id="two-gaps"),
    pytest.param([(REORDER // RESERVE, 1, [])], 0, id="last-within-the-edge"),
]


@pytest.mark.parametrize(("steps", "ack"), RECEIVE)
def test_receive_window(steps: list[tuple[int, int, list[bytes]]], ack: int) -> None:
    w = rw()
    feed(w, steps)
    assert w.ack == ack


def test_receive_tracks_buffered_bytes() -> None:
    w = rw()
    out: list[bytes] = []
    assert w.receive(3, b"abc", out) == 1
    assert w.receive(4, b"de", out) == 1
    assert w.buffered_bytes == 5
    assert w.receive(2, b"z", out) == 1
    assert w.buffered_bytes == 6
    assert w.receive(1, b"y", out) == 0
    assert out == [b"y", b"z", b"abc", b"de"]
    assert w.buffered_bytes == 0
    assert w.buffer == {}


# --- credit: the receiver's edge ----------------------------------------------------------


def test_first_credit_reserves_max_datagram_per_message() -> None:
    """MAX_REORDER_BUFFER / MAX_DATAGRAM messages: 262144 // 1200 = 218."""
    w = rw(advertise=False)
    assert w.edge == 0
    assert w.advertise() == 218
    assert w.edge == 218
    assert ReceiveWindow(1000, 100).advertise() == 10
    assert ReceiveWindow(1099, 100).advertise() == 10  # whole messages only
    assert ReceiveWindow(99, 100).advertise() == 0


def test_a_reorder_buffer_below_one_reservation_is_refused() -> None:
    """It could never hold the largest message whole and advertise credit for one more
    position: a large RELIABLE message would wait for ever (protocol.md 14.7)."""
    with pytest.raises(ConfigError, match="max_reorder_buffer"):
        EndpointConfig(max_reorder_buffer=500, max_datagram=600, max_message_size=100)
    with pytest.raises(ConfigError, match="max_reorder_buffer"):
        EndpointConfig(max_reorder_buffer=1_048_576)  # the default 1 MiB message + 0
    EndpointConfig(max_reorder_buffer=700, max_datagram=600, max_message_size=100)


def test_credit_is_capped_by_the_16_bit_field() -> None:
    w = ReceiveWindow(10**9, 1)
    assert w.advertise() == MAX_CREDIT


RESERVATION = [
    # (held out of order: rseq, size), unread bytes, expected edge (ack 0, 1000 B, 100 B each)
    pytest.param([], 0, 10, id="empty"),
    pytest.param([(3, 30)], 0, 10, id="held-counts-its-real-size"),  # 970 // 100 + 1
    pytest.param([(3, 100), (4, 100)], 0, 10, id="held-full-size"),
    pytest.param([(3, 50), (4, 50)], 0, 11, id="small-held-free-room"),  # 900 // 100 + 2
    pytest.param([], 450, 5, id="unread-bytes"),  # 550 // 100
    pytest.param([(2, 100)], 900, 1, id="full"),  # 0 + 1
]


@pytest.mark.parametrize(("held", "unread", "edge"), RESERVATION)
def test_reservation_arithmetic(held: list[tuple[int, int]], unread: int, edge: int) -> None:
    """proposed edge = ack + (room // reserve) + held, room = max_bytes - held - unread."""
    w = ReceiveWindow(1000, 100)
    w.edge = 100  # let anything in: this test is about the proposal
    out: list[bytes] = []
    for rseq, size in held:
        assert w.receive(rseq, b"x" * size, out) == 1
    w.unread_bytes = unread
    assert w.proposed_edge() == edge


def test_edge_never_moves_backwards() -> None:
    """As TCP's window never shrinks: what was promised stays promised."""
    w = ReceiveWindow(1000, 100)
    assert w.advertise() == 10
    out: list[bytes] = []
    for r in range(1, 4):
        w.receive(r, b"x" * 100, out)
    w.unread_bytes = 300  # delivered, not yet read by the application
    assert w.proposed_edge() == 3 + 7
    assert w.advertise() == 7  # edge 10 kept
    w.unread_bytes = 1000  # (an overrun the sender could not cause)
    assert w.proposed_edge() == 3
    assert w.advertise() == 7
    assert w.edge == 10
    assert w.edge_gain() == 0
    w.unread_bytes = 0  # the application read everything
    assert w.edge_gain() == 3
    assert w.advertise() == 10
    assert w.edge == 13


def test_edge_gain_is_what_an_advertisement_would_add() -> None:
    w = ReceiveWindow(1000, 100)
    assert w.edge_gain() == 10
    w.advertise()
    assert w.edge_gain() == 0


CHECK = [
    # delivered 1..k, then rseq, count: beyond the advertised edge (10) is a violation
    pytest.param(0, 1, 1, False, id="next"),
    pytest.param(0, 10, 1, False, id="at-the-edge"),
    pytest.param(0, 11, 1, True, id="one-beyond-the-edge"),
    pytest.param(0, 1000, 1, True, id="far"),
    pytest.param(0, 4, 7, False, id="packet-ends-at-edge"),
    pytest.param(0, 4, 8, True, id="packet-crosses-edge"),
    pytest.param(5, 10, 1, False, id="delivery-alone-does-not-move-the-edge"),
    pytest.param(5, 11, 1, True, id="edge-moves-only-when-advertised"),
    pytest.param(5, 1, 1, False, id="old-duplicate-fine"),
    pytest.param(5, 2, 3, False, id="old-packet-fine"),
]


@pytest.mark.parametrize(("delivered", "rseq", "count", "violation"), CHECK)
def test_check_against_the_edge(delivered: int, rseq: int, count: int,
                                violation: bool) -> None:
    w = ReceiveWindow(1000, 100)
    w.advertise()
    out: list[bytes] = []
    for r in range(1, delivered + 1):
        w.receive(r, b"x", out)
    assert w.ack == delivered
    if violation:
        with pytest.raises(Violation):
            w.check(rseq, count)
    else:
        w.check(rseq, count)


def test_before_any_advertisement_every_rseq_is_beyond_the_edge() -> None:
    w = ReceiveWindow(1000, 100)
    with pytest.raises(Violation):
        w.check(1, 1)


def test_check_across_wrap() -> None:
    w = ReceiveWindow(1000, 100, first_rseq=M - 5)
    w.advertise()  # edge M - 6 + 10 = 4 (across the wrap)
    assert w.edge == 4
    w.check(4, 1)
    with pytest.raises(Violation):
        w.check(5, 1)
    w.check(M - 6, 1)  # already delivered: a duplicate, not a violation


def test_reorder_buffer_byte_limit() -> None:
    """The byte bound still holds for what an edge left unreserved."""
    w = ReceiveWindow(10, 1)
    w.edge = 100
    out: list[bytes] = []
    assert w.receive(3, b"x" * 6, out) == 1
    assert w.receive(4, b"x" * 5, out) == 3  # 11 > 10: dropped
    assert w.buffered_bytes == 6
    assert 4 not in w.buffer
    assert w.receive(4, b"x" * 4, out) == 1  # exactly 10 fits
    assert w.buffered_bytes == 10
    assert w.receive(5, b"x", out) == 3
    assert w.bitmap() == bits(1, 2)  # 3 and 4 held, 5 not
    # in-order data is delivered whatever the buffer holds, and drains it
    assert w.receive(1, b"y" * 100, out) == 0
    assert w.receive(2, b"z" * 100, out) == 0
    assert out == [b"y" * 100, b"z" * 100, b"x" * 6, b"x" * 4]
    assert w.buffered_bytes == 0
    assert w.receive(5, b"x" * 10, out) == 0


@st.composite
def within_the_edge(draw: st.DrawFn) -> tuple[int, list[int], list[int]]:
    """Messages of up to the reservation size, any order, duplicates, within the edge."""
    first = draw(st.sampled_from([1, M - 20, M - 1, 0]))
    n = draw(st.integers(1, 10))  # edge of ReceiveWindow(1000, 100): 10
    order = draw(st.permutations(list(range(n))))
    extra = draw(st.lists(st.integers(0, n - 1), max_size=5))
    sizes = draw(st.lists(st.integers(1, 100), min_size=n, max_size=n))
    return first, [*order, *extra], sizes


@settings(max_examples=150, deadline=None)
@given(within_the_edge())
def test_a_message_within_the_edge_always_finds_room(
        case: tuple[int, list[int], list[int]]) -> None:
    """The reservation guarantees it, even when nothing delivered is ever read."""
    first, order, sizes = case
    w = ReceiveWindow(1000, 100, first_rseq=first)
    w.advertise()
    out: list[bytes] = []
    for k in order:
        rseq = (first + k) % M
        w.check(rseq, 1)
        before = len(out)
        assert w.receive(rseq, b"x" * sizes[k], out) != 3
        w.unread_bytes += sum(len(b) for b in out[before:])  # as the session counts it
        assert w.buffered_bytes + w.unread_bytes <= 1000
        w.advertise()  # never lowers the edge, never lets it overrun the bound
    assert len(out) == len(set(order))


BITMAPS = [
    # rseqs buffered (next = 1, ack = 0), bitmap
    pytest.param([], 0, id="empty"),
    pytest.param([2], bits(0), id="ack+2"),
    pytest.param([3, 5], bits(1, 3), id="sparse"),
    pytest.param([65], bits(63), id="bit63"),
    pytest.param([66, 100], 0, id="beyond-64-bits"),
    pytest.param([2, 3, 4, 65, 66], bits(0, 1, 2, 63), id="mixed"),
]


@pytest.mark.parametrize(("held", "bitmap"), BITMAPS)
def test_bitmap(held: list[int], bitmap: int) -> None:
    w = rw()
    out: list[bytes] = []
    for r in held:
        assert w.receive(r, b"x", out) == 1
    assert w.ack == 0
    assert w.bitmap() == bitmap


def test_bitmap_after_progress_and_across_wrap() -> None:
    w = rw(first=M - 3)
    out: list[bytes] = []
    assert w.ack == M - 4
    assert w.receive(M - 3, b"a", out) == 0  # ack M - 3
    for r in (M - 1, 0, 2):
        assert w.receive(r, b"x", out) == 1
    assert w.ack == M - 3
    # bit i = ack + 2 + i: M-1 -> 0, 0 -> 1, 2 -> 3
    assert w.bitmap() == bits(0, 1, 3)
    assert w.receive(M - 2, b"b", out) == 0
    assert out == [b"a", b"b", b"x", b"x"]
    assert w.ack == 0
    assert w.bitmap() == bits(0)  # 2 = 0 + 2 + 0


@st.composite
def held_rseqs(draw: st.DrawFn) -> tuple[int, list[int]]:
    first = draw(st.sampled_from([1, M - 40, M - 1, 0]))
    offsets = draw(st.lists(st.integers(1, 80), unique=True, max_size=30))
    return first, [(first + o) % M for o in offsets]


@settings(max_examples=100, deadline=None)
@given(held_rseqs())
def test_bitmap_bits_match_buffered(fh: tuple[int, list[int]]) -> None:
    first, held = fh
    w = rw(first=first)
    out: list[bytes] = []
    for r in held:
        assert w.receive(r, b"x", out) == 1
    ack = (first - 1) % M
    expected = 0
    for r in held:
        i = (r - ack - 2) % M
        if i < 64:
            expected |= 1 << i
    assert w.bitmap() == expected


@st.composite
def shuffled_with_duplicates(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    n = draw(st.integers(1, 60))
    extra = draw(st.lists(st.integers(1, n), max_size=n))
    order = draw(st.permutations(list(range(1, n + 1)) + extra))
    first = draw(st.sampled_from([1, M - 30, M - 1, 0]))
    return first, n, order


@settings(max_examples=150, deadline=None)
@given(shuffled_with_duplicates())
def test_any_order_delivers_once_in_order(case: tuple[int, int, list[int]]) -> None:
    first, n, order = case
    w = rw(max_bytes=10**6, first=first)
    out: list[bytes] = []
    for k in order:
        rseq = (first + k - 1) % M
        w.check(rseq, 1)
        w.receive(rseq, k.to_bytes(2, "big"), out)
    assert [int.from_bytes(b, "big") for b in out] == list(range(1, n + 1))
    assert w.ack == (first + n - 1) % M
    assert w.buffer == {}
    assert w.buffered_bytes == 0


@settings(max_examples=50, deadline=None)
@given(shuffled_with_duplicates())
def test_send_and_receive_windows_agree(case: tuple[int, int, list[int]]) -> None:
    """What a receiver reports (ack, bitmap, credit) is always acceptable to the sender,
    and the sender's limit is never beyond the receiver's edge."""
    first, n, order = case
    r = rw(first=first, advertise=False)
    s = SendWindow(LIMIT, first_rseq=first)
    s.apply_credit(r.ack, r.advertise())
    for _ in range(n):
        assert s.room > 0
        s.assign(b"x", 0, 0.0, RTO)
    out: list[bytes] = []
    for k in order:
        r.check((first + k - 1) % M, 1)
        r.receive((first + k - 1) % M, b"x", out)
        s.check_ack(r.ack, r.bitmap())  # never a Violation
        s.on_ack(r.ack, r.bitmap())
        s.apply_credit(r.ack, r.advertise())
        assert s.edge == r.edge
        held = {(r.ack + 2 + i) % M for i in range(64) if r.bitmap() >> i & 1}
        assert not held & set(s.outstanding)
        assert set(s.outstanding).isdisjoint(
            {(first + j) % M for j in range((r.ack - first + 1) % M)})
    assert s.outstanding == {}
