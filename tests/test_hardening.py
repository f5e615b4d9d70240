"""Regressions for the findings of the security review (the proofs of /tmp/review).

Each test drives what an attacker (or an unlucky network) does and checks the
bound the hardening put in place: the sans-I/O core over the in-memory link and
its fake clock, and real loopback sockets for the transport's receive queue.
Only names that existed before the hardening are imported at module level, so
every test runs (and the ones guarding a fix fail) against the code before it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from array import array
from collections.abc import Callable
from typing import Any, Final

import pytest

from corelink import Datagram, DropFirst, Link, Node, is_hs, is_type
from intentra import Intent, PrivateKey, Transport
from intentra.config import EndpointConfig
from intentra.constants import HEADER_LEN, TAG_LEN, CloseReason, HsKind, PacketType
from intentra.core import aead, wire
from intentra.core.cookie import address_bytes
from intentra.core.endpoint import Endpoint
from intentra.core.noise import ResponderHandshake
from intentra.core.session import Session, SessionState
from intentra.core.wire import pack_cookie_reply, pack_header, pack_hello
from intentra.errors import MessageTooLargeError
from intentra.events import (
    Address,
    HandshakeCompleted,
    HandshakeConfirmed,
    MessageReceived,
    PeerRoamed,
    SessionClosed,
)

RELIABLE, REALTIME = Intent.RELIABLE, Intent.REALTIME
DATA = is_type(PacketType.DATA)
ATTACKER: Address = ("203.0.113.9", 4444)


def pair(seed: int = 1, config: EndpointConfig | None = None,
         config_b: EndpointConfig | None = None) -> tuple[Link, Node, Node]:
    link = Link(seed)
    return link, link.add("a", config), link.add("b", config_b if config_b is not None else config)


def established(seed: int = 1, config: EndpointConfig | None = None,
                ) -> tuple[Link, Node, Node, int, int]:
    """Two endpoints with an established, confirmed session; the link is quiet."""
    link, a, b = pair(seed, config)
    cid_a, cid_b = link.establish(a, b)
    link.advance(0.1)
    return link, a, b, cid_a, cid_b


def drain(endpoint: Endpoint, now: float) -> list[tuple[bytes, Address]]:
    return endpoint.datagrams_to_send(now)


def sealed_now(node: Node, conn_id: int, data: bytes, now: float,
               intent: Intent = REALTIME) -> bytes:
    """Queue one message at ``node`` and return the single datagram that carries it."""
    node.endpoint.send(conn_id, data, intent, 0, now)
    [(datagram, _)] = node.endpoint.datagrams_to_send(now)
    return datagram


def received(endpoint: Endpoint) -> list[bytes]:
    return [e.data for e in endpoint.events() if isinstance(e, MessageReceived)]


def session_of(node: Node, conn_id: int) -> Session:
    return node.endpoint.sessions[conn_id]


# ------------------------------------------------------------- 1. forged COOKIE


def test_forged_cookies_buy_at_most_two_hellos_and_keep_the_backoff() -> None:
    _, a, b = pair(config=EndpointConfig(handshake_max_rto=2.0))
    ep = a.endpoint
    cid = ep.connect(b.addr, 0.0)
    [(hello, _)] = drain(ep, 0.0)
    for t in (0.25, 0.75, 1.75):  # b never answers: the backoff grows to 2 s
        ep.handle_timer(t)
        assert len(drain(ep, t)) == 1
    session = session_of(a, cid)
    backoff = (session.hs_rto, session.hs_retransmit_at)
    assert session.hs_rto == pytest.approx(2.0)
    assert session.hs_retransmit_at == pytest.approx(3.75)
    unknown = ep.stats.packets_dropped_unknown

    # An on-path forger knows a's conn_id and b's address; it alternates two cookies
    # so that "answer a given cookie once" never applies.
    bytes_in = 0
    out: list[tuple[bytes, Address]] = []
    for i in range(1000):
        forged = pack_cookie_reply(cid, bytes([i % 2 + 1]) * 16)
        bytes_in += len(forged)
        ep.receive_datagram(forged, b.addr, 2.0 + i * 1e-4)
        out += drain(ep, 2.0 + i * 1e-4)

    assert len(out) <= 2, f"{len(out)} HELLOs answered forged COOKIEs"
    assert all(dst == b.addr and d[HEADER_LEN] == HsKind.HELLO for d, dst in out)
    assert sum(len(d) for d, _ in out) <= 2 * len(hello)
    assert sum(len(d) for d, _ in out) < bytes_in
    assert ep.stats.packets_dropped_unknown >= unknown + 998
    # Neither the backoff nor the next retransmission moved.
    assert (session.hs_rto, session.hs_retransmit_at) == backoff
    assert session.state is SessionState.HELLO_SENT
    ep.handle_timer(3.0)
    assert drain(ep, 3.0) == []  # nothing due before 3.75 s


# ------------------------------------------------------------- 2. handshake CPU


def _low_order_points() -> list[bytes]:
    """X25519 public keys of small order (libsodium's list), each with the top bit
    clear and set (X25519 ignores it): derived here, independently of src."""
    p = 2**255 - 19
    canonical = [
        bytes(32),                                           # 0
        (1).to_bytes(32, "little"),                          # 1
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        (p - 1).to_bytes(32, "little"),
        p.to_bytes(32, "little"),                            # 0, not reduced
        (p + 1).to_bytes(32, "little"),                      # 1, not reduced
    ]
    return [bytes(k[:31]) + bytes([k[31] | top]) for k in canonical for top in (0, 0x80)]


LOW_ORDER = _low_order_points()


def test_the_low_order_list_of_src_covers_every_small_order_point() -> None:
    assert set(LOW_ORDER) <= set(wire.LOW_ORDER_POINTS)


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Wrap ``owner.name`` so that every call is counted in the returned list."""
    calls = [0]
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("point", LOW_ORDER, ids=[f"{k[:2].hex()}..{k[31]:02x}" for k in LOW_ORDER])
def test_cookie_valid_hello_with_a_low_order_key_costs_no_dh(
        point: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    link = Link()
    b = link.add("b")
    eb = b.endpoint
    source = address_bytes(ATTACKER)
    assert source is not None
    cookie = eb._cookies.make(source, 0.0 + eb.wall_offset)
    created = count_calls(monkeypatch, ResponderHandshake, "create")
    crypto = eb.stats.packets_dropped_crypto

    eb.receive_datagram(pack_hello(0x1234, cookie, point), ATTACKER, 0.0)

    assert drain(eb, 0.0) == []  # no RESPONSE (and no COOKIE: the cookie was good)
    assert eb.stats.packets_dropped_crypto == crypto + 1
    assert created[0] == 0, "the responder started Noise (DH) for a low-order key"
    assert eb.sessions == {}
    assert eb.handshakes_in_flight == 0
    assert eb._pending_per_ip == {}
    assert eb.get_timer() is None


def held_finish(link: Link, a: Node, b: Node) -> bytes:
    """Run a handshake until the initiator completed; every FINISH is held back.

    Returns the genuine FINISH; b is left with its pending handshake.
    """
    held = DropFirst(is_hs(HsKind.FINISH), 1000)
    link.path(a, b).drop = held
    link.connect(a, b)
    assert link.run(1.0, lambda: bool(a.of_type(HandshakeCompleted)))
    link.pump()
    assert held.dropped
    [pending] = b.endpoint.sessions.values()
    assert pending.state is SessionState.RESPONSE_SENT
    return held.dropped[0].data


def garbage_finish(genuine: bytes, i: int) -> bytes:
    forged = bytearray(genuine)
    forged[-1 - i] ^= 0x5A  # the right ids, a body that does not authenticate
    return bytes(forged)


def test_failed_finishes_cost_no_noise_work_and_never_delay_the_genuine_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    link, a, b = pair()
    genuine = held_finish(link, a, b)
    eb = b.endpoint
    tried = count_calls(monkeypatch, ResponderHandshake, "consume_finish")
    crypto = eb.stats.packets_dropped_crypto

    # A burst of garbage with the right ids, some of it copies of the genuine
    # FINISH with a damaged tail: none gets as far as a Noise read.
    for i in range(100):
        link.deliver(garbage_finish(genuine, i % 64), ATTACKER, b)
    assert tried[0] == 0
    assert eb.stats.packets_dropped_crypto == crypto + 100
    # The genuine FINISH right behind them completes at once (no lockout a
    # forger could trigger: issue 9 item 2a).
    link.deliver(genuine, a.addr, b)
    assert tried[0] == 1
    assert len(b.of_type(HandshakeCompleted)) == 1
    assert eb.handshakes_in_flight == 0


def test_forged_cookie_delays_but_does_not_kill_a_handshake() -> None:
    link, a, b = pair()
    ep = a.endpoint
    cid = ep.connect(b.addr, link.now)
    link.pump(a)
    # The forger answers first with a wrong cookie, from b's address.
    ep.receive_datagram(pack_cookie_reply(cid, b"\x07" * 16), b.addr, link.now)
    link.pump(a)
    assert link.run(link.now + 5.0, stop=lambda: bool(a.of_type(HandshakeCompleted)))
    assert len(a.of_type(HandshakeCompleted)) == 1


# ------------------------------------------------------------- 3. receive queue


async def _wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.002)


async def _receive_queue_keeps_reliable() -> None:
    made: list[Transport] = []
    try:
        server = await Transport.bind("127.0.0.1:0", PrivateKey.generate(),
                                      receive_queue_size=10)
        made.append(server)
        flooder = await Transport.bind("127.0.0.1:0", PrivateKey.generate())
        made.append(flooder)
        honest = await Transport.bind("127.0.0.1:0", PrivateKey.generate())
        made.append(honest)
        pf = await asyncio.wait_for(flooder.connect(server.local_address, server.public_key), 5)
        ph = await asyncio.wait_for(honest.connect(server.local_address, server.public_key), 5)
        await _wait_until(lambda: len(server.peers) == 2, 5, "the server's two sessions")

        def drops() -> int:
            # v2: the per-peer REALTIME bound, counted by the endpoint (metric
            # intentra_messages_dropped_receive_queue_total)
            return server.endpoint.stats.messages_dropped_receive_queue

        # The application is busy and reads nothing; one peer floods REALTIME.
        for i in range(200):
            pf.send_nowait(b"junk-%d" % i, REALTIME)
            await asyncio.sleep(0)
        await _wait_until(lambda: drops() > 0, 5, "the queue to overflow")
        # The other peer sends RELIABLE messages, which the server's core acknowledges.
        for i in range(20):
            await asyncio.wait_for(ph.send(b"important-%d" % i, RELIABLE), 5)
        sess = honest.endpoint.sessions[ph.conn_id]
        await _wait_until(lambda: sess.send_window.in_flight == 0 and sess.queued == 0, 5,
                          "every RELIABLE message to be acknowledged")
        await asyncio.sleep(0.05)

        got: list[bytes] = []
        while (m := server.receive_nowait()) is not None:
            got.append(m.data)
        important = [g for g in got if g.startswith(b"important")]
        assert important == [b"important-%d" % i for i in range(20)], (
            f"acknowledged RELIABLE messages lost: {20 - len(important)} "
            f"(receive_queue_drops={drops()})")
        assert drops() > 0
        junk = [g for g in got if g.startswith(b"junk")]
        assert len(junk) <= 10
        assert drops() + len(junk) <= 200
    finally:
        for t in made:
            await asyncio.wait_for(t.close(), 5)


def test_full_receive_queue_sheds_realtime_and_keeps_acknowledged_reliable() -> None:
    asyncio.run(asyncio.wait_for(_receive_queue_keeps_reliable(), 20))


# ------------------------------------------------------------- 4. replayed FINISH


def finish_of(link: Link, a: Node) -> bytes:
    [finish] = link.sent_by(a, is_hs(HsKind.FINISH))
    return finish.data


def test_replayed_finish_from_another_address_gets_no_ack() -> None:
    link, a, b, _, cid_b = established()
    fin = finish_of(link, a)
    eb = b.endpoint
    now = link.now + 1.0  # within the handshake timeout, well after one RTO
    unknown = eb.stats.packets_dropped_unknown
    for i in range(50):
        eb.receive_datagram(fin, ATTACKER, now + i * 0.01)
        assert drain(eb, now + i * 0.01) == []
    assert eb.stats.packets_dropped_unknown == unknown + 50
    assert session_of(b, cid_b).addr == a.addr


def test_replayed_finish_from_the_session_address_is_answered_once_per_rto() -> None:
    link, a, b, _, cid_b = established()
    fin = finish_of(link, a)
    eb = b.endpoint
    session = session_of(b, cid_b)
    rto = session.rtt.rto
    start = link.now + 0.5

    # A burst at one instant: one ACK at most.
    burst = 0
    for _ in range(100):
        eb.receive_datagram(fin, a.addr, start)
        burst += len(drain(eb, start))
    assert burst <= 1

    # A copy every 10 ms for a second: at most one ACK per RTO.
    ack_times: list[float] = []
    span = 1.0
    for i in range(1, 101):
        t = start + i * span / 100
        eb.receive_datagram(fin, a.addr, t)
        for d, dst in drain(eb, t):
            assert dst == a.addr
            assert d[0] & 0x0F == PacketType.ACK
            ack_times.append(t)
    assert len(ack_times) <= math.ceil(span / rto) + 1
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(ack_times)]
    assert all(g >= rto - 1e-9 for g in gaps), (gaps, rto)


