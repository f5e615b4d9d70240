"""Version 2's acknowledgements and credit under attack (docs/protocol.md sections 3, 4, 6, 8).

Version 2 gave the ACK packet-number acknowledgements (``largest_pn``, ``pn_bitmap``,
``ack_delay``) and the receiver's ``credit``, and made the receiver's credit edge a
hard bound. Each of these is something a peer can lie about. The attacker here is
either off the path of the keys (it forges, and must change nothing), or a peer that
completed a real handshake (:class:`hostile.Hostile`: authentic packets that break
the rules, and must each cost it a strike and change nothing else):

- malformed ACKs and A-bit misuse sealed with the real key: malformed, before any
  cryptography, no strike;
- forged credit: an unauthenticated ACK that would raise the edge changes nothing; an
  authenticated ACK with a lower edge does not shrink the sender's limit;
- ACKs naming pns never sent (beyond the last, below pn 1, or a pn the sender
  skipped on purpose: an optimistic ACK): a strike, nothing acknowledged;
- an rseq beyond the advertised edge: a strike, nothing held or delivered;
- a reliable gap held open MAX_RETRANSMISSIONS x MAX_RTO: the session closes with
  PROTOCOL_VIOLATION;
- a peer that never reads (``release_on_take=False``): the receiver never holds more
  than max_reorder_buffer, and the sender's messages wait without closing anything.

Everything runs through the real sans-I/O Endpoint on the link's fake clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hostile import Hostile

from corelink import DropFirst, Link, Node, is_type
from intentra.config import EndpointConfig
from intentra.constants import HEADER_LEN, TAG_LEN, CloseReason, Intent, PacketType
from intentra.core.session import Session

RELIABLE, REALTIME = Intent.RELIABLE, Intent.REALTIME
DATA = is_type(PacketType.DATA)
ACK = is_type(PacketType.ACK)
MASK = 0xFFFFFFFF


@dataclass
class Pair:
    link: Link
    victim: Node
    hostile: Hostile
    bid: int
    """The victim's conn_id of the hostile session."""

    @property
    def vs(self) -> Session:
        return self.victim.endpoint.sessions[self.bid]

    @property
    def hs(self) -> Session:
        return self.hostile.session

    def strikes(self) -> int:
        return self.victim.endpoint.stats.strike_events


def pair(seed: int = 5, config: EndpointConfig | None = None,
         hostile_reads: bool = True) -> Pair:
    """A victim (responder) and a key-holding attacker (initiator), established, quiet.

    ``hostile_reads=False``: the attacker's application never reads, so the credit it
    advertises to the victim stays where it is (its edge neither grows nor shrinks).
    """
    link = Link(seed)
    if config is None:
        # version 2's per-session buffer, so a few hundred messages use it up
        config = EndpointConfig(max_reorder_buffer=262_144, max_message_size=65_536)
    victim = link.add("victim", config)
    bad = link.add("hostile", config, release_on_take=hostile_reads)
    cid_h, bid = link.establish(bad, victim)
    link.advance(0.1)
    return Pair(link, victim, Hostile(link, bad, cid_h, victim), bid)


def victim_state(s: Session) -> tuple[object, ...]:
    """What an attacker's ACK must not move: acknowledgement, credit and recovery state."""
    r = s.recovery
    return (s.send_window.acked, s.send_window.edge, sorted(s.send_window.outstanding),
            s.send_window.next_rseq, sorted(r.sent), r.in_flight, r.largest_acked,
            s.rtt.srtt, s.cc.cwnd, s.state)


# ------------------------------------------------------------------ malformed ACKs


