"""Hostile fragments and lanes (docs/protocol.md sections 14.4, 14.5 and 14.7).

An authenticated peer sends extended DATA that breaks the rules: fragments declaring
more than max_message_size, reaching beyond their declared size, overlapping or
disagreeing with what is held, unknown flags, broken framing, records for messages
already delivered; and floods of partial messages that never complete. Each rule
broken is a strike and changes nothing of the record; memory stays within the
configured bounds, charged to the session that sent it. X = 1 outside DATA, or in a
too short DATA packet, is malformed before any cryptography.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hostile import SEQ_MASK, Hostile

from corelink import Link, Node
from intentra.config import EndpointConfig
from intentra.constants import EXTENDED_BIT, CloseReason, Intent, PacketType
from intentra.core.lanes import PARTIAL_COST, PIECE_COST
from intentra.core.reliable import serial_gt
from intentra.core.session import Session
from intentra.core.wire import REC_RELIABLE, U32, pack_record

RELIABLE, REALTIME = Intent.RELIABLE, Intent.REALTIME
MAX = 100_000
CONFIG = EndpointConfig(max_message_size=MAX, max_reorder_buffer=262_144,
                        rate_limit_pps=1e6, rate_limit_burst=1e5)


@dataclass
class Pair:
    link: Link
    victim: Node
    hostile: Hostile
    vid: int

    @property
    def vs(self) -> Session:
        return self.victim.endpoint.sessions[self.vid]

    @property
    def strikes(self) -> int:
        return self.victim.endpoint.stats.strike_events

    @property
    def held(self) -> int:
        lanes = self.vs.recv_window.lanes
        return 0 if lanes is None else lanes.held

    def first_rseq(self) -> int:
        return self.hostile.session.send_window.next_rseq

    def reliable(self, rseq: int, *records: bytes, track: bool = True) -> None:
        """An extended RELIABLE packet of these records from position ``rseq``, delivered."""
        h = self.hostile
        if track:
            window = h.session.send_window
            last = (rseq + len(records) - 1) & SEQ_MASK
            if serial_gt(last, (window.next_rseq - 1) & SEQ_MASK):
                window.next_rseq = (last + 1) & SEQ_MASK
        h.deliver(h.seal(PacketType.DATA, RELIABLE, 0, h.honest_ack,
                         U32.pack(rseq & SEQ_MASK) + b"".join(records), set_bits=EXTENDED_BIT))

    def realtime(self, *records: bytes) -> None:
        h = self.hostile
        h.deliver(h.seal(PacketType.DATA, REALTIME, 0, h.honest_ack, b"".join(records),
                         set_bits=EXTENDED_BIT))

    def delivered(self) -> list[tuple[int, bytes]]:
        return [(m.lane, m.data) for m in self.victim.messages]


def pair(config: EndpointConfig = CONFIG, seed: int = 21) -> Pair:
    link = Link(seed)
    victim = link.add("victim", config)
    bad = link.add("hostile", config)
    cid, vid = link.establish(bad, victim)
    link.advance(0.1)
    return Pair(link, victim, Hostile(link, bad, cid, victim), vid)


def frag(reliable: bool, lane: int, ident: int, offset: int, total: int, data: bytes) -> bytes:
    return pack_record(reliable, lane, ident, data, offset, total) + data


def whole(lane: int, lseq: int, data: bytes) -> bytes:
    return pack_record(True, lane, lseq, data) + data


# ------------------------------------------------------------------ one rule each

@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "realtime"])
@pytest.mark.parametrize("case", ["above-max", "beyond-total", "flag-bits", "len-0",
                                  "truncated", "left-over"])
def test_broken_framing_is_a_strike_and_nothing_is_applied(reliable: bool, case: str) -> None:
    """Section 14.5 step 1: the whole packet is a violation, before any record is applied."""
    p = pair()
    ok = frag(reliable, 1, 1, 0, 50, b"first fragment")  # would be held, if applied
    bad = {
        "above-max": frag(reliable, 1, 2, 0, MAX + 1, b"x" * 10),
        "beyond-total": frag(reliable, 1, 2, 995, 1000, b"x" * 10),
        "flag-bits": bytes([1, 0x03]) + frag(reliable, 1, 2, 0, 20, b"x" * 10)[2:],
        "len-0": (pack_record(reliable, 1, 2, b"", 0, 20)),
        "truncated": frag(reliable, 1, 2, 0, 20, b"x" * 10)[:-3],
        "left-over": frag(reliable, 1, 2, 0, 20, b"x" * 10) + b"\x01",
    }[case]
    ack_before = p.vs.recv_window.ack
    if reliable:
        p.reliable(p.first_rseq(), ok, bad)
    else:
        p.realtime(ok, bad)
    assert p.strikes == 1
    assert p.held == 0 and p.vs.rt_reassembly.used == 0
    assert p.vs.recv_window.ack == ack_before and not p.vs.recv_window.buffer
    assert p.delivered() == []


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "realtime"])
@pytest.mark.parametrize("case", ["overlap-after", "overlap-before", "same-offset",
                                  "other-total", "other-lane"])
def test_fragments_inconsistent_with_what_is_held_are_strikes(reliable: bool,
                                                              case: str) -> None:
    """Section 14.5 steps 3.2 and 5: the bad record and those after it are ignored, the
    records before it stand."""
    p = pair()
    lane = 2
    first = frag(reliable, lane, 1, 100, 1000, bytes(100))       # bytes 100..199 held
    bad = {
        "overlap-after": frag(reliable, lane, 1, 150, 1000, bytes(100)),
        "overlap-before": frag(reliable, lane, 1, 50, 1000, bytes(51)),
        "same-offset": frag(reliable, lane, 1, 100, 1000, bytes(1)),
        "other-total": frag(reliable, lane, 1, 300, 999, bytes(10)),
        "other-lane": frag(reliable, lane + 1, 1, 300, 1000, bytes(10)),
    }[case]
    after = frag(reliable, lane, 1, 0, 1000, bytes(100))        # fine on its own
    if reliable:
        r = p.first_rseq()
        p.reliable(r, first)
        if case == "other-lane":
            # another lane is another message: not a conflict for RELIABLE (lane, lseq)
            p.reliable(r + 1, bad, after)
            assert p.strikes == 0
            return
        p.reliable(r + 1, bad, after)
        assert p.vs.recv_window.ack == r, "the bad record's position is not received"
    else:
        p.realtime(first)
        p.realtime(bad, after)
    assert p.strikes == 1
    assert p.held + p.vs.rt_reassembly.used <= 100 + PARTIAL_COST + PIECE_COST
    assert p.delivered() == []
    assert p.vs.established


def test_overlapping_fragments_in_one_packet_are_a_strike() -> None:
    p = pair()
    r = p.first_rseq()
    p.reliable(r, frag(True, 1, 1, 0, 300, bytes(200)), frag(True, 1, 1, 199, 300, bytes(101)))
    assert p.strikes == 1
    assert p.held == 200 and p.vs.recv_window.ack == r


def test_a_whole_record_for_a_message_with_fragments_held_is_a_strike() -> None:
    p = pair()
    r = p.first_rseq()
    p.reliable(r, frag(True, 1, 1, 0, 300, bytes(200)))
    p.reliable(r + 1, whole(1, 1, b"imposter"))
    assert p.strikes == 1 and p.delivered() == []


def test_a_fragment_for_a_message_held_whole_is_a_strike() -> None:
    p = pair()
    r = p.first_rseq()
    p.reliable(r, whole(1, 2, b"waits for lseq 1"))
    p.reliable(r + 1, frag(True, 1, 2, 0, 300, bytes(20)))
    assert p.strikes == 1 and p.delivered() == []


def test_a_record_for_a_message_already_delivered_is_a_strike() -> None:
    p = pair()
    r = p.first_rseq()
    p.reliable(r, whole(3, 1, b"one"))
    assert p.delivered() == [(3, b"one")]
    p.reliable(r + 1, whole(3, 1, b"one again"))
    assert p.strikes == 1
    assert p.delivered() == [(3, b"one")]
    # the same position again is a duplicate, not a violation
    p.reliable(r, whole(3, 1, b"one"))
    assert p.strikes == 1


def test_ten_violations_close_the_session() -> None:
    p = pair()
    for i in range(10):
        p.realtime(frag(False, 1, 100 + i, 5, 4, b"x"))  # beyond its declared size
    assert p.strikes == 10
    assert p.victim.closed(p.vid) is not None
    assert p.victim.closed(p.vid).reason is CloseReason.PROTOCOL_VIOLATION  # type: ignore[union-attr]


# ------------------------------------------------------------------ header rules (14.4)

@pytest.mark.parametrize("ptype", [PacketType.ACK, PacketType.CLOSE])
def test_x_outside_data_is_malformed(ptype: PacketType) -> None:
    p = pair()
    h = p.hostile
    body = bytes(28) if ptype == PacketType.ACK else bytes([0])
    before = p.victim.endpoint.stats.packets_dropped_malformed
    h.deliver(h.seal(ptype, RELIABLE, 0, 0, body, set_bits=EXTENDED_BIT))
    assert p.victim.endpoint.stats.packets_dropped_malformed == before + 1
    assert p.strikes == 0 and p.vs.established


@pytest.mark.parametrize(("intent", "size"), [(RELIABLE, 12), (REALTIME, 4)])
def test_an_extended_data_packet_below_the_smallest_record_is_malformed(
        intent: Intent, size: int) -> None:
    p = pair()
    h = p.hostile
    before = p.victim.endpoint.stats.packets_dropped_malformed
    h.deliver(h.seal(PacketType.DATA, intent, 0, h.honest_ack, bytes(size),
                     set_bits=EXTENDED_BIT))
    assert p.victim.endpoint.stats.packets_dropped_malformed == before + 1
    assert p.strikes == 0


# ------------------------------------------------------------------ memory bounds (14.7)

def test_thousands_of_partial_realtime_messages_stay_within_the_session_bound() -> None:
    limit = 64 * 1024
    config = EndpointConfig(max_message_size=MAX, max_reorder_buffer=262_144,
                            max_realtime_reassembly=limit, rate_limit_pps=1e6,
                            rate_limit_burst=1e5)
    p = pair(config)
    reassembly = p.vs.rt_reassembly
    peak = 0
    for batch in range(300):
        # 10 first fragments of 10 new messages per packet, each declaring 50 kB
        p.realtime(*(frag(False, 1, batch * 10 + i + 1, 0, 50_000, bytes(50))
                     for i in range(10)))
        peak = max(peak, reassembly.used)
    assert peak <= limit
    assert p.victim.endpoint.reassembly_budget.used == reassembly.used
    assert p.victim.endpoint.stats.messages_dropped_reassembly > 2_000
    assert p.strikes == 0, "within the rules: discarded, not struck"
    # gaps never filled: gone at the REALTIME deadline, and counted
    dropped = p.victim.endpoint.stats.messages_dropped_reassembly
    held = len(reassembly.partials)
    p.link.advance(config.realtime_deadline + 0.05)
    assert reassembly.partials == {} and reassembly.used == 0
    assert p.victim.endpoint.reassembly_budget.used == 0
    assert p.victim.endpoint.stats.messages_dropped_reassembly == dropped + held


def test_a_session_that_ends_gives_its_reassembly_bytes_back_to_the_endpoint() -> None:
    p = pair()
    p.realtime(*(frag(False, 1, i + 1, 0, 5_000, bytes(50)) for i in range(20)))
    budget = p.victim.endpoint.reassembly_budget
    assert budget.used == p.vs.rt_reassembly.used > 20 * 50
    h = p.hostile
    h.deliver(h.close(int(CloseReason.NORMAL)))
    assert p.vid not in p.victim.endpoint.sessions
    assert budget.used == 0


def test_a_message_larger_than_the_reassembly_bound_is_discarded_not_held() -> None:
    config = EndpointConfig(max_message_size=MAX, max_reorder_buffer=262_144,
                            max_realtime_reassembly=10_000)
    p = pair(config)
    p.realtime(frag(False, 0, 1, 0, 20_000, bytes(1000)))
    assert p.vs.rt_reassembly.used == 0 and p.strikes == 0
    assert p.victim.endpoint.stats.messages_dropped_reassembly == 1


def test_sessions_flooding_partials_never_evict_another_sessions_message() -> None:
    """The endpoint bound is charged to the session that sends: when it is full, a
    session makes room only from its own partial messages (section 14.7)."""
    config = EndpointConfig(max_message_size=MAX, max_reorder_buffer=262_144,
                            max_realtime_reassembly=40_000,
                            max_realtime_reassembly_total=100_000,
                            rate_limit_pps=1e6, rate_limit_burst=1e5)
    link = Link(33)
    victim = link.add("victim", config)
    honest = link.add("honest", config)
    hid, _ = link.establish(honest, victim)
    attackers = []
    for i in range(5):
        node = link.add(f"bad{i}", config, addr=(f"10.9.0.{i + 1}", 4000))
        cid, _ = link.establish(node, victim)
        attackers.append(Hostile(link, node, cid, victim))
    link.advance(0.1)
    budget = victim.endpoint.reassembly_budget
    # the honest peer's 30 kB REALTIME message: its first fragments are held ...
    big = bytes(range(250)) * 120
    ep = honest.endpoint
    ep.send(hid, big, REALTIME, 0, link.now)
    for d, _ in ep.datagrams_to_send(link.now)[:10]:
        victim.endpoint.receive_datagram(d, honest.addr, link.now)
    honest_session = victim.endpoint.sessions[link.responder_id(victim, honest) or 0]
    held_honest = honest_session.rt_reassembly.used
    assert held_honest > 0
    # ... while five attackers fill the endpoint's bound with partial messages
    for n, h in enumerate(attackers):
        for m in range(200):
            h.deliver(h.seal(PacketType.DATA, REALTIME, 0, h.honest_ack,
                             frag(False, 1, n * 1000 + m + 1, 0, 30_000, bytes(400)),
                             set_bits=EXTENDED_BIT))
            assert budget.used <= config.max_realtime_reassembly_total
            assert h.target.endpoint.sessions  # the victim is alive
    assert honest_session.rt_reassembly.used == held_honest, "nothing of it was evicted"
    for s in victim.endpoint.sessions.values():
        assert s.rt_reassembly.used <= config.max_realtime_reassembly
    assert victim.endpoint.stats.strike_events == 0


def test_partial_reliable_messages_are_bounded_by_the_credit() -> None:
    """RELIABLE partial messages take credit positions (section 14.7): a peer starting
    message after message, never finishing one, is held to MAX_REORDER_BUFFER, and a
    position beyond the credit edge is a violation as ever."""
    p = pair()
    window = p.vs.recv_window
    first = r = p.first_rseq()
    # first fragments of new messages on lane 1, one position each, up to the edge
    for _ in range(400):
        if serial_gt(r, window.edge):
            break
        p.reliable(r, frag(True, 1, r - first + 1, 0, 90_000, bytes(1100)))
        r = (r + 1) & SEQ_MASK
        assert window.reservation() <= CONFIG.max_reorder_buffer
        p.link.advance(0.001)  # the victim acknowledges; its edge may move (it cannot here)
    assert p.strikes == 0
    assert p.held <= CONFIG.max_reorder_buffer
    assert p.held == (r - first) * 1100
    p.reliable(r, frag(True, 1, r - first + 1, 0, 90_000, bytes(1100)))
    assert p.strikes == 1, "beyond the edge"
    assert p.held == (r - first) * 1100


def test_a_lane_waiting_for_an_lseq_never_sent_holds_only_its_credit() -> None:
    """Whole messages waiting for their lane's turn (lseq 1 never comes) count against
    the credit like partial ones."""
    p = pair()
    window = p.vs.recv_window
    first = r = p.first_rseq()
    while not serial_gt(r, window.edge):
        p.reliable(r, whole(9, r - first + 2, bytes(REC_RELIABLE.size + 1000)))
        r = (r + 1) & SEQ_MASK
    assert p.delivered() == []
    assert p.held <= CONFIG.max_reorder_buffer
    assert window.reservation() <= CONFIG.max_reorder_buffer
    assert p.strikes == 0
