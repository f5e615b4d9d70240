"""The handshake of docs/protocol.md section 7, both roles, under a fake clock and a seeded link."""

from __future__ import annotations

import pytest

from corelink import Datagram, DropFirst, Link, Node, is_hs, is_type, seeded_key
from intentra.config import EndpointConfig
from intentra.constants import HEADER_LEN, PROLOGUE, CloseReason, HsKind, Intent, PacketType
from intentra.core.cookie import CookieJar, address_bytes
from intentra.core.noise import InitiatorHandshake, ResponderHandshake
from intentra.core.session import SessionState
from intentra.core.wire import pack_cookie_reply, pack_hello, pack_response
from intentra.events import Address, HandshakeCompleted, HandshakeFailed, SessionClosed

MASTER = bytes(range(32))


def pair(seed: int = 1) -> tuple[Link, Node, Node]:
    link = Link(seed)
    return link, link.add("a"), link.add("b")


def hs_sent(link: Link, node: Node, kind: HsKind) -> list[Datagram]:
    return link.sent_by(node, is_hs(kind))


def completed(node: Node) -> list[HandshakeCompleted]:
    return node.of_type(HandshakeCompleted)


# --------------------------------------------------------------- the happy path


def test_full_handshake_with_cookie() -> None:
    link, a, b = pair()
    cid_a, cid_b = link.establish(a, b)

    assert len(hs_sent(link, a, HsKind.HELLO)) == 2
    assert len(hs_sent(link, b, HsKind.COOKIE)) == 1
    assert len(hs_sent(link, b, HsKind.RESPONSE)) == 1
    assert len(hs_sent(link, a, HsKind.FINISH)) == 1
    first, second = hs_sent(link, a, HsKind.HELLO)
    # The second HELLO is the first one with the cookie filled in (protocol.md section 7 step 2).
    cookie = hs_sent(link, b, HsKind.COOKIE)[0].data[HEADER_LEN + 5:]
    assert second.data[HEADER_LEN + 5:HEADER_LEN + 21] == cookie
    assert first.data[:HEADER_LEN + 5] == second.data[:HEADER_LEN + 5]
    assert first.data[HEADER_LEN + 21:] == second.data[HEADER_LEN + 21:]
    assert b.endpoint.stats.cookie_replies == 1

    [ca] = completed(a)
    [cb] = completed(b)
    assert (ca.conn_id, ca.peer_key, ca.initiator, ca.address) == (cid_a, b.public, True, b.addr)
    assert (cb.conn_id, cb.peer_key, cb.initiator, cb.address) == (cid_b, a.public, False, a.addr)
    assert a.endpoint.stats.handshakes_completed == b.endpoint.stats.handshakes_completed == 1
    assert b.endpoint.handshakes_in_flight == 0
    assert a.endpoint.connections_active == b.endpoint.connections_active == 1

    link.send(a, cid_a, b"ping")
    link.advance(0.1)
    assert b.payloads() == [b"ping"]


def test_no_reply_is_larger_than_its_request() -> None:
    link, a, b = pair()
    link.establish(a, b)
    hello = len(hs_sent(link, a, HsKind.HELLO)[0].data)
    assert len(hs_sent(link, b, HsKind.COOKIE)[0].data) <= hello
    assert len(hs_sent(link, b, HsKind.RESPONSE)[0].data) <= hello


# --------------------------------------------------------------- losses


def test_lost_cookie_initiator_resends_hello() -> None:
    link, a, b = pair()
    lost = DropFirst(is_hs(HsKind.COOKIE))
    link.path(b, a).drop = lost
    link.establish(a, b)

    assert len(lost.dropped) == 1
    hellos = hs_sent(link, a, HsKind.HELLO)
    assert len(hellos) == 3
    assert hellos[1].sent_at == pytest.approx(a.endpoint.config.initial_rto)
    assert hellos[0].data == hellos[1].data  # still without a cookie
    assert len(hs_sent(link, b, HsKind.COOKIE)) == 2
    assert len(completed(a)) == len(completed(b)) == 1


