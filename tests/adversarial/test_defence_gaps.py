"""Defences that no other adversarial test caught when removed (see remove_defences.py).

``tests/adversarial/remove_defences.py`` removes each defence of docs/protocol.md sections
4-7, 9 and 10 from a copy of ``src`` and runs the adversarial suite against it.
Every mutant that stayed green was a defence nothing checked; the tests here
close those gaps, one attack each. (Two of them, the idle timeout under
forgeries and the responder's randomness before a cookie, guard defences that
other tests kill only as a side effect of a state snapshot; they check the
defence itself.)

- constant-time comparison (docs/protocol.md section 7 cookies, 9 keys): timing differences of a
  few nanoseconds cannot be measured reliably by a unit test, so instead the
  test checks that every comparison of a secret against attacker input goes
  through ``hmac.compare_digest`` (a spy that records and delegates to the real
  function; nothing of the core is replaced). Replacing one of them by ``==``
  turns the test red.
- the idle timeout (docs/protocol.md sections 2, 10) against a peer gone silent while an attacker
  keeps sending forgeries from its address: the session still closes with
  TIMEOUT exactly IDLE_TIMEOUT after the last authenticated packet;
- PN_LIMIT (docs/protocol.md section 4): a victim made to send without end closes with
  KEY_EXHAUSTED and never seals a packet number at or beyond the limit;
- stateless cookies (docs/protocol.md section 7 step 2): a flood of cookie-less HELLOs makes the
  responder draw no randomness at all (no ephemeral key, no Noise work);
- conn_id uniqueness (docs/protocol.md section 7): a new handshake whose random conn_id collides
  with a live session's must not take that session over;
- replacement (docs/protocol.md section 7 step 5): one static key re-handshaking again and again
  holds one session on the responder, not one per handshake;
- the replay window of docs/protocol.md sections 2/4 is 1024 by default (the reference design's was
  capped at 64): the other tests read the size from the code under test, so a
  smaller default went unnoticed;
- one AEAD open per forgery while a session is live (docs/protocol.md section 6 step 5): the
  catch-up keys (a documented departure) are tried only after a silence;
- strike decay (docs/protocol.md section 10) runs from the *previous* strike: violations paced just
  under STRIKE_DECAY still add up to STRIKE_THRESHOLD;
- the defaults of every limit are docs/protocol.md section 2's: the other tests take most
  limits from ``EndpointConfig()``, so a weaker default (say 100 strikes, or
  2**40 packets under one key) would pass them all.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Iterator
from typing import Final

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hostile import Hostile
from packets import A_ADDR, ATTACKER, ESTABLISHED, build

import intentra.native
from corelink import Link, Node, is_type, seeded_key, seeded_rng
from intentra.config import EndpointConfig
from intentra.constants import HEADER_LEN, TAG_LEN, CloseReason, Intent, PacketType
from intentra.core import aead
from intentra.core.endpoint import Endpoint
from intentra.core.session import SessionState
from intentra.core.wire import pack_header, pack_hello
from intentra.events import Address, HandshakeCompleted, MessageReceived, SessionClosed
from intentra.keys import PrivateKey

Pair = frozenset[bytes]


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Pair]]:
    """Every pair of byte strings given to ``hmac.compare_digest`` (the real one answers)."""
    log: list[Pair] = []
    real: Final = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        log.append(frozenset((bytes(a), bytes(b))))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    yield log


def spec_cookie(master: bytes, addr: Address, epoch: int) -> bytes:
    """docs/protocol.md section 7 from scratch (IPv4 only here)."""
    secret = hmac.new(master, b"intentra cookie" + epoch.to_bytes(8, "big"),
                      hashlib.sha256).digest()
    ip = bytes(int(part) for part in str(addr[0]).split("."))
    return hmac.new(secret, ip + int(addr[1]).to_bytes(2, "big"),
                    hashlib.sha256).digest()[:16]


MASTER: Final = bytes(range(32))


def cookie_check(compared: list[Pair]) -> list[Pair]:
    """A HELLO with a forged cookie: compared with both epochs' genuine cookies."""
    ep = Endpoint(seeded_key("gap-b").to_bytes(), seeded_rng("gap-b"), cookie_master=MASTER)
    now = 1000.5
    forged = bytes(range(100, 116))
    compared.clear()
    ep.receive_datagram(pack_hello(7, forged, bytes(range(32))), A_ADDR, now)
    assert ep.sessions == {} and ep.stats.cookie_replies == 1
    epoch = math.floor(now / ep.config.cookie_rotation)
    return [frozenset((forged, spec_cookie(MASTER, A_ADDR, epoch))),
            frozenset((forged, spec_cookie(MASTER, A_ADDR, epoch - 1)))]