MALFORMED: dict[str, Callable[[Hostile], bytes]] = {
    # docs/protocol.md 3: ACK payload_len == 28 (8 was version 1's)
    "ack-v1-size-8": lambda h: h.seal(PacketType.ACK, RELIABLE, 0, 0, bytes(8)),
    "ack-27": lambda h: h.seal(PacketType.ACK, RELIABLE, 0, 0, bytes(27)),
    "ack-29": lambda h: h.seal(PacketType.ACK, RELIABLE, 0, 0, bytes(29)),
    # bit 2 of byte 1 is zero, A or not
    "ack-bit2": lambda h: h.seal(PacketType.ACK, RELIABLE, 0, 0, bytes(28), set_bits=0x04),
    "ack-eliciting-bit2": lambda h: h.seal(PacketType.ACK, RELIABLE, 0, 0, bytes(28),
                                           eliciting=1, set_bits=0x04),
    "realtime-data-bit2": lambda h: h.seal(PacketType.DATA, REALTIME, 0, 0, b"\x00\x01x",
                                           set_bits=0x04),
    # CLOSE has A = 0; RELIABLE DATA has A = 1
    "close-ack-eliciting": lambda h: h.seal(PacketType.CLOSE, RELIABLE, 0, 0, b"\x00",
                                            eliciting=1),
    "reliable-data-not-ack-eliciting": lambda h: h.seal(
        PacketType.DATA, RELIABLE, 0, 0, b"\x00\x00\x00\x01\x00\x01x", eliciting=0),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_ack_or_a_bit_from_a_key_holder_is_dropped_before_crypto(kind: str) -> None:
    """Section 3 runs before any cryptography: a genuine key does not make such a
    packet a violation, and it moves nothing (no strike, no pn, no close)."""
    p = pair()
    stats = p.victim.endpoint.stats
    malformed, strikes = stats.packets_dropped_malformed, p.strikes()
    highest, rx = p.vs.replay.highest, p.vs.rx_largest
    before = victim_state(p.vs)
    replies = len(p.link.sent_by(p.victim))
    p.hostile.deliver(MALFORMED[kind](p.hostile))
    assert stats.packets_dropped_malformed == malformed + 1
    assert p.strikes() == strikes
    assert (p.vs.replay.highest, p.vs.rx_largest) == (highest, rx)
    assert victim_state(p.vs) == before
    assert len(p.link.sent_by(p.victim)) == replies  # not answered
    assert p.victim.payloads(conn_id=p.bid) == []


# ------------------------------------------------------------------ forged credit


def _blocked_on_credit(p: Pair, n: int = 300) -> int:
    """The victim queues more RELIABLE messages than the attacker (who never reads)
    will ever give credit for; returns the edge at which the victim stops.

    Messages of 1100 bytes: what the attacker holds unread then uses up its
    max_reorder_buffer (about 237 of them), and its edge stops moving.
    """
    assert p.vs.send_window.edge > 0, "the attacker's first ACK gave credit"
    first = p.vs.send_window.next_rseq
    for i in range(n):
        assert p.link.send(p.victim, p.bid, b"%04d" % i + bytes(1096))
    p.link.advance(2.0)
    edge = p.vs.send_window.edge
    sent = (edge - first + 1) & MASK
    assert 0 < sent < n
    assert (p.vs.send_window.next_rseq - 1) & MASK == edge
    assert p.vs.queued_reliable == n - sent
    assert p.vs.send_window.in_flight == 0
    return edge


def _credit_forgery(genuine: bytes) -> bytes:
    """The attacker's genuine ACK with ``credit`` raised to 0xFFFF by flipping the
    ciphertext where it lies (AES-GCM is a stream cipher: without the tag, this
    would work)."""
    out = bytearray(genuine)
    at = HEADER_LEN + 26
    out[at] ^= 0xFF
    out[at + 1] ^= 0xFF
    return bytes(out)


def test_an_unauthenticated_ack_with_a_huge_credit_changes_nothing() -> None:
    """An on-path attacker intercepts the attacker-peer's next genuine ACK and flips
    its credit to 0xFFFF; an off-path one builds an ACK on a fresh pn from scratch;
    either replays a genuine ACK with its credit flipped. None authenticates (or is
    new), so the victim's limit stays where the real credit put it."""
    p = pair(hostile_reads=False)
    edge = _blocked_on_credit(p)
    intercept = DropFirst(ACK)
    p.link.path(p.hostile.node, p.victim).drop = intercept
    p.link.advance(2.0)  # the victim probes for credit; the answer is intercepted
    [withheld] = intercept.dropped
    seen = p.link.sent_by(p.hostile.node, ACK)[-2].data  # one the victim got
    seq = int.from_bytes(withheld.data[8:12], "big")
    stats = p.victim.endpoint.stats
    before, sent = victim_state(p.vs), len(p.link.sent_by(p.victim, DATA))
    crypto, replay = stats.packets_dropped_crypto, stats.replay_rejections
    forged = [
        _credit_forgery(withheld.data),                               # crypto
        withheld.data[:8] + (seq + 100).to_bytes(4, "big") + withheld.data[12:16]
        + bytes(range(28 + TAG_LEN)),                                 # crypto
        _credit_forgery(seen),                                        # replay
    ]
    for datagram in forged:
        p.link.inject(datagram, p.hostile.node.addr, p.victim)  # even from its address
    p.link.advance(0.5)
    assert stats.packets_dropped_crypto == crypto + 2
    assert stats.replay_rejections == replay + 1
    assert p.vs.send_window.edge == edge
    assert victim_state(p.vs)[:4] == before[:4]  # (its probes' answers may move RTT)
    assert (p.vs.send_window.next_rseq - 1) & MASK == edge, "sent beyond the real credit"
    assert len(p.link.sent_by(p.victim, DATA)) == sent
    assert p.strikes() == 0


@pytest.mark.parametrize("credit", [0, 1, "edge-1"])
def test_an_authenticated_ack_with_a_lower_edge_does_not_shrink_the_limit(
        credit: int | str) -> None:
    """The limit is the highest edge of any ACK (docs/protocol.md 6): a later ACK
    that offers less takes nothing back, whatever its ack, and is no violation
    (reordering makes such ACKs honest)."""
    p = pair(hostile_reads=False)
    edge = p.vs.send_window.edge
    acked = p.vs.send_window.acked
    value = edge - acked - 1 if credit == "edge-1" else int(credit)
    p.hostile.deliver(p.hostile.ack(acked, credit=value))
    assert p.vs.send_window.edge == edge
    assert p.strikes() == 0
    # The victim still sends up to the edge it was given, and not one beyond.
    edge = _blocked_on_credit(p)
    p.hostile.deliver(p.hostile.ack(p.vs.send_window.acked, credit=0))
    p.link.advance(0.5)
    assert p.vs.send_window.edge == edge
    assert (p.vs.send_window.next_rseq - 1) & MASK == edge
    assert p.strikes() == 0


def test_credit_is_taken_from_one_ack_not_mixed_across_acks() -> None:
    """One ACK's (ack, credit) pair gives one edge; a later ACK's higher ack with an
    earlier ACK's credit is not an edge anyone advertised."""
    p = pair(hostile_reads=False)
    _blocked_on_credit(p)
    acked, edge = p.vs.send_window.acked, p.vs.send_window.edge
    assert acked == edge  # the attacker acknowledged everything it was sent
    p.hostile.deliver(p.hostile.ack(acked, credit=0))
    assert p.vs.send_window.edge == edge
    p.hostile.deliver(p.hostile.ack(acked, credit=3))  # a genuine raise by 3
    p.link.advance(0.5)
    assert p.vs.send_window.edge == edge + 3
    assert (p.vs.send_window.next_rseq - 1) & MASK == edge + 3
    assert p.strikes() == 0


# ------------------------------------------------------------------ pns never sent


def _send_some(p: Pair, n: int) -> None:
    for i in range(n):
        p.link.send(p.victim, p.bid, b"rt%d" % i, REALTIME)
        p.link.advance(0.002)
    p.link.advance(0.2)


NEVER_SENT: dict[str, Callable[[Session], tuple[int, int]]] = {
    "largest-is-the-next-pn": lambda s: (s.pn_next, 0),
    "largest-far-beyond": lambda s: (s.pn_next + 10**6, 0),
    "largest-2-to-the-40": lambda s: (1 << 40, 0),
    "bitmap-names-pn-0": lambda s: (s.pn_next - 1, 1 << (s.pn_next - 2)),
    "bitmap-bit-63-below-pn-1": lambda s: (s.pn_next - 1, 1 << 63),
    "bitmap-without-largest": lambda s: (0, 1),
}


@pytest.mark.parametrize("kind", list(NEVER_SENT))
def test_an_ack_naming_pns_never_sent_is_a_strike_and_acknowledges_nothing(kind: str) -> None:
    p = pair()
    _send_some(p, 10)
    for _ in range(3):  # the first and repeated ones: one strike each
        largest, bitmap = NEVER_SENT[kind](p.vs)
        before, strikes = victim_state(p.vs), p.strikes()
        # (with a credit that would raise the edge: a refused ACK gives none)
        p.hostile.deliver(p.hostile.ack(p.hs.recv_window.ack, largest_pn=largest,
                                        pn_bitmap=bitmap, credit=0xFFFF))
        assert p.strikes() == strikes + 1
        assert victim_state(p.vs) == before
    assert p.victim.established(p.bid)


def _until_a_pn_is_skipped(p: Pair) -> int:
    """The victim sends until it has skipped a pn, and sent the one after it."""
    recovery = p.vs.recovery
    for i in range(2000):
        p.link.send(p.victim, p.bid, b"s%d" % i, REALTIME)
        p.link.advance(0.001)
        if recovery.skipped and p.vs.pn_next > recovery.skipped[-1] + 2:
            break
    p.link.advance(0.2)
    [skipped] = recovery.skipped
    assert 256 < skipped < 2 * 512, "one pn in every 256 to 511 is skipped"
    return skipped


@pytest.mark.parametrize("how", ["as-largest", "in-the-bitmap"])
def test_an_optimistic_ack_of_a_skipped_pn_is_a_strike(how: str) -> None:
    """The victim skipped a pn on purpose: only a peer acknowledging what it did not
    receive (to make the victim send faster) can name it (docs/protocol.md 4)."""
    p = pair()
    skipped = _until_a_pn_is_skipped(p)
    ack = p.hs.recv_window.ack
    strikes = p.strikes()
    # Control: the honest ACK around it is fine.
    p.hostile.deliver(p.hostile.ack(ack, largest_pn=skipped + 1, pn_bitmap=0b10))
    assert p.strikes() == strikes
    before = victim_state(p.vs)
    if how == "as-largest":
        lie = p.hostile.ack(ack, largest_pn=skipped, credit=0xFFFF)
    else:
        lie = p.hostile.ack(ack, largest_pn=skipped + 1, pn_bitmap=0b11, credit=0xFFFF)
    p.hostile.deliver(lie)
    assert p.strikes() == strikes + 1
    assert victim_state(p.vs) == before
    assert p.victim.established(p.bid)


# ------------------------------------------------------------------ the receiver's edge


def test_rseq_beyond_the_advertised_edge_is_a_strike_and_never_held() -> None:
    p = pair()
    rw = p.vs.recv_window
    edge = rw.edge
    assert edge == rw.ack + p.vs.config.max_reorder_buffer // p.vs.config.max_datagram
    p.hostile.deliver(p.hostile.reliable(edge + 1, b"beyond"))
    assert p.strikes() == 1
    assert rw.buffer == {} and rw.buffered_bytes == 0
    p.hostile.deliver(p.hostile.reliable(edge, b"at-the-edge"))  # within: held, no strike
    assert p.strikes() == 1
    assert list(rw.buffer.values()) == [b"at-the-edge"]
    assert p.victim.payloads(conn_id=p.bid) == []
    p.link.advance(0.1)
    assert p.victim.established(p.bid)


def _open_gap(p: Pair) -> float:
    """The attacker sends rseq next + 1 and never next: returns when the gap opened."""
    nxt = p.vs.recv_window.next_rseq
    p.hostile.deliver(p.hostile.reliable(nxt + 1, b"after-the-hole"))
    gap_since = p.vs.recv_window.gap_since
    assert gap_since == p.link.now
    return gap_since


def test_a_reliable_gap_held_open_closes_the_session_with_protocol_violation() -> None:
    """An honest sender closes with TIMEOUT after MAX_RETRANSMISSIONS tries of at most
    MAX_RTO each; a gap open longer is a peer parking data in the receiver's buffer."""
    p = pair()
    cfg = p.vs.config
    limit = cfg.max_retransmissions * cfg.max_rto
    opened = _open_gap(p)
    assert p.link.run(opened + limit - 0.01) is False
    assert p.victim.established(p.bid), "closed before the gap limit"
    p.link.run(opened + limit + 0.01)
    closed = p.victim.closed(p.bid)
    assert closed is not None
    assert (closed.reason, closed.by_peer) == (CloseReason.PROTOCOL_VIOLATION, False)
    seen = p.hostile.node.closed(p.hostile.conn_id)
    assert seen is not None and seen.reason is CloseReason.PROTOCOL_VIOLATION and seen.by_peer
    assert p.victim.payloads(conn_id=p.bid) == []
    assert p.strikes() == 0  # a close of its own, not strikes


def test_a_gap_filled_before_the_limit_closes_nothing() -> None:
    p = pair()
    cfg = p.vs.config
    limit = cfg.max_retransmissions * cfg.max_rto
    nxt = p.vs.recv_window.next_rseq
    opened = _open_gap(p)
    p.link.run(opened + limit - 1.0)
    p.hostile.deliver(p.hostile.reliable(nxt, b"the-hole"))
    assert p.vs.recv_window.gap_since is None
    p.link.run(opened + 2 * limit)
    assert p.victim.established(p.bid)
    assert p.victim.payloads(conn_id=p.bid) == [b"the-hole", b"after-the-hole"]


# ------------------------------------------------------------------ a peer that never reads


def test_a_receiver_that_never_reads_holds_at_most_its_buffer_and_the_sender_waits() -> None:
    """With release_on_take=False nothing delivered is read: what the receiver holds
    (out of order or unread) stays within max_reorder_buffer whatever the sender has,
    the sender's messages wait in its queue (not in flight: nothing times out), and
    once the application reads, the rest flows, in order, exactly once."""
    link = Link(9)
    sender = link.add("sender")
    reader = link.add("reader", release_on_take=False)
    cid, rid = link.establish(sender, reader)
    link.path(sender, reader).reorder = 0.2
    link.advance(0.1)
    cfg = reader.endpoint.config
    size, n = 1000, 600  # 600 kB against a 256 kB buffer
    messages = [bytes([i & 0xFF]) * (size - 4) + i.to_bytes(4, "big") for i in range(n)]
    for m in messages:
        assert link.send(sender, cid, m)
    rs = reader.endpoint.sessions[rid]
    ss = sender.endpoint.sessions[cid]
    for _ in range(100):  # 10 s
        link.advance(0.1)
        held = rs.recv_window.buffered_bytes + rs.recv_window.unread_bytes
        assert held <= cfg.max_reorder_buffer
        assert reader.endpoint.reorder_buffer_bytes <= cfg.max_reorder_buffer
    got = reader.payloads(conn_id=rid)
    assert 0 < len(got) * size <= cfg.max_reorder_buffer
    assert got == messages[:len(got)]
    assert ss.queued_reliable == n - len(got), "the rest waits in the sender's queue"
    assert ss.send_window.in_flight == 0
    assert sender.established(cid) and reader.established(rid)

    # The application reads: everything else follows.
    released = 0
    for _ in range(200):
        got = reader.payloads(conn_id=rid)
        unread = sum(map(len, got)) - released
        if unread:
            reader.endpoint.release(rid, unread)
            released += unread
            link.pump(reader)
        if len(got) == n:
            break
        link.advance(0.05)
    assert reader.payloads(conn_id=rid) == messages