def test_lost_response_hello_resent_gets_the_same_response() -> None:
    link, a, b = pair()
    lost = DropFirst(is_hs(HsKind.RESPONSE))
    link.path(b, a).drop = lost
    link.establish(a, b)

    responses = hs_sent(link, b, HsKind.RESPONSE)
    assert len(responses) == 2
    assert responses[0].data == responses[1].data
    assert len(hs_sent(link, a, HsKind.HELLO)) == 3
    assert b.endpoint.stats.handshakes_completed == 1
    assert b.endpoint.handshakes_in_flight == 0
    assert len(b.endpoint.sessions) == 1


@pytest.mark.parametrize("lost_count", [1, 3])
def test_lost_finish_is_resent_until_the_responder_answers(lost_count: int) -> None:
    link, a, b = pair()
    lost = DropFirst(is_hs(HsKind.FINISH), lost_count)
    link.path(a, b).drop = lost
    cid_a = link.connect(a, b)
    link.run(5.0, lambda: bool(completed(a)))
    [done] = completed(a)
    assert done.conn_id == cid_a
    t_established = link.now
    # The initiator is established at once and may send right away.
    link.send(a, cid_a, b"early")
    link.run(5.0, lambda: bool(completed(b)))
    assert completed(b), "the responder never completed"

    finishes = hs_sent(link, a, HsKind.FINISH)
    assert len(finishes) == lost_count + 1
    assert len({d.data for d in finishes}) == 1
    rto = a.endpoint.config.initial_rto
    expected = [t_established]
    for i in range(lost_count):
        expected.append(expected[-1] + min(rto * 2 ** i, a.endpoint.config.handshake_max_rto))
    assert [d.sent_at for d in finishes] == pytest.approx(expected)

    link.advance(2.0)
    assert b.payloads() == [b"early"]
    cid_b = link.responder_id(b, a)
    assert cid_b is not None
    link.send(b, cid_b, b"reply")
    link.advance(0.1)
    assert a.payloads() == [b"reply"]
    # Confirmed: no more FINISH after the responder answered.
    assert len(hs_sent(link, a, HsKind.FINISH)) == lost_count + 1


def test_duplicate_finish_answered_with_one_small_ack() -> None:
    link, a, b = pair()
    link.establish(a, b)
    link.advance(1.0)
    [finish] = hs_sent(link, a, HsKind.FINISH)
    before = len(link.sent_by(b))

    link.deliver(finish.data, a.addr, b)

    replies = link.sent_by(b)[before:]
    assert len(replies) == 1
    assert replies[0].ptype == PacketType.ACK
    assert len(replies[0].data) <= len(finish.data)
    assert len(b.endpoint.sessions) == 1
    assert b.endpoint.stats.handshakes_completed == 1


def test_finish_with_a_flipped_byte_is_dropped_and_the_genuine_one_completes() -> None:
    link, a, b = pair()
    held = DropFirst(is_hs(HsKind.FINISH))
    link.path(a, b).drop = held
    link.connect(a, b)
    link.run(5.0, lambda: bool(held.dropped))
    genuine = held.dropped[0].data
    forged = bytearray(genuine)
    forged[HEADER_LEN + 5 + 10] ^= 0x01

    crypto = b.endpoint.stats.packets_dropped_crypto
    link.deliver(bytes(forged), a.addr, b)
    assert b.endpoint.stats.packets_dropped_crypto == crypto + 1
    assert not completed(b)
    [pending] = b.endpoint.sessions.values()
    assert pending.state is SessionState.RESPONSE_SENT
    assert b.endpoint.handshakes_in_flight == 1

    # After a failure the responder tries the next FINISH half an INITIAL_RTO
    # later (the initiator resends every RTO); the genuine one then completes.
    link.now += b.endpoint.config.initial_rto / 2
    link.deliver(genuine, a.addr, b)
    assert len(completed(b)) == 1
    assert pending.established