def pin_check(compared: list[Pair]) -> list[Pair]:
    """A pinned initiator compares the responder's key with the pin."""
    link = Link(41)
    a, b = link.add("a"), link.add("b")
    compared.clear()
    link.connect(a, b, server_key=b.public)
    link.advance(2.0)
    assert a.of_type(HandshakeCompleted)
    return [frozenset((b.public,))]  # the key equals the pin: one element


def allow_list_check(compared: list[Pair]) -> list[Pair]:
    """A responder with an allow-list compares the initiator's key with the entries
    (``any`` stops at the match, so only the matching comparison is certain)."""
    link = Link(42)
    a = link.add("a")
    other = seeded_key("gap-other").public_key.to_bytes()
    b = link.add("b", allowed_peers=[other, a.public])
    compared.clear()
    link.establish(a, b)
    return [frozenset((a.public,))]


def finish_check(compared: list[Pair]) -> list[Pair]:
    """A replayed FINISH is compared with the one that established the session."""
    w = build(ESTABLISHED)
    finish = w.packets["finish"]
    compared.clear()
    w.b.receive_datagram(finish, A_ADDR, w.now + 0.5)
    assert [dst for _, dst in w.b.datagrams_to_send(w.now + 0.5)] == [A_ADDR]  # the ACK
    return [frozenset((finish,))]


def private_key_check(compared: list[Pair]) -> list[Pair]:
    raw = seeded_key("gap-private").to_bytes()
    compared.clear()
    assert PrivateKey(raw) == PrivateKey(bytes(raw))
    return [frozenset((raw,))]


CHECKS: Final[dict[str, Callable[[list[Pair]], list[Pair]]]] = {
    "cookie-both-epochs": cookie_check,
    "pinned-responder-key": pin_check,
    "allow-list-entries": allow_list_check,
    "duplicate-finish": finish_check,
    "private-key-equality": private_key_check,
}


@pytest.mark.parametrize("site", list(CHECKS))
def test_secrets_are_compared_with_compare_digest(site: str, compared: list[Pair]) -> None:
    """protocol.md section 7 ("compares in constant time") and the key comparisons of section 9:
    the attacker-supplied value meets the secret only inside hmac.compare_digest."""
    expected = CHECKS[site](compared)
    missing = [sorted(p.hex()[:16] for p in pair) for pair in expected if pair not in compared]
    assert missing == [], f"{site}: compared without hmac.compare_digest: {missing}"


# ------------------------------------------------------------------ idle timeout


def closed_at(node: Node, conn_id: int) -> tuple[float, SessionClosed] | None:
    found = [(t, e) for t, e in node.timed(SessionClosed) if e.conn_id == conn_id]
    return found[0] if found else None


