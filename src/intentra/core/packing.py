"""Packing small messages into the plaintext of one X = 0 DATA packet (section 4).

Owns: the plaintext of the X = 0 DATA packet a flush is filling (one REALTIME and
one RELIABLE at a time), and the rules that move queued messages into it: for
REALTIME, whole messages of lane 0 not past the REALTIME deadline; for RELIABLE,
whole lane-0 messages of one lane, each given its rseq by the send window; each a
2-byte length and its bytes, while they fit. This module is the reference;
``intentra._native.Packer`` does the same in C on the native datapath
(docs/native.md), with the same results.
Never: decides when a packet leaves, its packet number or its keys (the session
does), or drops anything: a message it does not take stays at the head of its
queue for the session to handle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from intentra.constants import LEN_PREFIX, RSEQ_LEN
from intentra.core.wire import U16, U32

if TYPE_CHECKING:
    from intentra.core.lanes import OutLane
    from intentra.core.reliable import SendWindow

EMPTY: Final = 0
"""take(): the queue is empty."""
NOT_PLAIN: Final = 1
"""take(): the head of the queue is late, on a lane, or too large for one packet whole."""
FULL: Final = 2
"""take(): the head does not fit in what is left of the packet."""


STOP: Final = 0
"""take_reliable(): the lane's turn is over (not alone at its level, no room, or the
head is too large for an X = 0 packet)."""
RELEVEL: Final = 1
"""take_reliable(): the lane's level must move (the caller calls ``relevel``)."""


class RealtimePacker(Protocol):
    """What a session needs of a packer (this module's :class:`Packer`, or the C one)."""

    @property
    def size(self) -> int: ...
    @property
    def prio(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def first(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def taken(self) -> int: ...

    def take(self, q: deque[tuple[bytes, float, int]], level: int, now: float,
             deadline: float, limit: int, small: int) -> int: ...

    def take_reliable(self, olane: OutLane, window: SendWindow, now: float, rto: float,
                      room: int, single: bool, small: int, limit: int) -> tuple[int, int]: ...

    def plaintext(self) -> bytes: ...


PackerFactory = Callable[..., RealtimePacker]
"""Makes a packer: ``factory()`` for REALTIME, ``factory(reliable=True)`` for RELIABLE."""


class Packer:
    """The X = 0 DATA packet (REALTIME, or RELIABLE) being filled during one flush.

    Attributes:
        size: plaintext bytes of the packet being filled (RELIABLE: with the rseq).
        prio: its priority (REALTIME: the level of its first message; RELIABLE: the
            highest of its messages').
        count: messages in it.
        first: RELIABLE: the rseq of its first message.
        sent: messages taken during the flush.
        taken: ``LEN_PREFIX`` + length of each message taken (for REALTIME, the
            ``rt_bytes`` they held in the queue).
    """

    __slots__ = ("_parts", "count", "first", "prio", "reliable", "sent", "size", "taken")

    def __init__(self, reliable: bool = False) -> None:
        self.reliable = reliable
        self._parts: list[bytes] = []
        self.size = RSEQ_LEN if reliable else 0
        self.prio = 0
        self.count = 0
        self.first = 0
        self.sent = 0
        self.taken = 0

    def take(self, q: deque[tuple[bytes, float, int]], level: int, now: float,
             deadline: float, limit: int, small: int) -> int:
        """Move plain messages from the head of ``q`` (priority ``level``) into the packet.

        A plain message is on lane 0, at most ``small`` bytes, and queued no longer
        than ``deadline`` before ``now``. Stops at the first that is not, or that
        does not fit in ``limit`` bytes of plaintext.

        Returns:
            EMPTY, NOT_PLAIN (the head is left for the caller) or FULL.
        """
        parts = self._parts
        size = self.size
        sent = taken = 0
        pack_len = U16.pack
        try:
            while q:
                data, queued_at, lane = q[0]
                n = len(data)
                need = LEN_PREFIX + n
                if now - queued_at > deadline or lane or n > small:
                    return NOT_PLAIN
                if size and size + need > limit:
                    return FULL
                q.popleft()
                if not size:
                    self.prio = level
                parts.append(pack_len(n))
                parts.append(data)
                size += need
                taken += need
                sent += 1
            return EMPTY
        finally:
            self.size = size
            self.count += sent
            self.sent += sent
            self.taken += taken

    def take_reliable(self, olane: OutLane, window: SendWindow, now: float, rto: float,
                      room: int, single: bool, small: int, limit: int) -> tuple[int, int]:
        """Move whole messages from the head of ``olane`` (lane 0) into the packet.

        Each is given its rseq by ``window.assign`` and counted off ``olane.counts``.
        The caller checked that the head is at most ``small`` bytes; the next ones
        are taken while ``single`` (the lane is alone at its level), ``room`` lasts,
        each is at most ``small`` bytes and fits in ``limit`` (docs/protocol.md
        section 14.8: such a lane is drained without a turn per message).

        Returns:
            ``(status, taken)``: STOP, RELEVEL or FULL, and the messages taken.
        """
        queue = olane.queue
        counts = olane.counts
        lane_level = olane.level
        parts = self._parts
        pack_len = U16.pack
        size, count, first, prio_max = self.size, self.count, self.first, self.prio
        taken = nbytes = 0
        status = STOP
        data, prio = queue[0]
        n = len(data)
        while True:
            need = LEN_PREFIX + n
            if count and size + need > limit:
                status = FULL
                break
            queue.popleft()
            rseq = window.assign(data, prio, now, rto)
            if not count:
                first = rseq
                prio_max = prio
            elif prio > prio_max:
                prio_max = prio
            parts.append(pack_len(n))
            parts.append(data)
            size += need
            nbytes += need
            count += 1
            room -= 1
            taken += 1
            left = counts[prio] - 1
            counts[prio] = left
            if not left and prio == lane_level:
                status = RELEVEL
                break
            if not single or room <= 0:
                break
            data, prio = queue[0]
            n = len(data)
            if n > small:
                break
        self.size, self.count, self.first, self.prio = size, count, first, prio_max
        self.sent += taken
        self.taken += nbytes
        return status, taken

    def plaintext(self) -> bytes:
        """The packet's plaintext; the packer is empty again."""
        if self.reliable:
            out = U32.pack(self.first) + b"".join(self._parts)
            self.size = RSEQ_LEN
        else:
            out = b"".join(self._parts)
            self.size = 0
        self._parts = []
        self.prio = 0
        self.count = 0
        self.first = 0
        return out


__all__ = ["EMPTY", "FULL", "NOT_PLAIN", "RELEVEL", "STOP", "Packer", "PackerFactory",
           "RealtimePacker"]
