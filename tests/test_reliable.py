"""SendWindow / ReceiveWindow (docs/protocol.md sections 5 and 8): acks, SACK bitmap, fast
retransmit, Karn's rule, RFC 1982 serial arithmetic across 2**32, reorder buffer.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentra.core.reliable import ReceiveWindow, SendWindow, Violation, serial_gt

M = 2**32
RTO = 0.25
LIMIT = 256  # MAX_RELIABLE_IN_FLIGHT
REORDER = 262144  # MAX_REORDER_BUFFER


def bits(*offsets: int) -> int:
    """Bitmap with bit i set for each i given (bit i = rseq ack + 2 + i)."""
    out = 0
    for i in offsets:
        out |= 1 << i
    return out


def sent(n: int, first: int = 1, times: list[float] | None = None) -> SendWindow:
    w = SendWindow(LIMIT, first_rseq=first)
    for k in range(n):
        now = times[k] if times else 0.0
        assert w.assign(bytes([k % 256]), 0, now, RTO) == (first + k) % M
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
    w.on_ack(ack, None, 1.0, RTO)
    assert sorted(w.outstanding) == left
    assert w.acked == ack
    if left and ack:
        assert w.rto_at == pytest.approx(1.0 + RTO)  # restarted on new data acked
    if not left:
        assert w.rto_at is None


def test_stale_ack_ignored() -> None:
    w = sent(6)
    w.on_ack(4, None, 1.0, RTO)
    assert w.on_ack(2, None, 2.0, RTO) == (None, [])
    assert w.acked == 4
    assert sorted(w.outstanding) == [5, 6]
    # a stale ack's bitmap is ignored too (it may describe an older state)
    assert w.on_ack(3, bits(0, 1), 2.0, RTO) == (None, [])
    assert not w.outstanding[5].sacked
    assert not w.outstanding[6].sacked


def test_repeated_ack_applies_bitmap() -> None:
    w = sent(4)
    w.on_ack(1, None, 1.0, RTO)
    w.on_ack(1, bits(1), 1.5, RTO)  # rseq 1 + 2 + 1 = 4
    assert w.outstanding[4].sacked
    assert not w.outstanding[3].sacked
    assert not w.outstanding[2].sacked


VIOLATIONS = [
    # sent, ack, bitmap
    pytest.param(0, 1, None, id="ack1-nothing-sent"),
    pytest.param(3, 4, None, id="ack-beyond-sent"),
    pytest.param(3, 100, None, id="ack-far-beyond"),
    pytest.param(5, 1, bits(3), id="bit-beyond-sent"),  # 1 + 2 + 3 = 6 > 5
    pytest.param(5, 0, bits(4), id="bit-beyond-sent-ack0"),  # 0 + 2 + 4 = 6
    pytest.param(5, 0, bits(0, 63), id="bit63"),
    pytest.param(5, 5, bits(0), id="bit-after-all-acked"),
    pytest.param(1, 0, bits(0), id="only-hole-sent"),  # rseq 2 never sent
]


@pytest.mark.parametrize(("n", "ack", "bitmap"), VIOLATIONS)
def test_never_sent_is_violation(n: int, ack: int, bitmap: int | None) -> None:
    w = sent(n)
    with pytest.raises(Violation):
        w.on_ack(ack, bitmap, 1.0, RTO)


NOT_VIOLATIONS = [
    pytest.param(3, 3, None, id="ack-last-sent"),
    pytest.param(5, 1, bits(2), id="bit-last-sent"),  # 1 + 2 + 2 = 5
    pytest.param(5, 0, bits(3), id="bit-last-sent-ack0"),
    pytest.param(0, 0, None, id="ack0-nothing-sent"),
]


@pytest.mark.parametrize(("n", "ack", "bitmap"), NOT_VIOLATIONS)
def test_edge_of_sent_is_fine(n: int, ack: int, bitmap: int | None) -> None:
    w = sent(n)
    w.on_ack(ack, bitmap, 1.0, RTO)


FAST = [
    # sent, ack, bitmap, fast retransmit list
    pytest.param(5, 0, bits(0, 1, 2), [1], id="three-later-hole1"),
    pytest.param(5, 0, bits(0, 1), [], id="two-later-none"),
    pytest.param(5, 0, bits(0, 2), [], id="two-later-gap"),
    pytest.param(6, 0, bits(1, 2, 3), [1, 2], id="two-holes"),
    pytest.param(8, 0, bits(2, 3, 4), [1, 2, 3], id="three-holes"),
    pytest.param(8, 0, bits(0, 2, 3, 5), [1, 3], id="holes-with-2-later-not"),
    pytest.param(8, 2, bits(0, 1, 2), [3], id="after-cumulative"),
    pytest.param(10, 0, bits(0, 1, 2, 6), [1], id="only-one-later-above-5-6-7"),
    pytest.param(10, 0, bits(0, 4, 5, 6), [1, 3, 4, 5], id="four-holes"),
]


@pytest.mark.parametrize(("n", "ack", "bitmap", "fast"), FAST)
def test_fast_retransmit(n: int, ack: int, bitmap: int, fast: list[int]) -> None:
    w = sent(n)
    _, got = w.on_ack(ack, bitmap, 1.0, RTO)
    assert got == fast


def test_fast_retransmit_exactly_once() -> None:
    w = sent(9)
    assert w.on_ack(0, bits(0, 1, 2), 1.0, RTO)[1] == [1]
    assert w.on_ack(0, bits(0, 1, 2), 1.1, RTO)[1] == []
    assert w.on_ack(0, bits(0, 1, 2, 3), 1.2, RTO)[1] == []
    # the retransmission of 1 arrived: 1..4 acknowledged, 5 is the hole, bits 0..2 are 6, 7, 8.
    w.on_ack(4, None, 1.3, RTO)
    assert w.on_ack(4, bits(1, 2), 1.4, RTO)[1] == []
    assert w.on_ack(4, bits(0, 1, 2), 1.5, RTO)[1] == [5]
    assert w.on_ack(4, bits(0, 1, 2, 3), 1.6, RTO)[1] == []


def test_sacked_not_retransmitted_on_timeout() -> None:
    w = sent(4)
    w.on_ack(0, bits(0, 1), 0.1, RTO)  # 2 and 3 received
    assert w.expired(10.0, RTO) == [1, 4]


def test_expired_by_send_time() -> None:
    w = sent(3, times=[0.0, 0.1, 0.2])
    assert w.expired(0.24, RTO) == []
    assert w.expired(0.25, RTO) == [1]
    assert w.expired(0.36, RTO) == [1, 2]
    retransmitted(w, 1, 0.3)
    assert w.expired(0.46, RTO) == [2, 3]


# --- RTT samples (Karn's rule) ----------------------------------------------------------


def test_rtt_sample_from_cumulative_ack() -> None:
    w = sent(3, times=[0.0, 0.1, 0.2])
    sample, _ = w.on_ack(3, None, 0.5, RTO)
    # the ack that acknowledges 3 was sent when 3 arrived: 0.5 - 0.2
    assert sample == pytest.approx(0.3)


def test_no_rtt_sample_from_retransmitted() -> None:
    w = sent(3, times=[0.0, 0.1, 0.2])
    retransmitted(w, 3, 0.4)
    sample, _ = w.on_ack(3, None, 0.5, RTO)
    assert sample is None
    assert w.outstanding == {}


def test_no_rtt_sample_from_stale_or_repeated_ack() -> None:
    w = sent(3)
    w.on_ack(2, None, 0.5, RTO)
    assert w.on_ack(2, None, 0.6, RTO)[0] is None
    assert w.on_ack(1, None, 0.7, RTO)[0] is None


def test_rtt_sample_from_sack() -> None:
    w = sent(3, times=[0.0, 0.1, 0.2])
    retransmitted(w, 3, 0.3)
    sample, _ = w.on_ack(0, bits(1), 0.5, RTO)  # only 3 (retransmitted) sacked
    assert sample is None
    sample, _ = w.on_ack(0, bits(0, 1), 0.6, RTO)  # now 2, sent once at 0.1
    assert sample == pytest.approx(0.5)
    sample, _ = w.on_ack(0, bits(0, 1), 0.7, RTO)  # nothing newly sacked
    assert sample is None


def test_no_second_rtt_sample_for_message_already_sacked() -> None:
    """A message sampled when SACKed must not give a second, inflated sample later.

    1, 2, 3 sent at t=0; at 0.1 the peer reports 2 and 3 (sample 0.1); 1 is
    retransmitted at 0.3; the cumulative ack 3 at 0.4 was caused by that
    retransmission. 0.4 is not a round trip of anything: RFC 6298 section 3 (Karn)
    allows no sample here.
    """
    w = sent(3)
    sample, _ = w.on_ack(0, bits(0, 1), 0.1, RTO)
    assert sample == pytest.approx(0.1)
    retransmitted(w, 1, 0.3)
    sample, _ = w.on_ack(3, None, 0.4, RTO)
    assert sample is None


# --- serial arithmetic across the 2**32 wrap ------------------------------------------


def test_send_window_across_wrap() -> None:
    first = M - 2
    w = sent(4, first=first)  # rseqs M-2, M-1, 0, 1
    assert sorted(w.outstanding) == [0, 1, M - 2, M - 1]
    assert w.acked == M - 3
    with pytest.raises(Violation):
        w.on_ack(2, None, 0.1, RTO)
    w.on_ack(M - 1, None, 0.1, RTO)
    assert sorted(w.outstanding) == [0, 1]
    w.on_ack(M - 2, None, 0.2, RTO)  # stale
    assert sorted(w.outstanding) == [0, 1]
    w.on_ack(0, None, 0.3, RTO)
    assert sorted(w.outstanding) == [1]
    assert w.acked == 0
    w.on_ack(1, None, 0.4, RTO)
    assert w.outstanding == {}


def test_send_window_nothing_sent_near_wrap() -> None:
    w = SendWindow(LIMIT, first_rseq=M - 2)
    w.on_ack(M - 3, None, 0.1, RTO)  # "as if first - 1 had been received"
    with pytest.raises(Violation):
        w.on_ack(M - 2, None, 0.1, RTO)


def test_bitmap_and_fast_retransmit_across_wrap() -> None:
    w = sent(5, first=M - 2)  # M-2, M-1, 0, 1, 2
    # ack M-3 (nothing), bits 0,1,2 = rseq M-1, 0, 1 received
    _, fast = w.on_ack(M - 3, bits(0, 1, 2), 0.1, RTO)
    assert fast == [M - 2]
    assert [w.outstanding[r].sacked for r in (M - 2, M - 1, 0, 1, 2)] == [
        False, True, True, True, False]
    with pytest.raises(Violation):
        w.on_ack(M - 3, bits(4), 0.2, RTO)  # rseq 3 never sent
    _, fast = w.on_ack(M - 1, bits(1), 0.3, RTO)  # ack M-1: bit 1 is rseq 2
    assert fast == []
    assert sorted(w.outstanding) == [0, 1, 2]


def test_wrap_with_first_rseq_zero() -> None:
    w = sent(3, first=0)  # 0, 1, 2 with acked = M - 1
    assert w.acked == M - 1
    w.on_ack(0, None, 0.1, RTO)
    assert sorted(w.outstanding) == [1, 2]


# --- ReceiveWindow ------------------------------------------------------------------------


def rw(limit: int = LIMIT, max_bytes: int = REORDER, first: int = 1) -> ReceiveWindow:
    return ReceiveWindow(limit, max_bytes, first_rseq=first)


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
    pytest.param([(LIMIT, 1, [])], 0, id="last-in-window"),
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


CHECK = [
    # (next after delivering 1..k) rseq, count, violation?
    pytest.param(0, 1, 1, False, id="next"),
    pytest.param(0, LIMIT, 1, False, id="next+limit-1"),
    pytest.param(0, LIMIT + 1, 1, True, id="next+limit"),
    pytest.param(0, LIMIT + 1000, 1, True, id="far"),
    pytest.param(0, LIMIT - 6, 7, False, id="packet-ends-at-edge"),
    pytest.param(0, LIMIT - 6, 8, True, id="packet-crosses-edge"),
    pytest.param(10, 11 + LIMIT - 1, 1, False, id="moved-edge-ok"),
    pytest.param(10, 11 + LIMIT, 1, True, id="moved-edge-violation"),
    pytest.param(10, 1, 1, False, id="old-duplicate-fine"),
    pytest.param(10, 5, 3, False, id="old-packet-fine"),
]


@pytest.mark.parametrize(("delivered", "rseq", "count", "violation"), CHECK)
def test_check_window(delivered: int, rseq: int, count: int, violation: bool) -> None:
    w = rw()
    out: list[bytes] = []
    for r in range(1, delivered + 1):
        w.receive(r, b"x", out)
    assert w.ack == delivered
    if violation:
        with pytest.raises(Violation):
            w.check(rseq, count)
    else:
        w.check(rseq, count)


def test_check_across_wrap() -> None:
    w = rw(first=M - 5)
    w.check((M - 5 + LIMIT - 1) % M, 1)
    with pytest.raises(Violation):
        w.check((M - 5 + LIMIT) % M, 1)
    w.check(M - 6, 1)  # already delivered: a duplicate, not a violation


def test_reorder_buffer_byte_limit() -> None:
    w = rw(max_bytes=10)
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
    w = rw(limit=1000, max_bytes=10**6, first=first)
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
    """What a receiver reports (ack, bitmap) is always acceptable to the sender."""
    first, n, order = case
    s = SendWindow(LIMIT, first_rseq=first)
    for _ in range(n):
        s.assign(b"x", 0, 0.0, RTO)
    r = rw(first=first)
    out: list[bytes] = []
    for k in order:
        r.receive((first + k - 1) % M, b"x", out)
        s.on_ack(r.ack, r.bitmap(), 1.0, RTO)  # never a Violation
        held = {(r.ack + 2 + i) % M for i in range(64) if r.bitmap() >> i & 1}
        assert all(s.outstanding[x].sacked for x in held if x in s.outstanding)
        assert set(s.outstanding).isdisjoint(
            {(first + j) % M for j in range((r.ack - first + 1) % M)})
    assert s.outstanding == {}


def test_a_message_that_only_now_came_into_the_bitmaps_reach_gives_no_rtt_sample() -> None:
    """It may have arrived long ago: its age measures the hole's wait, not the path."""
    w = SendWindow(256)
    for i in range(200):
        w.assign(b"m%d" % i, 0, 0.0, 1.0)
    # rseq 1 is lost; the receiver holds 2..200 and reports what its bitmap reaches.
    sample, _ = w.on_ack(0, (1 << 64) - 1, 0.05, 1.0)
    assert sample == pytest.approx(0.05)  # rseq 2..65: within reach from the start
    # rseq 1 arrives (after a retransmission): the ack jumps, the bitmap now
    # covers 102..165, received long ago: no sample, and none for the ack either.
    w.outstanding[1].retries = 1
    sample, _ = w.on_ack(100, (1 << 64) - 1, 5.0, 1.0)
    assert sample is None