def test_replayed_finish_after_the_handshake_timeout_gets_no_ack() -> None:
    link, a, b, _, cid_b = established()
    fin = finish_of(link, a)
    eb = b.endpoint
    later = link.now + eb.config.handshake_timeout + 0.1
    for i in range(20):
        eb.receive_datagram(fin, a.addr, later + i * 0.5)
        assert drain(eb, later + i * 0.5) == []
    assert session_of(b, cid_b).state is SessionState.ESTABLISHED


def test_600_replayed_finishes_do_not_drain_the_bucket() -> None:
    link, a, b, cid_a, _ = established()
    fin = finish_of(link, a)
    eb = b.endpoint
    now = link.now + 0.5
    acks = 0
    for i in range(600):
        eb.receive_datagram(fin, a.addr if i % 2 else ATTACKER, now)
        acks += len(drain(eb, now))
    eb.events()

    datagram = sealed_now(a, cid_a, b"hello", now, RELIABLE)
    eb.receive_datagram(datagram, a.addr, now)

    assert received(eb) == [b"hello"], "the replays drained the peer's token bucket"
    assert eb.stats.packets_dropped_rate_limit == 0
    assert acks <= 1


# ------------------------------------------------------------- 5. previous key


def test_previous_key_past_its_lifetime_opens_nothing_even_before_the_timer() -> None:
    config = EndpointConfig(key_update_packets=4, key_update_min_interval=100,
                            key_update_time=1000)
    link, a, b, cid_a, cid_b = established(config=config)
    eb = b.endpoint
    now = link.now
    held = [sealed_now(a, cid_a, b"x%d" % i, now) for i in range(8)]
    phases = [d[1] & 1 for d in held]
    assert 0 in phases and 1 in phases
    old = [d for d in held if d[1] & 1 == 0]
    new = [d for d in held if d[1] & 1 == 1]

    eb.receive_datagram(new[0], a.addr, now)
    assert received(eb) == [b"x%d" % held.index(new[0])]
    keys = session_of(b, cid_b).recv_keys
    assert keys is not None and keys.prev_expires_at is not None
    # Control: within its lifetime the previous key still opens a late packet.
    eb.receive_datagram(old[-1], a.addr, now)
    assert received(eb) == [b"x%d" % held.index(old[-1])]

    late = keys.prev_expires_at + 5.0  # handle_timer has not run since
    crypto = eb.stats.packets_dropped_crypto
    eb.receive_datagram(old[-2], a.addr, late)
    assert received(eb) == [], "a packet of the expired previous key was opened"
    assert eb.stats.packets_dropped_crypto == crypto + 1
    assert keys.prev_expires_at is None


