"""Path validation before roaming (docs/protocol.md sections 6 step 7 and 8).

A captured genuine packet re-sent from a victim's address ahead of the original
must not aim the session's traffic at the victim: until the new address answers an
ack-eliciting ACK, it gets at most 3 times the bytes that came from it. A real
NAT rebinding still moves the session, within one round trip.
"""

from __future__ import annotations

from corelink import Link, Node, connected_pair
from intentra.constants import Intent, PacketType
from intentra.events import PeerRoamed

VICTIM = ("10.99.0.1", 4444)


def setup() -> tuple[Link, Node, Node, int, int]:
    return connected_pair(seed=11)


def bytes_to(link: Link, dst: tuple[str, int], since: int) -> int:
    return sum(len(d.data) for d in link.sent[since:] if d.dst == dst)


def test_a_raced_packet_sends_the_victim_at_most_three_times_its_size() -> None:
    link, a, b, cid_a, cid_b = setup()
    # b has a lot to send to a: RELIABLE and REALTIME, 200 KB.
    for i in range(200):
        link.send(b, cid_b, b"%d" % i + bytes(1000), Intent.RELIABLE if i % 2 else Intent.REALTIME)
    # An on-path attacker captures a's next packet and races it from the victim's
    # address; the original arrives after it (a replay by then).
    link.send(a, cid_a, b"genuine", Intent.REALTIME)
    for data, dst in a.endpoint.datagrams_to_send(link.now):
        assert dst == b.addr
        captured = data
    before = len(link.sent)
    link.deliver(captured, VICTIM, b)
    link.deliver(captured, a.addr, b)       # the original: a replay now
    link.advance(0.5)
    sent_to_victim = bytes_to(link, VICTIM, before)
    print(f"\nraced {len(captured)}-byte packet: {sent_to_victim} bytes sent to the victim")
    assert 0 < sent_to_victim <= 3 * len(captured)
    assert not b.of_type(PeerRoamed)
    # a's next packet, from its real (validated) address, moves b back at once:
    # everything is delivered to a.
    link.send(a, cid_a, b"next", Intent.REALTIME)
    link.advance(3.0)
    assert b.endpoint.address(cid_b) == a.addr
    assert len(a.payloads(Intent.RELIABLE)) == 100
    assert bytes_to(link, VICTIM, before) == sent_to_victim


def test_a_nat_rebinding_roams_within_one_round_trip_of_the_probe() -> None:
    link, a, b, cid_a, cid_b = setup()
    old = a.addr
    new = ("10.1.2.3", 5678)
    link.move(a, new)
    link.send(a, cid_a, b"from the new address", Intent.REALTIME)
    link.pump(a)
    first = len(link.sent)
    link.advance(1.0)
    [roamed] = b.of_type(PeerRoamed)
    assert roamed == PeerRoamed(cid_b, old, new)
    probes = [d for d in link.sent[first:]
              if d.ptype == PacketType.ACK and d.dst == new and d.data[1] & 0x02]
    assert probes, "no ack-eliciting ACK probe went to the new address"
    [(roamed_at, _)] = b.timed(PeerRoamed)
    # The probe left when the packet from the new address arrived; the answer
    # came back one round trip (2 x the link's latency) later.
    assert roamed_at - probes[0].sent_at <= 2 * link.latency + 1e-9
    link.send(b, cid_b, b"reply")
    link.advance(0.5)
    assert a.payloads() == [b"reply"]
    assert link.sent_by(b, lambda d: d.ptype == PacketType.DATA)[-1].dst == new
