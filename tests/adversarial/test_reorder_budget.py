"""An endpoint-wide bound on what sessions hold for reordering (issue 9 item 5).

Without it, a peer that makes keys could open sessions and park up to
MAX_REORDER_BUFFER (256 KiB) behind a hole in each: 2.4 GiB at 10,000 sessions.
The bound (``EndpointConfig.max_reorder_total``, 64 MiB by default) is kept through
the credit (docs/protocol.md section 8): a session advertises only what the
endpoint has left, and each keeps a floor of 4 datagrams so a session opened
while others hold everything still gets credit and delivers. A hole held open
MAX_RETRANSMISSIONS x MAX_RTO closes its session, which returns its part.
"""

from __future__ import annotations

from hostile import Hostile, an_honest_session_delivers

from corelink import Link
from intentra.config import EndpointConfig
from intentra.constants import CloseReason
from intentra.core.endpoint import CREDIT_FLOOR_DATAGRAMS

ATTACKERS = 1000
TOTAL = 4 * 1024 * 1024
"""A small budget, so that a thousand sessions exhaust it in a fast test."""


def test_a_thousand_parking_sessions_stay_within_the_bound_and_an_honest_one_delivers() -> None:
    link = Link(seed=91)
    config = EndpointConfig(max_reorder_total=TOTAL)
    server = link.add("server", config)
    ep = server.endpoint
    floor = CREDIT_FLOOR_DATAGRAMS * config.max_datagram
    parked = 0
    for i in range(ATTACKERS):
        node = link.add(f"attacker{i}", addr=(f"10.{1 + i // 250}.{i % 250}.1", 4000))
        cid, _ = link.establish(node, server)
        link.advance(0.02)  # the server's first ACK: the credit it gives this session
        session = node.endpoint.sessions[cid]
        credit = session.send_window.credit
        assert credit >= CREDIT_FLOOR_DATAGRAMS, "every session gets credit"
        # Park a full message in every position but the first: a hole at next.
        hostile = Hostile(link, node, cid, server)
        body = bytes(config.max_datagram_message)
        for rseq in range(2, credit + 1):
            hostile.deliver(hostile.reliable(rseq, body))
            parked += 1
    held = sum(s.recv_window.buffered_bytes for s in ep.sessions.values())
    bound = TOTAL + ATTACKERS * floor
    print(f"\n{ATTACKERS} parking sessions: {parked:,} messages parked, {held:,} bytes held "
          f"(bound {bound:,}; without it {ATTACKERS} x {config.max_reorder_buffer:,})")
    assert parked > 0
    assert held <= bound, f"{held:,} bytes held, bound {bound:,}"
    assert ep.credit_budget.reserved <= bound
    assert ep.stats.strike_events == 0  # parking within the credit breaks no rule

    # An honest session opened now still gets credit and delivers, in order.
    an_honest_session_delivers(link, server, None)

    # The parked holes close their sessions after MAX_RETRANSMISSIONS x MAX_RTO, and
    # their part of the budget returns.
    link.advance(config.max_retransmissions * config.max_rto + 1.0)
    closed = [e for e in server.events if getattr(e, "reason", None)
              is CloseReason.PROTOCOL_VIOLATION]
    assert len(closed) >= 1
    assert ep.credit_budget.reserved <= TOTAL
