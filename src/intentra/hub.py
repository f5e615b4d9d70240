"""The relay loop of a hub (``intentra serve``), as a library helper.

:func:`relay` forwards every message a Transport receives: to every other peer
(state fan-out, the default) or back to its sender (``echo=True``), with its
intent, priority and lane, optionally wrapped in an origin envelope
(:mod:`intentra.envelope`) so receivers know who sent it. It reads with
:meth:`Transport.receive_many`: a batch per wake-up, peers served round-robin
within it, RELIABLE credit given back as each batch is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from intentra.aio.transport import Message, Transport
from intentra.envelope import wrap
from intentra.errors import (
    IntentraError,
    MessageTooLargeError,
    SendQueueFullError,
    TransportClosedError,
)

if TYPE_CHECKING:
    from intentra.bus import Bridge

__all__ = ["RELAY_BATCH", "RelayStats", "relay"]

RELAY_BATCH = 1024
"""Messages :func:`relay` takes per :meth:`Transport.receive_many` call."""


@dataclass
class RelayStats:
    """What :func:`relay` could not forward."""

    dropped_queue_full: int = 0
    """Messages a peer's full send queue refused (one slow peer must not stall the others)."""
    dropped_too_large: int = 0
    """Messages too large to forward once wrapped in an envelope (33 bytes more)."""


async def relay(transport: Transport, *, echo: bool = False, envelope: bool = False,
                stats: RelayStats | None = None, bus: Bridge | None = None) -> RelayStats:
    """Forward what ``transport`` receives until it is closed; returns the drop counts.

    Args:
        echo: send each message back to its sender instead of to every other peer.
        envelope: wrap each message in an envelope naming its sender
            (``intentra.envelope.unwrap`` on the receiving side).
        stats: counters to update as it runs (read them while it runs).
        bus: also hand each message to this started :class:`intentra.bus.Bridge`
            (other hubs' peers get it); the relay waits while the bridge's
            RELIABLE backlog is full, so the peers' credit, not memory, absorbs
            a slow bus.
    """
    stats = stats if stats is not None else RelayStats()
    receive_many = transport.receive_many
    broadcast = transport.broadcast_nowait
    while True:
        try:
            # One await per batch, not per message; peers round-robin within it.
            batch: list[Message] = await receive_many(RELAY_BATCH)
        except TransportClosedError:
            return stats
        for msg in batch:
            peer, message, intent, priority = msg.peer, msg.data, msg.intent, msg.priority
            data = wrap(peer.public_key, message) if envelope else message
            try:
                if echo:
                    peer.send_nowait(data, intent, priority, lane=msg.lane)
                else:
                    broadcast(data, intent, priority, exclude=peer, lane=msg.lane)
            except SendQueueFullError:
                stats.dropped_queue_full += 1
            except MessageTooLargeError:  # the envelope made it too long
                stats.dropped_too_large += 1
            except IntentraError:
                pass  # the sender's session ended meanwhile
            if bus is not None:
                bus.publish(msg)
        if bus is not None and bus.backlogged:
            await bus.wait_for_room()
