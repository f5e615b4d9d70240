"""Adversarial: an attacker who sees and injects (but cannot drop) must not kill a handshake.

Issue 9 item 2. The attacker reads every datagram (so it knows the conn_ids of
a handshake, its HELLO and RESPONSE) and injects from any address, at the rates
below, interleaved with the genuine flow on the seeded link's fake clock:

- forged FINISH with the ids of a RESPONSE, 5,000/s, at the responder: before
  the fix every failed FINISH locked the pending handshake for 125 ms, the
  genuine FINISH included, and 0 of 20 handshakes completed;
- forged COOKIE replies from the responder's address, 1,000/s per handshake:
  the initiator took one cookie per RTO, always a forged one; 0 of 10 completed;
- one RESPONSE made with the attacker's own static key (a valid Noise message
  from the HELLO's msg1) ahead of the genuine one: a pinned initiator dropped the
  handshake at once and ignored the genuine RESPONSE;
- forged RESPONSEs of random bytes, 1,000/s: each cost the initiator a Noise
  read (a DH) with no limit; now they are paid from a small budget.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

import pytest

from corelink import Datagram, Link, Node, is_hs, seeded_key
from intentra.config import EndpointConfig
from intentra.constants import HEADER_LEN, HsKind
from intentra.core.noise import InitiatorHandshake, ResponderHandshake
from intentra.core.wire import pack_cookie_reply, pack_finish, pack_response
from intentra.events import Address, HandshakeCompleted, HandshakeConfirmed, HandshakeFailed

HS_TIMEOUT: Final = EndpointConfig().handshake_timeout
ATTACKER: Final[Address] = ("192.0.2.66", 6666)

Forge = Callable[[Link, random.Random], list[tuple[bytes, Address, Node]]]


def run_under_fire(link: Link, until: float, rate: float, forge: Forge,
                   stop: Callable[[], bool] | None = None, seed: int = 9) -> int:
    """Run the link to ``until`` while the attacker injects ``rate`` datagrams a second.

    Every 1/rate seconds ``forge`` is asked what the attacker can send given what it
    has seen so far (``link.sent``); one of its candidates, in turn, is delivered.
    Returns how many forgeries were delivered.
    """
    rng = random.Random(seed)
    step = 1.0 / rate
    turn = 0
    sent = 0
    t = link.now
    while t < until:
        t += step
        if link.run(t, stop):
            break
        options = forge(link, rng)
        if options:
            data, src, dst = options[turn % len(options)]
            turn += 1
            link.deliver(data, src, dst)
            sent += 1
    return sent


def seen(link: Link, kind: HsKind) -> list[Datagram]:
    return [d for d in link.sent if d.hs_kind is kind]


def clients_and_server(link: Link, count: int) -> tuple[list[Node], Node]:
    server = link.add("server")
    clients = [link.add(f"client-{i}") for i in range(count)]
    return clients, server


def confirmed(node: Node) -> int:
    return len(node.of_type(HandshakeConfirmed))


# ------------------------------------------------------------------ a. forged FINISH


def test_forged_finish_flood_does_not_block_the_genuine_finish() -> None:
    link = Link(21)
    clients, server = clients_and_server(link, 20)
    by_addr = {c.addr: c for c in clients}

    def forge(link: Link, rng: random.Random) -> list[tuple[bytes, Address, Node]]:
        # Every RESPONSE shows both ids; the FINISH is "sent" from the client's address.
        out = []
        for d in seen(link, HsKind.RESPONSE):
            responder_id = int.from_bytes(d.data[HEADER_LEN + 1:HEADER_LEN + 5], "big")
            out.append((pack_finish(responder_id, d.conn_id, rng.randbytes(64)),
                        d.dst, server))
        return out

    for c in clients:
        link.connect(c, server)
    forged = run_under_fire(link, HS_TIMEOUT, 5000.0, forge,
                            stop=lambda: len(server.of_type(HandshakeCompleted)) == 20)
    done = len(server.of_type(HandshakeCompleted))
    assert forged > 20
    assert done == 20, f"{done} of 20 handshakes completed under {forged} forged FINISHes"
    link.advance(0.1)
    assert all(confirmed(c) == 1 for c in clients)
    assert set(by_addr) == {e.address for e in server.of_type(HandshakeCompleted)}


def test_a_forged_finish_costs_one_aes_gcm_open_and_no_noise_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    link = Link(22)
    [client], server = clients_and_server(link, 1)
    calls = [0]
    real = ResponderHandshake.consume_finish

    def counted(self: ResponderHandshake, msg3: bytes) -> object:
        calls[0] += 1
        return real(self, msg3)

    monkeypatch.setattr(ResponderHandshake, "consume_finish", counted)
    held: list[Datagram] = []

    def hold_finish(d: Datagram) -> bool:
        if d.hs_kind is HsKind.FINISH and not held:
            held.append(d)
            return True
        return False

    link.path(client, server).drop = hold_finish
    link.connect(client, server)
    assert link.run(1.0, lambda: bool(held))
    genuine = held[0].data
    crypto = server.endpoint.stats.packets_dropped_crypto
    rng = random.Random(1)
    for _ in range(200):
        forged = genuine[:HEADER_LEN + 5] + rng.randbytes(64)
        link.deliver(forged, ATTACKER, server)
    assert calls[0] == 0
    assert server.endpoint.stats.packets_dropped_crypto == crypto + 200
    # The genuine FINISH right behind them completes at once: no lockout.
    link.deliver(genuine, client.addr, server)
    assert calls[0] == 1
    assert len(server.of_type(HandshakeCompleted)) == 1


# ------------------------------------------------------------------ b. forged COOKIE


def test_forged_cookie_flood_does_not_block_handshakes() -> None:
    link = Link(23)
    clients, server = clients_and_server(link, 10)

    def forge(link: Link, rng: random.Random) -> list[tuple[bytes, Address, Node]]:
        # 1,000 forged COOKIEs a second for each initiator whose HELLO was seen.
        by_id = {d.data[HEADER_LEN + 1:HEADER_LEN + 5]: d for d in seen(link, HsKind.HELLO)}
        out = []
        for sid, d in by_id.items():
            node = next(c for c in clients if c.addr == d.src)
            if not node.of_type(HandshakeCompleted):
                out.append((pack_cookie_reply(int.from_bytes(sid, "big"), rng.randbytes(16)),
                            server.addr, node))
        return out

    for c in clients:
        link.connect(c, server)
    forged = run_under_fire(link, HS_TIMEOUT, 10 * 1000.0, forge,
                            stop=lambda: all(confirmed(c) for c in clients))
    done = sum(1 for c in clients if confirmed(c))
    assert forged > 1000
    assert done == 10, f"{done} of 10 handshakes completed under {forged} forged COOKIEs"
    # What the flood bought: a bounded number of HELLOs, all to the responder.
    for c in clients:
        hellos = link.sent_by(c, is_hs(HsKind.HELLO))
        assert all(d.dst == server.addr for d in hellos)
        assert len(hellos) <= 4 * EndpointConfig().cookie_hellos * (HS_TIMEOUT / 0.25)


# ------------------------------------------------------------ c. a wrong-key RESPONSE


def mallory_response(hello: Datagram, key_seed: str) -> bytes:
    """A valid RESPONSE to ``hello`` made with Mallory's own static key."""
    msg1 = hello.data[HEADER_LEN + 21:HEADER_LEN + 53]
    hs = ResponderHandshake.create(seeded_key(key_seed).to_bytes(),
                                   random.Random(key_seed).randbytes(32), msg1)
    assert hs is not None
    sender = int.from_bytes(hello.data[HEADER_LEN + 1:HEADER_LEN + 5], "big")
    return pack_response(sender, 0x0BADC0DE, hs.msg2)


