"""Lanes and fragments of one session (docs/protocol.md section 14).

Owns: the receiver's reassembly of fragmented messages (RELIABLE by lane and
``lseq``, REALTIME by ``mid``), each lane's delivery order (its next ``lseq``
and the whole messages waiting for their turn), the REALTIME reassembly bounds
(section 14.7), and the sender's per-lane FIFO queues with the priority a
lane's turn comes at (section 14.8).
Never: reads a clock (``now`` is passed in), touches packets or keys, or
allocates anything for data that did not authenticate (the session calls in
only at step 8 of the receive order). A broken rule raises
:class:`~intentra.core.reliable.Violation` before anything changes for that record.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from typing import Final

from intentra.constants import MAX_PRIORITY, RSEQ_MOD
from intentra.core.reliable import Violation
from intentra.core.stats import Stats

_MASK: Final = RSEQ_MOD - 1
_HALF: Final = RSEQ_MOD >> 1
PARTIAL_COST: Final = 256
"""Bytes a partial REALTIME message counts against its bounds beyond its data
(docs/protocol.md section 12): the state of one partial message."""
PIECE_COST: Final = 64
"""Bytes each fragment held counts beyond its data: many tiny fragments cost what
they occupy, not what they carry."""


class Partial:
    """The fragments of one message received so far (sorted by offset, no overlap)."""

    __slots__ = ("first_at", "got", "lane", "pieces", "starts", "total")

    def __init__(self, lane: int, total: int, first_at: float) -> None:
        self.lane = lane
        self.total = total
        self.got = 0
        self.starts: list[int] = []
        self.pieces: dict[int, bytes] = {}
        self.first_at = first_at

    def check(self, lane: int, offset: int, length: int, total: int) -> None:
        """Raise Violation if a fragment does not belong here or overlaps what is held."""
        if total != self.total or lane != self.lane:
            raise Violation(f"fragment declares total {total} on lane {lane}, held "
                            f"{self.total} on lane {self.lane}")
        starts = self.starts
        i = bisect_right(starts, offset)
        if i and starts[i - 1] + len(self.pieces[starts[i - 1]]) > offset:
            raise Violation(f"fragment at {offset} overlaps bytes held")
        if i < len(starts) and offset + length > starts[i]:
            raise Violation(f"fragment at {offset}+{length} overlaps bytes held")

    def add(self, offset: int, data: bytes) -> bool:
        """Add a checked fragment; True when the message is whole."""
        starts = self.starts
        if not starts or offset > starts[-1]:
            starts.append(offset)  # the usual case: fragments in order
        else:
            starts.insert(bisect_right(starts, offset), offset)
        self.pieces[offset] = data
        self.got += len(data)
        return self.got == self.total

    def join(self) -> bytes:
        pieces = self.pieces
        return b"".join([pieces[s] for s in self.starts])


class LaneReceiver:
    """Delivery order per lane and RELIABLE reassembly (docs/protocol.md 14.5 step 3).

    Its bytes (``held``) count against the session's credit: the caller reserves
    a credit position per record, so a peer never makes it hold more than
    MAX_REORDER_BUFFER.
    """

    __slots__ = ("held", "next", "partial", "waiting")

    def __init__(self) -> None:
        self.next: dict[int, int] = {}                  # lane -> next lseq to deliver
        self.waiting: dict[int, dict[int, bytes]] = {}  # lane -> lseq -> whole message
        self.partial: dict[tuple[int, int], Partial] = {}
        self.held = 0                                   # bytes of partial and waiting

    def check(self, lane: int, fragment: int, lseq: int, offset: int, length: int,
              total: int) -> None:
        """Raise Violation if the record breaks a rule of 14.5 step 3.2 (nothing changes)."""
        nxt = self.next.get(lane, 1)
        if 0 < ((nxt - lseq) & _MASK) < _HALF:
            raise Violation(f"lane {lane} lseq {lseq} was delivered already (next {nxt})")
        waiting = self.waiting.get(lane)
        if waiting is not None and lseq in waiting:
            raise Violation(f"lane {lane} lseq {lseq} is held whole already")
        partial = self.partial.get((lane, lseq))
        if partial is not None:
            if not fragment:
                raise Violation(f"a whole message for lane {lane} lseq {lseq}, fragments held")
            partial.check(lane, offset, length, total)

    def apply(self, lane: int, fragment: int, lseq: int, offset: int, total: int,
              data: bytes, now: float, out: list[bytes],
              out_lanes: list[tuple[int, bytes]]) -> None:
        """Take a checked record; deliver what is whole and in its lane's turn.

        Lane 0's messages go to ``out`` (in order with those of ``X`` = 0 packets),
        the other lanes' to ``out_lanes`` as (lane, data).
        """
        if fragment:
            key = (lane, lseq)
            partial = self.partial.get(key)
            if partial is None:
                partial = self.partial[key] = Partial(lane, total, now)
            self.held += len(data)
            if not partial.add(offset, data):
                return
            del self.partial[key]
            whole = partial.join()
        else:
            whole = data
            self.held += len(data)
        nxt = self.next.get(lane, 1)
        if lseq != nxt:
            waiting = self.waiting.get(lane)
            if waiting is None:
                waiting = self.waiting[lane] = {}
            waiting[lseq] = whole
            return
        self.held -= len(whole)
        if lane == 0:
            out.append(whole)
        else:
            out_lanes.append((lane, whole))
        self._advance(lane, (nxt + 1) & _MASK, out, out_lanes)

    def delivered_x0(self, out: list[bytes]) -> None:
        """A message of an ``X`` = 0 packet was delivered: it was lane 0's next (14.5 step 4)."""
        self._advance(0, (self.next.get(0, 1) + 1) & _MASK, out, [])

    def _advance(self, lane: int, nxt: int, out: list[bytes],
                 out_lanes: list[tuple[int, bytes]]) -> None:
        waiting = self.waiting.get(lane)
        if waiting:
            while nxt in waiting:
                whole = waiting.pop(nxt)
                self.held -= len(whole)
                if lane == 0:
                    out.append(whole)
                else:
                    out_lanes.append((lane, whole))
                nxt = (nxt + 1) & _MASK
            if not waiting:
                del self.waiting[lane]
        self.next[lane] = nxt

    @property
    def partial_count(self) -> int:
        return len(self.partial)


