"""Partial and waiting RELIABLE messages against the endpoint-wide credit budget
(docs/protocol.md sections 8, 12 and 14.7; issue 10).

A partial fragmented message, or a whole one waiting for its lane's turn, holds
bytes after its positions were received in order: no position stays open for it.
Those bytes must count in the session's reservation in ``max_reorder_total``
(:class:`~intentra.core.reliable.CreditBudget`), or every hostile session could
hold its whole MAX_REORDER_BUFFER in messages it never finishes and the endpoint
would hold sessions x MAX_REORDER_BUFFER, whatever ``max_reorder_total`` says.
The bound is ``max_reorder_total`` + one MAX_REORDER_BUFFER (the one session that
may finish its partial message, section 12) + each session's floor of 4 datagrams.
"""

from __future__ import annotations

from hostile import SEQ_MASK, Hostile, an_honest_session_delivers

from corelink import Link
from intentra.config import EndpointConfig
from intentra.constants import EXTENDED_BIT, Intent, PacketType
from intentra.core.endpoint import CREDIT_FLOOR_DATAGRAMS, Endpoint
from intentra.core.reliable import serial_gt
from intentra.core.wire import U32, pack_record

ATTACKERS = 40
"""Half hold partial messages, half whole messages waiting for an lseq never sent."""
TOTAL = 1 << 20
"""A small endpoint budget, so that forty sessions exceed it many times over."""
CONFIG = EndpointConfig(max_message_size=100_000, max_reorder_buffer=262_144,
                        max_reorder_total=TOTAL, rate_limit_pps=1e6, rate_limit_burst=1e5)
PIECE = 1100
"""Bytes of data in each hostile record (one credit position each)."""


def held(ep: Endpoint) -> int:
    """RELIABLE bytes the endpoint holds for all its sessions."""
    total = 0
    for s in ep.sessions.values():
        w = s.recv_window
        total += w.buffered_bytes + w.unread_bytes + (w.lanes.held if w.lanes else 0)
    return total


def record(h: Hostile, rseq: int, rec: bytes) -> None:
    """Deliver one extended RELIABLE packet carrying ``rec`` at position ``rseq``."""
    window = h.session.send_window
    if serial_gt(rseq, (window.next_rseq - 1) & SEQ_MASK):
        window.next_rseq = (rseq + 1) & SEQ_MASK  # its own ACKs then acknowledge it
    h.deliver(h.seal(PacketType.DATA, Intent.RELIABLE, 0, h.honest_ack,
                     U32.pack(rseq & SEQ_MASK) + rec, set_bits=EXTENDED_BIT))


def test_sessions_holding_partial_and_waiting_messages_stay_within_the_endpoint_bound() -> None:
    link = Link(seed=101)
    server = link.add("server", CONFIG)
    ep = server.endpoint
    floor = CREDIT_FLOOR_DATAGRAMS * CONFIG.max_datagram
    body = bytes(PIECE)
    total = 90_000  # each partial message: 81 fragments of 1,100 bytes, never the rest
    for i in range(ATTACKERS):
        node = link.add(f"attacker{i}", CONFIG, addr=(f"10.9.{i}.1", 4000))
        cid, vid = link.establish(node, server)
        link.advance(0.02)
        h = Hostile(link, node, cid, server)
        window = ep.sessions[vid].recv_window
        first = r = h.session.send_window.next_rseq
        while True:
            while not serial_gt(r, window.edge):
                k = (r - first) & SEQ_MASK
                if i % 2:
                    # lane 9 waits for lseq 1 for ever: every message is held whole
                    rec = pack_record(True, 9, k + 2, body) + body
                else:
                    # fragments of message after message on lane 3, each missing its end
                    lseq, piece = divmod(k, total // PIECE)
                    rec = pack_record(True, 3, lseq + 1, body, piece * PIECE, total) + body
                record(h, r, rec)
                r = (r + 1) & SEQ_MASK
            edge = window.edge
            link.advance(0.02)  # the server acknowledges: whatever credit it gives now
            if window.edge == edge:
                break
        assert window.reservation() <= CONFIG.max_reorder_buffer
    held_now = held(ep)
    bound = TOTAL + CONFIG.max_reorder_buffer + (ATTACKERS + 1) * floor
    print(f"\n{ATTACKERS} sessions holding partial or waiting messages: {held_now:,} bytes "
          f"(bound {bound:,}; without the budget {ATTACKERS} x {CONFIG.max_reorder_buffer:,})")
    assert held_now > TOTAL // 2, "the attack filled the budget"
    assert held_now <= bound, f"{held_now:,} bytes held, bound {bound:,}"
    assert ep.credit_budget.reserved <= bound
    assert not server.messages, "nothing of the hostile messages was delivered"
    assert ep.stats.strike_events == 0  # within the credit, no rule is broken

    # An honest session opened now still gets credit and delivers, in order.
    an_honest_session_delivers(link, server, CONFIG)
    assert held(ep) <= bound
