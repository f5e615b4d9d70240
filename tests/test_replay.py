"""ReplayWindow (docs/protocol.md section 4: REPLAY_WINDOW packet numbers below the highest seen).

The table follows wireguard-go's replay_test.go: a window and a list of
``(packet number, expected)`` steps, where each packet judged fresh is then
marked, as a receiver does after authentication (docs/protocol.md 4 steps 4 and 6).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentra.core.replay import ReplayWindow

W = 1024  # REPLAY_WINDOW (docs/protocol.md section 2)


def receive(window: ReplayWindow, pn: int) -> bool:
    """Pre-check, and mark what passes (as if it then authenticated)."""
    if not window.is_fresh(pn):
        return False
    window.mark(pn)
    return True


def run(window: ReplayWindow, steps: list[tuple[int, bool]]) -> None:
    for i, (pn, expected) in enumerate(steps):
        assert receive(window, pn) is expected, f"step {i}: pn {pn}"


TABLE: list[tuple[str, int, list[tuple[int, bool]]]] = [
    ("in-order", W, [(1, True), (2, True), (3, True), (4, True)]),
    ("duplicates", W, [(1, True), (1, False), (2, True), (2, False), (1, False)]),
    ("out-of-order", W, [(1, True), (4, True), (3, True), (2, True), (3, False), (4, False),
                         (6, True), (5, True), (5, False)]),
    ("zero-never-fresh", W, [(0, False), (1, True), (0, False), (2 * W, True), (0, False)]),
    # highest = W + 10: W - 1 below it is the oldest remembered, W below is out.
    ("edge", W, [(W + 10, True), (11, True), (11, False), (10, False), (12, True),
                 (W + 9, True), (W + 10, False)]),
    ("edge-no-mark", W, [(W + 10, True), (10, False), (9, False), (1, False)]),
    ("below-window", W, [(5000, True), (5000 - W, False), (5000 - W - 1, False), (1, False),
                         (5000 - W + 1, True)]),
    # A jump of exactly W clears every remembered bit except the new highest.
    ("jump-exactly-size", W, [*((p, True) for p in range(1, 11)), (10 + W, True),
                              (11, True), (10, False), (12, True), (10 + W - 1, True)]),
    # A jump of W - 1 keeps 10 as the oldest remembered (still marked).
    ("jump-size-minus-1", W, [*((p, True) for p in range(1, 11)), (9 + W, True),
                              (10, False), (11, True), (9, False)]),
    ("jump-huge", W, [(5, True), (5 + 10 * W, True), (5 + 10 * W - 1, True), (5 + 10 * W - 5, True),
                      (5 + 9 * W + 1, True), (5 + 9 * W, False), (5, False),
                      (5 + 10 * W, False), (5 + 10 * W + 1, True)]),
    ("jump-beyond-2**32", W, [(1, True), (2**32 + 7, True), (2**32 + 6, True), (7, False),
                              (2**32 + 7, False)]),
    ("fill-whole-window", W, [*((p, True) for p in range(1, W + 2)),
                              *((p, False) for p in range(1, W + 2))]),
    ("reverse-fill", W, [(W, True), *((p, True) for p in range(W - 1, 0, -1)),
                         *((p, False) for p in range(W, 0, -1))]),
    # small windows make the edge easy to see
    ("size-8-edge", 8, [(8, True), (1, True), (0, False), (9, True), (1, False), (2, True),
                        (2, False), (16, True), (9, False), (10, True), (8, False)]),
    ("size-1", 1, [(1, True), (1, False), (3, True), (2, False), (4, True), (3, False)]),
    ("size-64", 64, [(100, True), (37, True), (36, False), (99, True), (37, False),
                     (164, True), (100, False), (101, True)]),
]


@pytest.mark.parametrize(("size", "steps"), [pytest.param(s, t, id=n) for n, s, t in TABLE])
def test_replay_table(size: int, steps: list[tuple[int, bool]]) -> None:
    run(ReplayWindow(size), steps)


def test_default_size_is_1024() -> None:
    window = ReplayWindow()
    run(window, [(W + 1, True), (2, True), (1, False)])


def test_is_fresh_does_not_change_state() -> None:
    window = ReplayWindow(W)
    for pn in (1, 5, 10_000, 3):
        assert window.is_fresh(pn)
    # nothing was marked: all are still fresh, and none is "below the window"
    assert window.is_fresh(1)
    assert window.is_fresh(3)
    assert window.highest == 0


def test_mark_moves_highest() -> None:
    window = ReplayWindow(W)
    window.mark(7)
    assert window.highest == 7
    window.mark(3)
    assert window.highest == 7
    assert not window.is_fresh(3)
    assert not window.is_fresh(7)
    assert window.is_fresh(4)


# --- reference model --------------------------------------------------------------


class Model:
    """A plain set: pn is fresh iff never seen and above highest - size. pn 0 counts as seen."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen = {0}
        self.highest = 0

    def is_fresh(self, pn: int) -> bool:
        return pn not in self.seen and pn > self.highest - self.size

    def mark(self, pn: int) -> None:
        self.seen.add(pn)
        self.highest = max(self.highest, pn)


@st.composite
def scenario(draw: st.DrawFn) -> tuple[int, list[tuple[int, bool]]]:
    size = draw(st.sampled_from([1, 2, 3, 8, 63, 64, 65, 1024]))
    ops: list[tuple[int, bool]] = []
    base = 0
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.integers(0, 9))
        if kind == 0:  # a big jump
            base += draw(st.integers(size - 2, 3 * size + 2))
            pn = max(0, base)
        else:  # near the current region, on both sides of the window's edge
            pn = max(0, base + draw(st.integers(-size - 3, 4)))
        base = max(base, pn)
        ops.append((pn, draw(st.booleans())))  # mark it (if fresh) or only look
    return size, ops


@settings(max_examples=120, deadline=None)
@given(scenario())
def test_replay_matches_set_model(sc: tuple[int, list[tuple[int, bool]]]) -> None:
    size, ops = sc
    window, model = ReplayWindow(size), Model(size)
    for pn, do_mark in ops:
        fresh = window.is_fresh(pn)
        assert fresh == model.is_fresh(pn), (pn, model.highest, size)
        if fresh and do_mark:
            window.mark(pn)
            model.mark(pn)
        # marking a pn already seen inside the window changes nothing
        if not fresh and pn in model.seen and pn > model.highest - size:
            window.mark(pn)
        assert window.highest == model.highest