# ------------------------------------------------------------- 6. memoryview


ONE_DATAGRAM: Final = EndpointConfig(max_message_size=EndpointConfig().max_datagram_message)
"""Messages no longer than one datagram carries: these tests are about memoryviews and
packing, not fragments (tests/test_fragments.py has those)."""


def too_large_views(max_message: int) -> list[memoryview]:
    items = max_message // 8 + 1  # a few bytes over as bytes, far under as items
    return [
        memoryview(array("Q", range(items))),
        memoryview(array("Q", range(1100))),
        memoryview(bytes(8 * items)).cast("Q"),
        memoryview(bytearray(1160 * 64)).cast("B", shape=[1160, 64]),
    ]


def check_datagrams(datagrams: list[Datagram] | list[tuple[bytes, Address]],
                    max_datagram: int) -> None:
    for item in datagrams:
        data = item.data if isinstance(item, Datagram) else item[0]
        assert len(data) <= max_datagram
        if data[0] & 0x0F == PacketType.DATA:
            assert len(data) > HEADER_LEN + TAG_LEN, "an empty DATA packet"


@pytest.mark.parametrize("intent", [REALTIME, RELIABLE], ids=["realtime", "reliable"])
@pytest.mark.parametrize("case", range(4), ids=["Q-just-over", "Q-1100", "cast-Q", "2d"])
@pytest.mark.parametrize("how", ["send", "broadcast"])
def test_memoryview_larger_than_max_message_in_bytes_is_refused(
        intent: Intent, case: int, how: str) -> None:
    link, a, _, cid_a, _ = established(config=ONE_DATAGRAM)
    ea = a.endpoint
    view = too_large_views(ea.config.max_message_size)[case]
    assert view.nbytes > ea.config.max_message_size
    sent = ea.stats.packets_sent

    with pytest.raises(MessageTooLargeError):
        if how == "send":
            ea.send(cid_a, view, intent, 0, link.now)  # type: ignore[arg-type]
        else:
            ea.broadcast(view, intent, 0, link.now)  # type: ignore[arg-type]

    out = drain(ea, link.now)
    check_datagrams(out, ea.config.max_datagram)
    assert out == []
    assert ea.stats.packets_sent == sent
    assert session_of(a, cid_a).queued == 0


