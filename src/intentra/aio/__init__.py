"""The asyncio adapter: one UDP socket driving one sans-I/O Endpoint."""

from intentra.aio.args import parse_address
from intentra.aio.peer import Message, Peer, PeerEvent
from intentra.aio.transport import Transport

__all__ = ["Message", "Peer", "PeerEvent", "Transport", "parse_address"]