def test_forgeries_from_a_silent_peers_address_do_not_keep_its_session_alive() -> None:
    """The peer goes silent (its datagrams are lost); an attacker who saw the
    conn_id sends a forged DATA from the peer's address every 0.5 s. Only
    authenticated packets count as "received": the session closes with TIMEOUT
    at IDLE_TIMEOUT after the last authentic one, and every forgery is a crypto
    drop."""
    config = EndpointConfig(idle_timeout=6.0, keepalive_interval=2.0)
    link = Link(51)
    a, b = link.add("a", config), link.add("b", config)
    cid_a, cid_b = link.establish(a, b)
    link.send(a, cid_a, b"last words", Intent.RELIABLE)
    link.advance(0.5)
    assert b.payloads() == [b"last words"]
    link.path(a, b).drop = lambda d: True  # a is gone
    last_authentic = b.endpoint.sessions[cid_b].last_recv_at
    crypto = b.endpoint.stats.packets_dropped_crypto
    injected: list[float] = []
    while link.now < last_authentic + 10.0:
        n = len(injected) + 1
        forged = (pack_header(PacketType.DATA, Intent.REALTIME, 0, 0, 10, cid_b, 1000 + n, 0)
                  + bytes((n + i) & 0xFF for i in range(10 + TAG_LEN)))
        assert len(forged) == HEADER_LEN + 10 + TAG_LEN
        link.inject(forged, a.addr, b)
        injected.append(link.now + link.latency)
        link.advance(0.5)
    found = closed_at(b, cid_b)
    assert found is not None, "forgeries kept a silent session open"
    at, event = found
    assert event.reason is CloseReason.TIMEOUT and not event.by_peer
    assert at == pytest.approx(last_authentic + config.idle_timeout)
    assert cid_b not in b.endpoint.sessions
    arrived_before = sum(1 for t in injected if t <= at)  # data first at one instant
    assert arrived_before >= 10
    assert b.endpoint.stats.packets_dropped_crypto - crypto == arrived_before


# ------------------------------------------------------------------ PN_LIMIT


PN_LIMIT: Final = 300


def test_a_victim_made_to_send_without_end_closes_at_pn_limit() -> None:
    """A peer asks for traffic without end (here: the victim keeps answering);
    the victim's packet numbers reach PN_LIMIT. It closes with KEY_EXHAUSTED,
    tells the peer in a CLOSE, and never seals a packet number >= PN_LIMIT
    (which would mean a nonce beyond the key's budget)."""
    config = EndpointConfig(pn_limit=PN_LIMIT)
    link = Link(52)
    a, b = link.add("a", config), link.add("b", config)
    cid_a, cid_b = link.establish(a, b)
    for i in range(2 * PN_LIMIT):
        if not b.established(cid_b):
            break
        link.send(b, cid_b, b"answer %d" % i, Intent.REALTIME)
        link.advance(0.001)
    link.advance(1.0)
    found = closed_at(b, cid_b)
    assert found is not None, "the sender went past PN_LIMIT"
    assert found[1].reason is CloseReason.KEY_EXHAUSTED and not found[1].by_peer
    peer = a.closed(cid_a)
    assert peer is not None and peer.reason is CloseReason.KEY_EXHAUSTED and peer.by_peer
    sealed = [d for d in link.sent_by(b) if d.ptype != PacketType.HS]
    assert max(d.seq for d in sealed) == PN_LIMIT - 1  # the CLOSE, the last one
    assert [d.seq for d in sealed if is_type(PacketType.CLOSE)(d)] == [PN_LIMIT - 1]
    assert len({d.seq for d in sealed}) == len(sealed)


# ------------------------------------------------------------------ no work before the cookie


def test_cookie_less_hellos_make_the_responder_draw_no_randomness() -> None:
    """200 HELLOs with well-formed ephemeral keys but no valid cookie, from 200
    sources: each gets a COOKIE, and the responder draws nothing from its random
    source: no ephemeral key, no conn_id, so no Noise work was started."""
    draws: list[int] = []
    base = seeded_rng("gap-draws")

    def counting_rng(n: int) -> bytes:
        draws.append(n)
        return base(n)

    ep = Endpoint(seeded_key("gap-draws").to_bytes(), counting_rng, cookie_master=MASTER)
    for i in range(200):
        ephemeral = X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32).public_key()
        msg1 = ephemeral.public_bytes(Encoding.Raw, PublicFormat.Raw)
        ep.receive_datagram(pack_hello(i + 1, bytes(16), msg1),
                            (f"198.51.100.{i % 250 + 1}", 20000 + i), 1000.5)
    assert len(ep.datagrams_to_send(1000.5)) == 200
    assert ep.stats.cookie_replies == 200
    assert draws == [], f"cookie-less HELLOs drew {len(draws)} times from the rng"
    assert ep.sessions == {}