@pytest.mark.parametrize("intent", [REALTIME, RELIABLE], ids=["realtime", "reliable"])
def test_valid_memoryviews_are_delivered_intact_in_full_datagrams(intent: Intent) -> None:
    link, a, b, cid_a, _ = established(config=ONE_DATAGRAM)
    ea = a.endpoint
    max_message = ea.config.max_message_size
    items = max_message // 8
    views = [
        memoryview(array("Q", range(items))),                 # just under, in bytes
        memoryview(b"small"),
        memoryview(bytearray(range(256)) * 4).cast("I"),
        memoryview(bytearray(b"ab" * 300)).cast("B", shape=[20, 30]),
        memoryview(bytes(max_message)),                       # exactly the largest
    ]
    for view in views:
        assert ea.send(cid_a, view, intent, 0, link.now)  # type: ignore[arg-type]
    link.advance(0.5)

    assert b.payloads(intent) == [v.tobytes() for v in views]
    check_datagrams(link.sent, ea.config.max_datagram)
    check_datagrams(link.sent_by(a, DATA), ea.config.max_datagram)


def test_realtime_messages_never_produce_an_empty_data_packet() -> None:
    link, a, b, cid_a, _ = established(config=ONE_DATAGRAM)
    ea = a.endpoint
    max_message = ea.config.max_message_size
    sizes = [max_message, 1, max_message, 600, 600, max_message - 1, max_message]
    for i, size in enumerate(sizes):
        ea.send(cid_a, memoryview(bytes([i]) * size), REALTIME, i % 8, link.now)  # type: ignore[arg-type]
    out = drain(ea, link.now)
    assert out
    check_datagrams(out, ea.config.max_datagram)
    for d, _ in out:
        b.endpoint.receive_datagram(d, a.addr, link.now)
    assert sorted(len(m) for m in received(b.endpoint)) == sorted(sizes)
    assert b.endpoint.stats.packets_dropped_malformed == 0