def test_forged_response_is_counted_and_the_real_one_still_completes() -> None:
    link, a, b = pair()
    held = DropFirst(is_hs(HsKind.RESPONSE))
    link.path(b, a).drop = held
    cid_a = link.connect(a, b)
    link.run(5.0, lambda: bool(held.dropped))
    real = held.dropped[0].data
    responder_id = int.from_bytes(real[HEADER_LEN + 1:HEADER_LEN + 5], "big")
    forged = pack_response(cid_a, responder_id, bytes(range(96)))

    crypto = a.endpoint.stats.packets_dropped_crypto
    link.deliver(forged, b.addr, a)
    assert a.endpoint.stats.packets_dropped_crypto == crypto + 1
    assert not a.of_type(HandshakeCompleted)
    assert not a.of_type(HandshakeFailed)
    assert a.endpoint.sessions[cid_a].state is SessionState.HELLO_SENT

    link.deliver(real, b.addr, a)
    assert [e.conn_id for e in completed(a)] == [cid_a]
    link.advance(1.0)
    assert len(completed(b)) == 1


def test_handshake_timeout_with_exponential_backoff() -> None:
    link, a, b = pair()
    link.path(a, b).loss = 1.0
    cid_a = link.connect(a, b)
    link.advance(10.0)

    cfg = a.endpoint.config
    [(t, failed)] = a.timed(HandshakeFailed)
    assert (failed.conn_id, failed.reason, failed.address) == (cid_a, "timeout", b.addr)
    assert t == pytest.approx(cfg.handshake_timeout)
    times = [d.sent_at for d in hs_sent(link, a, HsKind.HELLO)]
    expected = [0.0]
    rto = cfg.initial_rto
    while expected[-1] + rto < cfg.handshake_timeout:
        expected.append(expected[-1] + rto)
        rto = min(rto * 2, cfg.handshake_max_rto)
    assert times == pytest.approx(expected)
    # 0.25 s doubling, capped at handshake_max_rto (0.5 s)
    assert times == pytest.approx([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4.25,
                                   4.75])
    assert cid_a not in a.endpoint.sessions
    assert a.endpoint.stats.handshakes_failed == 1
    assert a.endpoint.get_timer() is None


# --------------------------------------------------------------- repeated HELLO


def valid_hello(sender_id: int, addr: Address, now: float = 0.0, seed: int = 0) -> bytes:
    """A HELLO with the cookie an endpoint keyed with MASTER expects from ``addr``."""
    source = address_bytes(addr)
    assert source is not None
    cookie = CookieJar(MASTER, EndpointConfig().cookie_rotation).make(source, now)
    hs = InitiatorHandshake(seeded_key(f"i{seed}").to_bytes(), seeded_key(f"e{seed}").to_bytes())
    return pack_hello(sender_id, cookie, hs.msg1)


def test_repeated_hello_with_valid_cookie_gets_the_same_response() -> None:
    link = Link()
    b = link.add("b", cookie_master=MASTER)
    src = ("192.0.2.7", 5555)
    hello = valid_hello(0x1234, src)

    link.deliver(hello, src, b)
    link.deliver(hello, src, b)

    replies = link.sent_by(b)
    assert [d.hs_kind for d in replies] == [HsKind.RESPONSE, HsKind.RESPONSE]
    assert replies[0].data == replies[1].data
    assert replies[0].conn_id == 0x1234
    assert b.endpoint.handshakes_in_flight == 1
    assert len(b.endpoint.sessions) == 1
    assert b.endpoint.stats.cookie_replies == 0