class ReassemblyBudget:
    """Bytes of partial REALTIME messages all sessions of an endpoint hold (14.7)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class RealtimeReassembly:
    """Partial REALTIME messages of one session, by ``mid`` (docs/protocol.md 14.5 step 5).

    Bounded per session (``limit``) and per endpoint (``budget``); every byte is
    charged to this session, and making room only ever discards this session's
    own partial messages, oldest first. A partial message lives at most
    ``deadline`` seconds after its first fragment.
    """

    __slots__ = ("budget", "deadline", "limit", "partials", "stats", "used")

    def __init__(self, limit: int, budget: ReassemblyBudget | None, deadline: float,
                 stats: Stats) -> None:
        self.limit = limit
        self.budget = budget
        self.deadline = deadline
        self.stats = stats       # messages_dropped_reassembly counts what is discarded
        self.partials: dict[int, tuple[Partial, list[int]]] = {}  # mid -> (partial, [cost])
        self.used = 0

    def expires_at(self) -> float | None:
        """When the oldest partial message becomes late (None: none held)."""
        for partial, _ in self.partials.values():
            return partial.first_at + self.deadline
        return None

    def expire(self, now: float) -> None:
        """Discard every partial message older than the REALTIME deadline."""
        partials = self.partials
        while partials:
            mid = next(iter(partials))
            if partials[mid][0].first_at + self.deadline > now:
                return
            self._discard(mid)

    def _discard(self, mid: int) -> None:
        _, cost = self.partials.pop(mid)
        self.used -= cost[0]
        if self.budget is not None:
            self.budget.used -= cost[0]
        self.stats.messages_dropped_reassembly += 1

    def check(self, mid: int, lane: int, offset: int, length: int, total: int) -> None:
        """Raise Violation if the fragment conflicts with what is held for ``mid``."""
        held = self.partials.get(mid)
        if held is not None:
            held[0].check(lane, offset, length, total)

    def add(self, mid: int, lane: int, offset: int, total: int, data: bytes,
            now: float) -> bytes | None:
        """Take a checked fragment; the whole message when it completes, else None."""
        self.expire(now)
        partials = self.partials
        held = partials.get(mid)
        budget = self.budget
        need = total + PARTIAL_COST
        if need > self.limit or (budget is not None and need > budget.limit):
            # It could never be held whole: discard it, and nothing else for it.
            if held is not None:
                self._discard(mid)
            else:
                self.stats.messages_dropped_reassembly += 1
            return None
        cost = len(data) + PIECE_COST + (PARTIAL_COST if held is None else 0)
        # Room comes from this session's own oldest partial messages, never another's.
        while self.used + cost > self.limit or (
                budget is not None and budget.used + cost > budget.limit):
            oldest = next((m for m in partials if m != mid), None)
            if oldest is None:
                if held is not None:
                    self._discard(mid)
                else:
                    self.stats.messages_dropped_reassembly += 1  # no room for it at all
                return None
            self._discard(oldest)
        if held is None:
            held = partials[mid] = (Partial(lane, total, now), [0])
        partial, charged = held
        charged[0] += cost
        self.used += cost
        if budget is not None:
            budget.used += cost
        if not partial.add(offset, data):
            return None
        del partials[mid]
        self.used -= charged[0]
        if budget is not None:
            budget.used -= charged[0]
        return partial.join()

    def clear(self) -> None:
        """The session ended: give its bytes back to the endpoint."""
        if self.budget is not None:
            self.budget.used -= self.used
        self.used = 0
        self.partials.clear()


class OutLane:
    """One lane's RELIABLE send queue (docs/protocol.md section 14.8).

    FIFO of (data, priority). Its turn comes at ``level``, the highest priority
    queued on it (-1 when empty): a message waiting for its lane's earlier ones
    lends them its priority. ``lseq`` is the lane sequence number of the head
    message (section 14.3 rule 1); ``offset`` how much of the head has been given
    positions already (a fragmented message in progress).
    """

    __slots__ = ("counts", "lane", "level", "lseq", "offset", "queue")

    def __init__(self, lane: int) -> None:
        self.lane = lane
        self.queue: deque[tuple[bytes, int]] = deque()
        self.counts = [0] * (MAX_PRIORITY + 1)
        self.level = -1
        self.lseq = 1
        self.offset = 0

    def pop(self) -> bool:
        """The head has left whole; True if the lane's level changed."""
        _, priority = self.queue.popleft()
        counts = self.counts
        counts[priority] -= 1
        self.offset = 0
        self.lseq = (self.lseq + 1) & _MASK
        if counts[priority] or priority != self.level:
            return False
        self.relevel()
        return True

    def relevel(self) -> None:
        """Nothing is queued at ``level`` any more: the highest level left (-1: empty)."""
        counts = self.counts
        level = self.level - 1
        while level >= 0 and not counts[level]:
            level -= 1
        self.level = level