# ------------------------------------------------------------- 7. catch-up keys


def forged_data(conn_id: int, pn: int, phase: int) -> bytes:
    body = bytes((pn * 7 + i) & 0xFF for i in range(40))
    return pack_header(PacketType.DATA, REALTIME, 0, phase, len(body) - TAG_LEN, conn_id,
                       pn & 0xFFFFFFFF, 0) + body


def test_catch_up_keys_are_derived_once_per_silence_not_per_forgery(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = EndpointConfig(key_update_packets=4)
    _, a, b, cid_a, cid_b = established(config=config)
    eb = b.endpoint
    session = session_of(b, cid_b)
    keys = session.recv_keys
    assert keys is not None
    derived = count_calls(monkeypatch, aead, "rekey")
    now = session.last_recv_at + config.key_update_min_interval + 0.5  # catch-up mode
    crypto = eb.stats.packets_dropped_crypto

    eb.receive_datagram(forged_data(cid_b, 1000, 0), ATTACKER, now)
    eb.receive_datagram(forged_data(cid_b, 1001, 1), ATTACKER, now)
    after_two = derived[0]
    assert 0 < after_two <= config.key_update_catch_up + 1
    for i in range(2, 200):
        eb.receive_datagram(forged_data(cid_b, 1000 + i, i & 1), a.addr, now + i * 1e-4)
    assert derived[0] == after_two, "forged packets derive catch-up keys again and again"
    assert eb.stats.packets_dropped_crypto == crypto + 200
    assert keys.phase == 0 and session.addr == a.addr

    # The cache is one list, filled once and reused.
    ahead = keys._ahead
    assert len(ahead) == config.key_update_catch_up
    eb.receive_datagram(forged_data(cid_b, 2000, 0), ATTACKER, now + 0.1)
    eb.receive_datagram(forged_data(cid_b, 2001, 1), ATTACKER, now + 0.1)
    assert keys._ahead is ahead

    # The peer's real key update is committed, and the cache goes with the old keys.
    later = now + 0.2
    for i in range(6):
        a.endpoint.send(cid_a, b"real-%d" % i, REALTIME, 0, later)
        for d, _ in drain(a.endpoint, later):
            eb.receive_datagram(d, a.addr, later)
    assert eb.stats.key_updates_receive >= 1
    assert keys.phase == 1
    assert keys._ahead == []
    assert received(eb) == [b"real-%d" % i for i in range(6)]


# ------------------------------------------------------------- 8. roaming


def test_only_the_newest_packet_moves_the_peer() -> None:
    """Roaming follows only the newest pn (docs/protocol.md section 6 step 7). In
    version 2 the session sends to the new address at once but within 3x what came
    from it, and reports PeerRoamed once an ACK from there validates it
    (tests/adversarial/test_path_validation.py); here no ACK comes back."""
    link, a, b, cid_a, cid_b = established()
    ea, eb = a.endpoint, b.endpoint
    eb.events()
    now = link.now
    p1 = sealed_now(a, cid_a, b"first", now)
    p2 = sealed_now(a, cid_a, b"second", now)
    new: Address = ("10.0.0.1", 5000)
    roams = eb.stats.roams

    # The newer packet arrives first, from the peer's new NAT mapping.
    eb.receive_datagram(p2, new, now)
    events = eb.events()
    assert not [e for e in events if isinstance(e, PeerRoamed)], "not validated yet"
    assert eb.address(cid_b) == new
    # Then an older one, reordered, from the old mapping: authentic, delivered, no move.
    eb.receive_datagram(p1, a.addr, now)
    events = eb.events()
    assert [e.data for e in events if isinstance(e, MessageReceived)] == [b"first"]
    assert not [e for e in events if isinstance(e, PeerRoamed)]
    assert eb.address(cid_b) == new
    assert eb.stats.roams == roams

    # b's traffic goes to the new address (the probe first).
    eb.send(cid_b, b"reply", REALTIME, 0, now)
    assert {dst for _, dst in drain(eb, now)} == {new}
    # A still newer packet from yet another address moves it again.
    newer: Address = ("10.0.0.1", 5001)
    eb.receive_datagram(sealed_now(a, cid_a, b"third", now), newer, now)
    assert not [e for e in eb.events() if isinstance(e, PeerRoamed)]
    assert eb.address(cid_b) == newer
    assert ea.sessions[cid_a].state is SessionState.ESTABLISHED


# ------------------------------------------------------------- confirmation deadline


@pytest.mark.parametrize("finishes_lost", [4, 1000])
def test_late_completion_gets_a_full_handshake_timeout_to_be_confirmed(
        finishes_lost: int) -> None:
    timeout = 5.0
    # b's pending handshake lives longer, so that only a's deadline is tested.
    # A 2 s resend cap (not the default 0.5 s) spreads the lost FINISHes past the
    # original deadline, which is the case under test.
    link, a, b = pair(config=EndpointConfig(handshake_timeout=timeout, handshake_max_rto=2.0),
                      config_b=EndpointConfig(handshake_timeout=30.0))
    responses = DropFirst(is_hs(HsKind.RESPONSE), 1000)
    link.path(b, a).drop = responses
    cid_a = link.connect(a, b)
    link.run(4.9)
    assert responses.dropped
    assert session_of(a, cid_a).state is SessionState.HELLO_SENT
    link.path(b, a).drop = None
    finishes = DropFirst(is_hs(HsKind.FINISH), finishes_lost)
    link.path(a, b).drop = finishes

    link.deliver(responses.dropped[-1].data, b.addr, a)  # the RESPONSE at 4.9 s
    [(t_done, done)] = a.timed(HandshakeCompleted)
    assert done.conn_id == cid_a and t_done == pytest.approx(4.9)
    link.run(4.9 + timeout + 1.0)

    closed = a.closed(cid_a)
    if finishes_lost < 1000:
        # Resent FINISH at 4.9 + 0.25 + 0.5 + 1 + 2 s: well after the connect's 5 s.
        assert closed is None, f"closed at {a.timed(SessionClosed)[0][0]} s: {closed}"
        [(t_confirmed, _)] = a.timed(HandshakeConfirmed)
        assert t_confirmed > timeout + 3.0
        assert a.established(cid_a)
        assert len(b.of_type(HandshakeCompleted)) == 1
    else:
        assert not a.timed(HandshakeConfirmed)
        assert closed is not None and closed.reason is CloseReason.TIMEOUT
        [(t_closed, _)] = a.timed(SessionClosed)
        assert t_closed == pytest.approx(4.9 + timeout, abs=0.01)