# ------------------------------------------------------------------ conn_id collisions


class CollidingIds:
    """A random source whose 4-byte draws (conn_ids) come from a script first."""

    def __init__(self, seed: str, ids: list[int]) -> None:
        self._base = seeded_rng(seed)
        self._ids = list(ids)

    def __call__(self, n: int) -> bytes:
        if n == 4 and self._ids:
            return self._ids.pop(0).to_bytes(4, "big")
        return self._base(n)


def test_a_new_handshake_whose_conn_id_collides_does_not_take_over_a_session() -> None:
    """The responder's random source gives the second handshake the conn_id of
    the first, live, session (a birthday collision, which many handshakes make
    likely). The responder must pick another id: both sessions stay, each with
    its own peer, and both still carry traffic."""
    link = Link(53)
    b = link.add("b")
    b.endpoint._rng = CollidingIds("gap-b", [0x1234, 0x1234, 0x1234, 0x5678])
    a1, a2 = link.add("a1"), link.add("a2")
    c1, b1 = link.establish(a1, b)
    c2, b2 = link.establish(a2, b)
    assert (b1, b2) == (0x1234, 0x5678)
    assert b.endpoint.peer_key(b1) == a1.public and b.endpoint.peer_key(b2) == a2.public
    link.send(a1, c1, b"from a1")
    link.send(a2, c2, b"from a2")
    link.send(b, b1, b"to a1")
    link.send(b, b2, b"to a2")
    link.advance(1.0)
    assert b.payloads(conn_id=b1) == [b"from a1"] and b.payloads(conn_id=b2) == [b"from a2"]
    assert a1.payloads() == [b"to a1"] and a2.payloads() == [b"to a2"]
    assert b.endpoint.stats.packets_dropped_crypto == 0


# ------------------------------------------------------------------ replacement


def test_one_key_re_handshaking_holds_one_session_on_the_responder() -> None:
    """A client key (or whoever stole it) handshakes 20 times from 20 ports
    without closing. Each new session replaces the previous one with REPLACED:
    the responder holds one session for the key, not 20."""
    link = Link(54)
    b = link.add("b")
    key = seeded_key("gap-repeat")
    clients = [link.add(f"a{i}", key=key, addr=("10.9.0.1", 7000 + i)) for i in range(20)]
    ids = [link.establish(c, b) for c in clients]
    link.advance(1.0)
    live = [s for s in b.endpoint.sessions.values() if s.state is SessionState.ESTABLISHED]
    assert [s.conn_id for s in live] == [ids[-1][1]]
    assert b.endpoint.connections_active == 1
    for client, (cid, bid) in zip(clients[:-1], ids[:-1], strict=True):
        here, there = b.closed(bid), client.closed(cid)
        assert here is not None and here.reason is CloseReason.REPLACED, client.name
        assert there is not None and there.reason is CloseReason.REPLACED and there.by_peer
    assert clients[-1].established(ids[-1][0])


# ------------------------------------------------------------------ replay window size


PROTOCOL_REPLAY_WINDOW: Final = 1024
"""docs/protocol.md section 2, written out: EndpointConfig's default must match it."""