def test_hello_repeated_after_the_handshake_completed_starts_nothing() -> None:
    """A late copy of the HELLO (network duplication, or a replay by anyone on the
    path within the cookie's lifetime) is still a repeated HELLO (protocol.md section 7 step 3):
    it must not open a second pending handshake."""
    link, a, b = pair()
    link.establish(a, b)
    link.advance(1.0)
    hello = hs_sent(link, a, HsKind.HELLO)[-1]  # the one carrying the cookie
    [response] = hs_sent(link, b, HsKind.RESPONSE)

    link.deliver(hello.data, a.addr, b)

    assert b.endpoint.handshakes_in_flight == 0
    assert len(b.endpoint.sessions) == 1
    assert all(d.data == response.data for d in hs_sent(link, b, HsKind.RESPONSE))


def test_hello_without_cookie_keeps_no_state() -> None:
    link = Link()
    b = link.add("b", cookie_master=MASTER)
    src = ("192.0.2.7", 5555)
    hello = bytearray(valid_hello(0x1234, src))
    hello[HEADER_LEN + 5:HEADER_LEN + 21] = bytes(16)

    link.deliver(bytes(hello), src, b)

    [reply] = link.sent_by(b)
    assert reply.hs_kind is HsKind.COOKIE
    assert len(reply.data) <= len(hello)
    assert b.endpoint.sessions == {}
    assert b.endpoint.handshakes_in_flight == 0
    assert b.endpoint.get_timer() is None


# --------------------------------------------------------------- authentication


def test_pinned_server_key_mismatch_fails_with_authentication() -> None:
    link, a, b = pair()
    wrong = seeded_key("somebody else").public_key.to_bytes()
    cid_a = link.connect(a, b, server_key=wrong)
    link.advance(a.endpoint.config.handshake_timeout + 0.1)  # refused keys fail at the timeout

    [failed] = a.of_type(HandshakeFailed)
    assert (failed.conn_id, failed.reason) == (cid_a, "authentication")
    assert not completed(a)
    assert not hs_sent(link, a, HsKind.FINISH)
    assert cid_a not in a.endpoint.sessions
    assert a.endpoint.stats.handshakes_rejected == 1
    assert not completed(b)


def test_pinned_server_key_match_completes() -> None:
    link, a, b = pair()
    cid_a = link.connect(a, b, server_key=b.public)
    link.advance(1.0)
    assert [e.conn_id for e in completed(a)] == [cid_a]
    assert not a.of_type(HandshakeFailed)


def test_initiator_allow_list_refuses_an_unknown_responder() -> None:
    link = Link()
    a = link.add("a", allowed_peers=[seeded_key("friend").public_key.to_bytes()])
    b = link.add("b")
    cid_a = link.connect(a, b)
    link.advance(a.endpoint.config.handshake_timeout + 0.1)  # refused keys fail at the timeout

    [failed] = a.of_type(HandshakeFailed)
    assert (failed.conn_id, failed.reason) == (cid_a, "authentication")
    assert not completed(a)
    assert not hs_sent(link, a, HsKind.FINISH)


def test_responder_allow_list_refuses_an_unknown_initiator() -> None:
    link = Link()
    a = link.add("a")
    friend = seeded_key("friend").public_key.to_bytes()
    b = link.add("b", allowed_peers=[friend])
    link.connect(a, b)
    link.advance(10.0)

    assert not completed(b)
    assert b.endpoint.stats.handshakes_rejected == 1
    assert b.endpoint.stats.handshakes_completed == 0
    assert b.endpoint.sessions == {}
    assert b.endpoint.handshakes_in_flight == 0


def test_responder_allow_list_admits_a_listed_initiator() -> None:
    link = Link()
    a = link.add("a")
    b = link.add("b", allowed_peers=[a.public])
    link.establish(a, b)
    assert b.endpoint.stats.handshakes_rejected == 0


# --------------------------------------------------------------- replacement


