"""The relay loop of a hub (``intentra serve``), as a library helper.

:func:`relay` forwards every message a Transport receives: to every other peer
(state fan-out, the default) or back to its sender (``echo=True``), with its
intent, priority and lane, optionally wrapped in an origin envelope
(:mod:`intentra.envelope`) so receivers know who sent it.
"""

from __future__ import annotations

from dataclasses import dataclass

from intentra.aio.transport import Message, Transport
from intentra.envelope import wrap
from intentra.errors import (
    IntentraError,
    MessageTooLargeError,
    SendQueueFullError,
    TransportClosedError,
)

__all__ = ["RelayStats", "relay"]


@dataclass
class RelayStats:
    """What :func:`relay` could not forward."""

    dropped_queue_full: int = 0
    """Messages a peer's full send queue refused (one slow peer must not stall the others)."""
    dropped_too_large: int = 0
    """Messages too large to forward once wrapped in an envelope (33 bytes more)."""


async def relay(transport: Transport, *, echo: bool = False, envelope: bool = False,
                stats: RelayStats | None = None) -> RelayStats:
    """Forward what ``transport`` receives until it is closed; returns the drop counts.

    Args:
        echo: send each message back to its sender instead of to every other peer.
        envelope: wrap each message in an envelope naming its sender
            (``intentra.envelope.unwrap`` on the receiving side).
        stats: counters to update as it runs (read them while it runs).
    """
    stats = stats if stats is not None else RelayStats()
    while True:
        try:
            msg: Message | None = await transport.receive()
        except TransportClosedError:
            return stats
        while msg is not None:  # drain without a loop turn per message
            data = wrap(msg.peer.public_key, msg.data) if envelope else msg.data
            try:
                if echo:
                    msg.peer.send_nowait(data, msg.intent, msg.priority, lane=msg.lane)
                else:
                    transport.broadcast_nowait(data, msg.intent, msg.priority,
                                               exclude=msg.peer, lane=msg.lane)
            except SendQueueFullError:
                stats.dropped_queue_full += 1
            except MessageTooLargeError:  # the envelope made it too long
                stats.dropped_too_large += 1
            except IntentraError:
                pass  # the sender's session ended meanwhile
            msg = transport.receive_nowait()
