"""The asyncio adapter: one UDP socket driving one sans-I/O Endpoint."""

from intentra.aio.transport import Message, Peer, PeerEvent, Transport, parse_address

__all__ = ["Message", "Peer", "PeerEvent", "Transport", "parse_address"]