@pytest.mark.parametrize("restarted", [False, True], ids=["same-endpoint", "restarted"])
def test_reconnect_with_the_same_static_key_replaces_the_old_session(restarted: bool) -> None:
    link, a, b = pair()
    old_a, old_b = link.establish(a, b)
    link.advance(1.0)
    a2 = link.add("a2", key=a.key) if restarted else a
    new_a, new_b = link.establish(a2, b)
    link.advance(1.0)

    assert new_b != old_b
    closed_b = b.closed(old_b)
    assert closed_b is not None
    assert (closed_b.reason, closed_b.by_peer) == (CloseReason.REPLACED, False)
    closed_a = a.closed(old_a)
    assert closed_a is not None
    assert (closed_a.reason, closed_a.by_peer) == (CloseReason.REPLACED, True)
    assert a2.closed(new_a) is None
    assert b.closed(new_b) is None
    assert list(b.endpoint.sessions) == [new_b]
    link.send(a2, new_a, b"after")
    link.advance(0.1)
    assert b.payloads(conn_id=new_b) == [b"after"]


# --------------------------------------------------------------- limits


def test_pending_handshake_expires_and_frees_the_per_ip_count() -> None:
    link = Link()
    b = link.add("b", cookie_master=MASTER)
    cfg = b.endpoint.config
    sources = [("192.0.2.9", 6000 + i) for i in range(cfg.max_handshakes_per_ip + 1)]
    for i, src in enumerate(sources):
        link.deliver(valid_hello(100 + i, src, seed=i), src, b)
    assert b.endpoint.handshakes_in_flight == cfg.max_handshakes_per_ip
    assert b.endpoint.stats.handshakes_rejected == 1
    assert len(link.sent_by(b, is_hs(HsKind.RESPONSE))) == cfg.max_handshakes_per_ip

    link.run(cfg.handshake_timeout - 0.01)
    assert b.endpoint.handshakes_in_flight == cfg.max_handshakes_per_ip
    link.run(cfg.handshake_timeout + 0.01)
    assert b.endpoint.handshakes_in_flight == 0
    assert b.endpoint.sessions == {}

    # The IP may start handshakes again.
    src = ("192.0.2.9", 7000)
    link.deliver(valid_hello(999, src, link.now, seed=99), src, b)
    assert b.endpoint.handshakes_in_flight == 1
    assert link.sent_by(b)[-1].hs_kind is HsKind.RESPONSE


def test_per_ip_limit_counts_only_that_ip() -> None:
    link = Link()
    b = link.add("b", cookie_master=MASTER)
    limit = b.endpoint.config.max_handshakes_per_ip
    for i in range(limit + 2):
        src = ("192.0.2.1", 6000 + i)
        link.deliver(valid_hello(100 + i, src, seed=i), src, b)
    assert b.endpoint.handshakes_in_flight == limit
    assert b.endpoint.stats.handshakes_rejected == 2
    other = ("198.51.100.1", 6000)
    link.deliver(valid_hello(500, other, seed=50), other, b)
    assert b.endpoint.handshakes_in_flight == limit + 1
    assert b.endpoint.stats.handshakes_rejected == 2


def test_global_handshake_limit() -> None:
    link = Link()
    b = link.add("b", cookie_master=MASTER, config=EndpointConfig(max_handshakes_in_flight=3))
    for i in range(5):
        src = (f"192.0.2.{i + 1}", 6000)
        link.deliver(valid_hello(100 + i, src, seed=i), src, b)
    # A full table makes room by dropping its oldest pending handshake (issue 9 item 3).
    assert b.endpoint.handshakes_in_flight == 3
    assert b.endpoint.stats.handshakes_rejected == 2
    assert len(link.sent_by(b, is_hs(HsKind.RESPONSE))) == 5
    assert sorted(s.addr[0] for s in b.endpoint.sessions.values()) == [
        "192.0.2.3", "192.0.2.4", "192.0.2.5"]


def test_max_connections_counts_pending_handshakes() -> None:
    link = Link()
    b = link.add("b", cookie_master=MASTER, config=EndpointConfig(max_connections=2))
    for i in range(4):
        src = (f"192.0.2.{i + 1}", 6000)
        link.deliver(valid_hello(100 + i, src, seed=i), src, b)
    assert len(b.endpoint.sessions) == 2
    assert b.endpoint.stats.handshakes_rejected == 2