@pytest.mark.parametrize("behind", [1000, PROTOCOL_REPLAY_WINDOW - 1, PROTOCOL_REPLAY_WINDOW])
def test_the_default_replay_window_is_1024_packets_deep(behind: int) -> None:
    """An attacker withholds one genuine DATA packet and releases it once the
    highest pn authenticated is ``behind`` above its own. With the default
    configuration it is delivered up to 1023 behind, and refused from 1024 on.

    v2: b's ACKs go back to a (congestion control would otherwise hold a's DATA
    back), and "behind" counts packet numbers, which include a's skipped pns."""
    link = Link(57)
    a, b = link.add("a"), link.add("b")
    cid_a, _ = link.establish(a, b)
    link.advance(0.2)
    ea, eb = a.endpoint, b.endpoint
    now = link.now
    ea.send(cid_a, b"withheld", Intent.REALTIME, 0, now)
    [(withheld, _)] = ea.datagrams_to_send(now)
    first = int.from_bytes(withheld[8:12], "big")
    highest, sent, i = first, 0, 0
    t = now
    while highest < first + behind:
        i += 1
        t = now + i * 2e-4  # 5,000 packets/s, under the token bucket's rate
        ea.send(cid_a, b"n-%d" % i, Intent.REALTIME, 0, t)
        for data, _ in ea.datagrams_to_send(t):
            pn = int.from_bytes(data[8:12], "big")
            if pn > first + behind:
                continue  # (an ACK of a's past the mark: not needed)
            highest = max(highest, pn)
            sent += data[0] & 0x0F == 0
            eb.receive_datagram(data, a.addr, t)
        for data, _ in eb.datagrams_to_send(t):
            ea.receive_datagram(data, b.addr, t)
    assert highest == first + behind
    assert sum(isinstance(e, MessageReceived) for e in eb.events()) == sent
    rejections = eb.stats.replay_rejections
    eb.receive_datagram(withheld, ATTACKER, t)
    got = [e.data for e in eb.events() if isinstance(e, MessageReceived)]
    if behind < PROTOCOL_REPLAY_WINDOW:
        assert got == [b"withheld"], f"{behind} behind: refused by a window under 1024"
        assert eb.stats.replay_rejections == rejections
    else:
        assert got == []
        assert eb.stats.replay_rejections == rejections + 1


# ------------------------------------------------------------------ AEAD cost of a forgery