@pytest.mark.parametrize("how", ["pinned", "allow-list"])
def test_a_wrong_key_response_does_not_cost_the_genuine_one_its_place(how: str) -> None:
    link = Link(24)
    server = link.add("server")
    client = link.add("client", allowed_peers=[server.public] if how == "allow-list" else None)
    cid = client.endpoint.connect(server.addr, link.now,
                                  server.public if how == "pinned" else None)
    link.pump(client)
    [hello] = seen(link, HsKind.HELLO)
    # Mallory answers first, from the server's address, with her own key.
    link.deliver(mallory_response(hello, "mallory"), server.addr, client)
    assert client.endpoint.stats.handshakes_rejected == 1
    assert not client.of_type(HandshakeFailed)
    assert cid in client.endpoint.sessions
    assert link.run(link.now + 2.0, lambda: confirmed(client) == 1)
    [done] = client.of_type(HandshakeCompleted)
    assert done.peer_key == server.public
    assert link.sent_by(client, is_hs(HsKind.FINISH))


def test_a_responder_with_the_wrong_key_fails_with_authentication_at_the_timeout() -> None:
    link = Link(25)
    server = link.add("server")
    client = link.add("client")
    wrong = seeded_key("not the server").public_key.to_bytes()
    cid = link.connect(client, server, server_key=wrong)
    link.advance(HS_TIMEOUT - 0.1)
    assert not client.of_type(HandshakeFailed)
    link.advance(1.0)
    assert client.of_type(HandshakeFailed) == [HandshakeFailed(cid, server.addr,
                                                               "authentication")]
    # The responder resends the same RESPONSE; it is read (and counted) once.
    assert client.endpoint.stats.handshakes_rejected == 1
    assert not link.sent_by(client, is_hs(HsKind.FINISH))


# ------------------------------------------------- d. forged RESPONSEs: bounded work


def test_forged_responses_cost_bounded_noise_work_and_the_handshake_completes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    link = Link(26)
    server = link.add("server")
    client = link.add("client")
    cfg = client.endpoint.config
    calls = [0]
    real = InitiatorHandshake.consume_response

    def counted(self: InitiatorHandshake, msg2: bytes, payload: bytes = b"") -> object:
        calls[0] += 1
        return real(self, msg2, payload)

    monkeypatch.setattr(InitiatorHandshake, "consume_response", counted)
    hold = [True]
    link.path(server, client).drop = lambda d: hold[0] and d.hs_kind is HsKind.RESPONSE
    link.connect(client, server)

    def forge(link: Link, rng: random.Random) -> list[tuple[bytes, Address, Node]]:
        hellos = seen(link, HsKind.HELLO)
        if not hellos:
            return []
        return [(pack_response(hellos[0].conn_id or int.from_bytes(
            hellos[0].data[HEADER_LEN + 1:HEADER_LEN + 5], "big"), rng.randint(1, 2**32 - 1),
            rng.randbytes(96)), server.addr, client)]

    forged = run_under_fire(link, 2.0, 1000.0, forge)
    assert forged > 1900
    budget = cfg.handshake_attempt_burst + cfg.handshake_attempt_rate * link.now + 1
    assert calls[0] <= budget, f"{calls[0]} Noise reads for {forged} forged RESPONSEs"
    assert client.endpoint.stats.packets_dropped_rate_limit >= forged - budget
    # The flood stops; the genuine RESPONSE gets through and the handshake completes.
    hold[0] = False
    assert link.run(link.now + 3.0, lambda: confirmed(client) == 1)