# --------------------------------------------------------------- COOKIE spoofing


def test_cookie_from_another_address_is_ignored() -> None:
    link, a, b = pair()
    link.path(a, b).loss = 1.0  # the real responder never answers
    cid_a = link.connect(a, b)
    link.advance(0.01)
    source = address_bytes(a.addr)
    assert source is not None
    cookie = CookieJar(MASTER, 120.0).make(source, 0.0)
    spoofed = pack_cookie_reply(cid_a, cookie)
    hellos = len(hs_sent(link, a, HsKind.HELLO))
    unknown = a.endpoint.stats.packets_dropped_unknown

    link.deliver(spoofed, ("203.0.113.66", 4002), a)
    assert len(hs_sent(link, a, HsKind.HELLO)) == hellos
    assert a.endpoint.stats.packets_dropped_unknown == unknown + 1
    assert a.endpoint.sessions[cid_a].cookie == bytes(16)

    # The same COOKIE from the address the HELLO went to is taken.
    link.deliver(spoofed, b.addr, a)
    assert len(hs_sent(link, a, HsKind.HELLO)) == hellos + 1
    assert link.sent_by(a)[-1].data[HEADER_LEN + 5:HEADER_LEN + 21] == cookie


def test_data_before_finish_is_not_delivered_by_a_pending_responder() -> None:
    link, a, b = pair()
    link.path(a, b).drop = DropFirst(is_hs(HsKind.FINISH))
    cid_a = link.connect(a, b)
    link.run(5.0, lambda: bool(completed(a)))
    link.send(a, cid_a, b"x", Intent.REALTIME)
    link.advance(0.1, lambda: bool(link.sent_by(a, is_type(PacketType.DATA))))
    link.advance(0.01)
    assert not b.payloads()
    assert b.endpoint.stats.packets_dropped_unknown >= 1
    link.advance(2.0)
    assert len(completed(b)) == 1
    assert not b.of_type(SessionClosed)


def test_session_that_closes_while_confirming_finish_is_removed() -> None:
    """The responder's confirming ACK can exhaust its packet numbers (here at once):
    the session closes, and a closed session must not stay in the endpoint."""
    link = Link()
    a = link.add("a")
    b = link.add("b", EndpointConfig(pn_limit=2))
    cid_a = link.connect(a, b)
    link.advance(1.0)

    [closed_b] = b.of_type(SessionClosed)
    assert closed_b.reason is CloseReason.KEY_EXHAUSTED
    closed_a = a.closed(cid_a)
    assert closed_a is not None and closed_a.by_peer
    assert b.endpoint.sessions == {}
    assert b.endpoint.get_timer() is None


def test_version_1_and_version_2_never_complete_a_handshake() -> None:
    """docs/protocol.md 5 and 11: the Noise prologue is ``intentra/2``; it is bound
    into the handshake hash, so msg 2 (or msg 3) made under version 1's prologue does
    not authenticate at a version 2 endpoint, nor the other way round."""
    assert PROLOGUE == b"intentra/2"
    keys = [bytes([i]) * 32 for i in (1, 2, 3, 4)]
    for ini_prologue, resp_prologue in ((b"intentra/1", PROLOGUE), (PROLOGUE, b"intentra/1")):
        ini = InitiatorHandshake(keys[0], keys[1], prologue=ini_prologue)
        resp = ResponderHandshake.create(keys[2], keys[3], ini.msg1, prologue=resp_prologue)
        assert resp is not None  # msg 1 (an ephemeral key) carries no authentication
        assert ini.consume_response(resp.msg2) is None
    # Control: the same prologue on both sides completes.
    ini = InitiatorHandshake(keys[0], keys[1])
    resp = ResponderHandshake.create(keys[2], keys[3], ini.msg1)
    assert resp is not None
    done = ini.consume_response(resp.msg2)
    assert done is not None
    assert resp.consume_finish(done.msg3) is not None
