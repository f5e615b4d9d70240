"""A rule-breaking client for the adversarial tests: a peer that holds valid keys.

Its endpoint is an ordinary intentra Endpoint on the in-memory link
(:mod:`corelink`) and completes a real Noise handshake. After that the
:class:`Hostile` seals whatever plaintext and header fields it likes with the
session's real send keys and its next packet numbers, so the receiver sees
authentic packets that break the rules of docs/protocol.md sections 4 and 6. Nothing here
goes around the receiver's checks: every datagram goes through
``Endpoint.receive_datagram`` like any other.

Packet numbers come from the hostile session's own counter (``_next_pn``, which
also performs key updates when they are due), so the hostile endpoint's own
traffic (ACKs, keepalives) never reuses one: the packets stay authentic and
fresh, and only their content breaks the rules.
"""

from __future__ import annotations

from typing import Final

from corelink import Link, Node
from intentra.config import EndpointConfig
from intentra.constants import Intent, PacketType
from intentra.core.reliable import serial_gt
from intentra.core.session import Session
from intentra.core.wire import ACK_BODY, U16, U32, pack_header

SEQ_MASK: Final = 0xFFFFFFFF


def frame(*messages: bytes) -> bytes:
    """``len (2) || message`` for each message (docs/protocol.md section 4, DATA plaintext)."""
    return b"".join(U16.pack(len(m)) + m for m in messages)


class Hostile:
    """Seals arbitrary packets with the real keys of ``node``'s session ``conn_id``."""

    def __init__(self, link: Link, node: Node, conn_id: int, target: Node) -> None:
        self.link = link
        self.node = node
        self.conn_id = conn_id
        self.target = target
        self.sealed = 0

    @property
    def session(self) -> Session:
        return self.node.endpoint.sessions[self.conn_id]

    # ------------------------------------------------------------ sealing

    def seal(self, ptype: PacketType, intent: Intent, priority: int, ack: int,
             plaintext: bytes, phase: int | None = None,
             eliciting: int | None = None, set_bits: int = 0) -> bytes:
        """One authentic datagram: header as given, body sealed with the current send key.

        ``phase`` overrides the header's key phase bit (the key stays the current one);
        ``eliciting`` the A bit (default: what :func:`pack_header` makes usual);
        ``set_bits`` is OR-ed into header byte 1 (bit 2, say, which must be zero).
        """
        session = self.session
        keys = session.send_keys
        assert keys is not None, "the hostile session is not established"
        pn = session._next_pn(keys, self.link.now)
        assert pn is not None
        header = pack_header(int(ptype), int(intent), priority,
                             keys.phase if phase is None else phase, len(plaintext),
                             session.remote_id, pn & SEQ_MASK, ack, eliciting)
        if set_bits:
            header = header[:1] + bytes([header[1] | set_bits]) + header[2:]
        self.sealed += 1
        return header + keys.seal(session.remote_id, pn, header, plaintext)

    @property
    def honest_ack(self) -> int:
        """The cumulative ack the hostile endpoint would send itself."""
        return self.session.recv_window.ack

    def data(self, intent: Intent, plaintext: bytes, ack: int | None = None,
             priority: int = 0) -> bytes:
        """A DATA packet with this exact plaintext (framing included, or broken)."""
        return self.seal(PacketType.DATA, intent, priority,
                         self.honest_ack if ack is None else ack, plaintext)

    def reliable(self, rseq: int, *messages: bytes, ack: int | None = None,
                 track: bool = True) -> bytes:
        """A well-framed RELIABLE DATA packet starting at ``rseq``.

        With ``track`` the hostile session's own send window learns that these
        rseqs were sent, so the target's acknowledgements of them are not
        violations in the hostile endpoint's eyes (it must not strike back).
        """
        if track and messages:
            window = self.session.send_window
            last = (rseq + len(messages) - 1) & SEQ_MASK
            if serial_gt(last, (window.next_rseq - 1) & SEQ_MASK):
                window.next_rseq = (last + 1) & SEQ_MASK
        return self.data(Intent.RELIABLE, U32.pack(rseq & SEQ_MASK) + frame(*messages), ack)

    def realtime(self, *messages: bytes, ack: int | None = None) -> bytes:
        """A well-framed REALTIME DATA packet."""
        return self.data(Intent.REALTIME, frame(*messages), ack)

    def ack(self, ack: int, bitmap: int = 0, *, largest_pn: int = 0, pn_bitmap: int = 0,
            ack_delay: int = 0, credit: int = 0, eliciting: int = 0) -> bytes:
        """An ACK packet: cumulative ack and rseq bitmap, pn acknowledgements, credit.

        The defaults acknowledge no pn and carry credit 0 (an edge of ``ack``, which
        never lowers the target's limit), so only the fields a test sets say anything.
        """
        body = ACK_BODY.pack(bitmap, largest_pn, pn_bitmap, ack_delay, credit)
        return self.seal(PacketType.ACK, Intent.RELIABLE, 0, ack & SEQ_MASK, body,
                         eliciting=eliciting)

    def close(self, reason: int) -> bytes:
        """A CLOSE packet with this reason byte (valid or not)."""
        return self.seal(PacketType.CLOSE, Intent.RELIABLE, 0, 0, bytes((reason,)))

    # ------------------------------------------------------------ sending

    def inject(self, datagram: bytes, delay: float | None = None) -> None:
        """Put the datagram on the link towards the target (arrives after the latency)."""
        self.link.inject(datagram, self.node.addr, self.target, delay)

    def deliver(self, datagram: bytes) -> None:
        """Hand the datagram to the target now (at ``link.now``) and drain it."""
        self.link.deliver(datagram, self.node.addr, self.target)


def an_honest_session_delivers(link: Link, server: Node, config: EndpointConfig | None = None,
                               count: int = 200) -> None:
    """Open an honest session to ``server`` now and check it gets credit and delivers
    ``count`` RELIABLE messages in order (the endpoint-wide budget's promise while
    hostile sessions hold the rest)."""
    from intentra.core.endpoint import CREDIT_FLOOR_DATAGRAMS  # noqa: PLC0415

    honest = link.add("honest", config, addr=("192.0.2.7", 5000))
    cid, _ = link.establish(honest, server)
    link.advance(0.02)
    assert honest.endpoint.sessions[cid].send_window.credit >= CREDIT_FLOOR_DATAGRAMS
    sent = 0
    while sent < count:
        for _ in range(min(honest.endpoint.reliable_capacity(cid), count - sent)):
            link.send(honest, cid, b"honest %d" % sent)
            sent += 1
        link.advance(0.01)
    link.advance(1.0)
    got = [p for p in server.payloads(Intent.RELIABLE) if p.startswith(b"honest")]
    assert got == [b"honest %d" % i for i in range(count)]
