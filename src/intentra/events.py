"""Events the sans-I/O core emits, in the past tense.

They report only what the application must act on. Drops are counters
(:mod:`intentra.core.stats`), never events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from intentra.constants import CloseReason, Intent

Address = tuple[Any, ...]
"""A socket address as the socket module gives it: (host, port[, flowinfo, scope_id])."""


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A session is established; ``initiator`` says which side we were."""

    conn_id: int
    peer_key: bytes
    address: Address
    initiator: bool


@dataclass(frozen=True, slots=True)
class HandshakeConfirmed:
    """The initiator received the responder's first authenticated packet.

    Noise XX lets the initiator send DATA right after FINISH, but only this
    proves the responder accepted the session (it may refuse our key and
    stay silent).
    """

    conn_id: int


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """An initiator's handshake ended without a session.

    ``reason`` is ``"timeout"`` or ``"authentication"``.
    """

    conn_id: int
    address: Address
    reason: str


class MessageReceived(NamedTuple):
    """A message was delivered (REALTIME on arrival, RELIABLE in order within its lane).

    A NamedTuple rather than a frozen dataclass like the other events: one is
    built per delivered message, and a tuple costs a sixth of the time.
    """

    conn_id: int
    data: bytes
    intent: Intent
    priority: int
    lane: int = 0
    """The message's lane (docs/protocol.md section 14), 0 unless the sender named one."""


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """An established session ended. ``by_peer`` is True when the peer sent CLOSE."""

    conn_id: int
    reason: CloseReason
    by_peer: bool
    unacked_reliable: int = 0
    pending: tuple[tuple[bytes, int, int], ...] = ()
    """RELIABLE messages not acknowledged, as (data, priority, lane): those in flight in
    rseq order, then each lane's queued ones in the order they would have left."""


@dataclass(frozen=True, slots=True)
class PeerRoamed:
    """An authenticated packet came from a new address; the session now sends there."""

    conn_id: int
    old_address: Address
    new_address: Address


Event = (HandshakeCompleted | HandshakeConfirmed | HandshakeFailed | MessageReceived
         | SessionClosed | PeerRoamed)