@pytest.mark.parametrize("phase", ["same-phase", "other-phase"])
def test_a_forgery_to_a_live_session_costs_exactly_one_aead_open(
        phase: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forged DATA (random body, fresh packet numbers) to a session that heard
    from its peer a moment ago: docs/protocol.md section 6 step 5 opens each with the one key its
    phase names. The catch-up keys (two and more updates ahead) are for a peer
    silent for KEY_UPDATE_MIN_INTERVAL only; tried on every packet, they would
    let each forgery buy two or three AEAD opens."""
    opens = [0]

    class CountingAESGCM:
        """The real AESGCM, counting decryptions."""

        def __init__(self, key: bytes) -> None:
            self._inner = AESGCM(key)

        def encrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
            return self._inner.encrypt(nonce, data, aad)

        def decrypt(self, nonce: bytes, data: bytes | memoryview,
                    aad: bytes | memoryview | None) -> bytes:
            opens[0] += 1
            return self._inner.decrypt(nonce, data, aad)

    monkeypatch.setattr(aead, "AESGCM", CountingAESGCM)
    link = Link(58)
    a, b = link.add("a"), link.add("b")
    cid_a, cid_b = link.establish(a, b)
    link.send(a, cid_a, b"recent")
    link.advance(0.1)
    assert b.payloads() == [b"recent"]
    session = b.endpoint.sessions[cid_b]
    keys = session.recv_keys
    assert keys is not None and link.now - session.last_recv_at < 1.0
    key_phase = keys.phase if phase == "same-phase" else keys.phase ^ 1

    def all_opens() -> int:  # the native datapath's AEAD counts its own opens
        native = intentra.native.module().aead_opens() if intentra.native.available() else 0
        return opens[0] + native

    crypto, before = b.endpoint.stats.packets_dropped_crypto, all_opens()
    for i in range(50):
        forged = (pack_header(PacketType.DATA, Intent.REALTIME, 0, key_phase, 10, cid_b,
                              5000 + i, 0) + bytes((i * 7 + j) & 0xFF for j in range(26)))
        b.endpoint.receive_datagram(forged, ATTACKER, link.now)
    cost = all_opens() - before
    assert cost == 50, f"50 forgeries cost {cost} AEAD opens"
    assert b.endpoint.stats.packets_dropped_crypto == crypto + 50
    link.send(a, cid_a, b"still works")
    link.advance(0.1)
    assert b.payloads() == [b"recent", b"still works"]


# ------------------------------------------------------------------ strikes paced under the decay


PROTOCOL_STRIKE_THRESHOLD: Final = 10
PROTOCOL_STRIKE_DECAY: Final = 5.0


def test_violations_paced_just_under_strike_decay_still_close_the_session() -> None:
    """A hostile peer waits 0.9 x STRIKE_DECAY between violations, hoping the
    count decays. docs/protocol.md section 10 measures the decay from the previous strike, so the
    count only grows: the 10th violation (docs/protocol.md section 2, default configuration) closes
    the session."""
    link = Link(59)
    a, b = link.add("attacker"), link.add("victim")
    cid_a, cid_b = link.establish(a, b)
    h = Hostile(link, a, cid_a, b)
    session = b.endpoint.sessions[cid_b]
    for i in range(PROTOCOL_STRIKE_THRESHOLD):
        assert b.established(cid_b), f"closed after {i} strikes"
        h.deliver(h.ack(session.send_window.next_rseq))  # acknowledges an rseq never sent
        assert session.strikes == i + 1
        link.advance(0.9 * PROTOCOL_STRIKE_DECAY)
    closed = b.closed(cid_b)
    assert closed is not None and closed.reason is CloseReason.PROTOCOL_VIOLATION
    assert b.endpoint.stats.strike_events == PROTOCOL_STRIKE_THRESHOLD


# ------------------------------------------------------------------ protocol.md section 2 defaults


PROTOCOL_SECTION_2: Final[dict[str, object]] = {
    "max_connections": 10_000,
    "max_handshakes_in_flight": 100,
    "max_handshakes_per_ip": 5,
    "handshake_timeout": 5.0,
    "idle_timeout": 60.0,
    "keepalive_interval": 15.0,
    "rate_limit_pps": 10_000,
    "rate_limit_burst": 500,
    "strike_threshold": 10,
    "strike_decay": 5.0,
    "max_reliable_in_flight": 256,
    "max_reorder_buffer": 1_310_720,
    "max_message_size": 1 << 20,
    "max_realtime_reassembly": 2 << 20,
    "max_realtime_reassembly_total": 32 << 20,
    "replay_window": 1024,
    "cookie_rotation": 120.0,
    "require_cookie": True,  # protocol.md §7: cookies required by default
    "initial_rto": 0.25,
    "min_rto": 0.02,
    "max_rto": 2.0,
    "max_retransmissions": 10,
    "ack_delay": 0.01,
    "max_datagram": 1200,
    "key_update_packets": 2**24,
    "key_update_time": 120.0,
    "key_update_min_interval": 10.0,
    "pn_limit": 2**62,
    "initial_pn": 1,  # docs/protocol.md section 4: "1, 2, 3"
}
"""docs/protocol.md section 2's table, written out (tests never read the document)."""


@pytest.mark.parametrize("name", list(PROTOCOL_SECTION_2))
def test_the_default_limits_are_spec_section_2(name: str) -> None:
    """An endpoint configured with nothing gets every limit docs/protocol.md section 2 sets;
    a weaker default would weaken every deployment that trusts the defaults."""
    assert getattr(EndpointConfig(), name) == PROTOCOL_SECTION_2[name]
