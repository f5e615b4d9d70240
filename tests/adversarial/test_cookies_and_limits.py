"""Adversarial: handshake cookies, HELLO floods and the handshake / connection limits.

What an attacker sends here, and what it must buy (docs/protocol.md sections 7, 10 and 11):

- HELLOs with forged cookies (random bytes of the right length, the wrong length,
  the HMAC of another master, other epochs), genuine cookies presented from another
  address, another port of the same IP, or after the secret rotated twice: each gets
  at most one COOKIE, never larger than the HELLO, and the responder keeps NO state
  (no session, no pending handshake, no per-IP count, no timer, no container grows).
- 10,000 HELLOs from 10,000 distinct sources without a valid cookie: no per-source
  state at all (every container of the endpoint and tracemalloc say so) and reply
  bytes never exceed request bytes, per packet and in total.
- Cookie-valid HELLOs: MAX_HANDSHAKES_IN_FLIGHT (100) and MAX_HANDSHAKES_PER_IP (5)
  hold exactly, free up after HANDSHAKE_TIMEOUT on the fake clock, and a legitimate
  client from a fresh IP completes while one IP floods. MAX_CONNECTIONS holds
  exactly (small configured values and the default 10,000); the refused HELLO is
  dropped and counted (``intentra_handshakes_rejected_total``), nothing is sent.

Cookies are recomputed here from the formula of protocol.md §7 with hmac/hashlib (an oracle that
does not use ``intentra.core.cookie``). Everything runs in the sans-I/O core with a
fake clock, or on the seeded in-memory link of ``corelink``.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import ipaddress
import math
import random
import socket
import tracemalloc
from collections.abc import Iterable, Sized
from typing import Final

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from corelink import Link, Node, is_hs, seeded_key, seeded_rng
from intentra.config import EndpointConfig
from intentra.constants import (
    HEADER_LEN,
    HELLO_PADDING,
    HS_BODY_LEN,
    HsKind,
    Intent,
    PacketType,
)
from intentra.core.endpoint import ConnectionLimitError, Endpoint
from intentra.core.session import SessionState
from intentra.core.wire import pack_header, pack_hello
from intentra.events import Address, HandshakeCompleted, HandshakeConfirmed, HandshakeFailed
from intentra.metrics import make_registry

MASTER: Final = bytes(range(0x40, 0x60))
OTHER_MASTER: Final = bytes(range(0x60, 0x80))
DEFAULTS: Final = EndpointConfig()
ROTATION: Final = DEFAULTS.cookie_rotation          # COOKIE_ROTATION, 120 s
HS_TIMEOUT: Final = DEFAULTS.handshake_timeout      # HANDSHAKE_TIMEOUT, 5 s
HELLO_LEN: Final = HEADER_LEN + HS_BODY_LEN[HsKind.HELLO]
T0: Final = 1000.5  # a fake-clock instant well inside epoch 8 (with wall_offset 0)

FAMILIES: Final[dict[str, Address]] = {
    "ipv4": ("198.51.100.7", 40001),
    "ipv6": ("2001:db8:5::7", 40001),
    "ipv6-4tuple": ("2001:db8:5::7", 40001, 0, 0),
}
FAMILY_IDS: Final = list(FAMILIES)


# ----------------------------------------------------------------- helpers


def spec_cookie(master: bytes, addr: Address, epoch: int) -> bytes:
    """docs/protocol.md section 7, from scratch: HMAC-SHA256(secret_n, ip || port)[:16]."""
    secret = hmac.new(master, b"intentra cookie" + epoch.to_bytes(8, "big"),
                      hashlib.sha256).digest()
    return hmac.new(secret, ip_port(addr), hashlib.sha256).digest()[:16]


def ip_port(addr: Address) -> bytes:
    """``ip (4 or 16 bytes) || port (2)`` of docs/protocol.md section 7, with the socket module."""
    host = str(addr[0])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host) + int(addr[1]).to_bytes(2, "big")


def epoch_at(ep: Endpoint, now: float) -> int:
    return math.floor((now + ep.wall_offset) / ep.config.cookie_rotation)


def cookie_now(ep: Endpoint, addr: Address, now: float, master: bytes = MASTER) -> bytes:
    return spec_cookie(master, addr, epoch_at(ep, now))


def ephemeral(seed: object) -> bytes:
    """A genuine X25519 public key (Noise msg 1), reproducible from ``seed``."""
    raw = hashlib.sha256(f"eph-{seed}".encode()).digest()
    return X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()


def raw_hello(sender_id: int, cookie_field: bytes, msg1: bytes) -> bytes:
    """A HELLO built by hand, with a header that matches whatever the cookie length is."""
    body = (bytes([HsKind.HELLO]) + sender_id.to_bytes(4, "big") + cookie_field + msg1
            + bytes(HELLO_PADDING))
    return pack_header(PacketType.HS, 0, 0, 0, len(body), 0, 0, 0) + body


def valid_hello(ep: Endpoint, addr: Address, now: float, seed: object,
                sender_id: int = 0x0BAD_F00D) -> bytes:
    return raw_hello(sender_id, cookie_now(ep, addr, now), ephemeral(seed))


def other_ip(addr: Address, step: int) -> Address:
    """The same kind of address tuple, ``step`` addresses further on."""
    return (str(ipaddress.ip_address(addr[0]) + step), *addr[1:])


def other_port(addr: Address, step: int) -> Address:
    return (addr[0], (int(addr[1]) + step) % 65536, *addr[2:])


def distinct_sources(count: int, family: str) -> list[Address]:
    if family == "ipv4":
        return [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1024 + i % 60000)
                for i in range(count)]
    return [(f"2001:db8:{0xf100 + (i >> 16):x}:{i & 0xFFFF:x}::1", 1024 + i % 60000)
            for i in range(count)]


def source_key(addr: Address) -> str:
    """What MAX_HANDSHAKES_PER_IP counts: the IPv4 address, or the IPv6 /64."""
    ip = ipaddress.ip_address(addr[0])
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((addr[0], 64), strict=False))
    return str(addr[0])


def server(config: EndpointConfig | None = None, wall_offset: float = 0.0,
           master: bytes = MASTER) -> Endpoint:
    key = seeded_key("adv-cookie-server")
    return Endpoint(key.to_bytes(), seeded_rng("adv-cookie-server"), config,
                    cookie_master=master, wall_offset=wall_offset)


def parse_hs(data: bytes) -> tuple[int, int, int, bytes]:
    """(kind, header conn_id, sender_id, rest) of an HS datagram, parsed by hand."""
    assert data[0] == (2 << 4) | PacketType.HS  # version 2
    return (data[HEADER_LEN], int.from_bytes(data[4:8], "big"),
            int.from_bytes(data[HEADER_LEN + 1:HEADER_LEN + 5], "big"), data[HEADER_LEN + 5:])


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def metric(ep: Endpoint, name: str) -> float:
    """One sample of the endpoint's Prometheus exposition (docs/protocol.md section 11 names)."""
    value = make_registry(ep).get_sample_value(name)
    assert value is not None, f"{name} is not exported"
    return value


def footprint(root: object) -> dict[str, int]:
    """len() of every container reachable from ``root`` through intentra objects.

    Walks the attributes (``__dict__`` and ``__slots__``) of the endpoint and of
    every intentra object it holds directly (cookie jar, stats, config ...), and
    records the size of each dict, list, set, deque or tuple found on the way.
    """
    sizes: dict[str, int] = {}
    seen: set[int] = set()

    def attrs(obj: object) -> Iterable[tuple[str, object]]:
        names: list[str] = list(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            names.extend([slots] if isinstance(slots, str) else slots)
        for name in names:
            if hasattr(obj, name):
                yield name, getattr(obj, name)

    def walk(obj: object, path: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for name, value in attrs(obj):
            where = f"{path}.{name}"
            if isinstance(value, str | bytes):
                continue
            if isinstance(value, Sized):
                sizes[where] = len(value)
            elif type(value).__module__.startswith("intentra"):
                walk(value, where)

    walk(root, type(root).__name__)
    return sizes


def assert_no_state(ep: Endpoint, sizes_before: dict[str, int]) -> None:
    """Nothing about any source is held: no session, pending handshake, per-IP
    count, timer, or container that grew."""
    assert ep.sessions == {}
    assert ep.handshakes_in_flight == 0
    assert ep._pending_hello == {}
    assert ep._pending_per_ip == {}
    assert ep._by_peer_key == {}
    assert ep.get_timer() is None
    assert ep.events() == []
    assert footprint(ep) == sizes_before


def one_cookie_reply(out: list[tuple[bytes, Address]], request: bytes, src: Address,
                     sender_id: int, expected_cookie: bytes) -> None:
    """Exactly one COOKIE, to the source, for its id, carrying the source's own cookie,
    and no larger than the HELLO that caused it."""
    assert len(out) == 1, out
    [(reply, dst)] = out
    assert dst == src
    assert len(reply) <= len(request)
    kind, conn_id, reply_sender, rest = parse_hs(reply)
    assert (kind, conn_id, reply_sender) == (HsKind.COOKIE, sender_id, 0)
    assert rest == expected_cookie


def warmed(ep: Endpoint, now: float) -> dict[str, int]:
    """Let the endpoint derive this epoch's secrets (its bounded cache), drain, and
    return its footprint: the baseline an attack must leave unchanged."""
    ep.receive_datagram(raw_hello(1, bytes(16), ephemeral("warm")), ("192.0.2.250", 9), now)
    ep.datagrams_to_send(now)
    ep.events()
    return footprint(ep)


# ----------------------------------------------------------------- sanity of the oracle


def test_hand_built_hello_is_the_wire_hello_and_the_oracle_cookie_is_accepted() -> None:
    """The helpers this file relies on agree with the implementation (otherwise every
    'refused' below could be refusing for the wrong reason)."""
    ep = server()
    src = FAMILIES["ipv4"]
    msg1 = ephemeral(1)
    cookie = cookie_now(ep, src, T0)
    assert raw_hello(77, cookie, msg1) == pack_hello(77, cookie, msg1)
    assert len(raw_hello(77, cookie, msg1)) == HELLO_LEN
    ep.receive_datagram(raw_hello(77, cookie, msg1), src, T0)
    [(reply, dst)] = ep.datagrams_to_send(T0)
    assert dst == src and parse_hs(reply)[0] == HsKind.RESPONSE
    assert ep.handshakes_in_flight == 1


# ----------------------------------------------------------------- 1. forged cookies


def _forgeries() -> dict[str, object]:
    """name -> how the forged 16-byte cookie is made: bytes, or (master, epoch shift)."""
    rng = random.Random("forged-cookies")
    forged: dict[str, object] = {f"random-{i}": rng.randbytes(16) for i in range(6)}
    forged |= {
        "zeros": bytes(16),
        "ones": b"\xff" * 16,
        "other-master": (OTHER_MASTER, 0),
        "other-master-prev": (OTHER_MASTER, -1),
        "epoch-plus-1": (MASTER, +1),
        "epoch-minus-2": (MASTER, -2),
        "epoch-minus-3": (MASTER, -3),
        "first-byte-flipped": ("flip", 0),
        "last-byte-flipped": ("flip", 15),
        "full-hmac-prefix-shifted": ("shift", 1),
    }
    return forged


FORGERIES: Final = _forgeries()


def forged_cookie(how: object, ep: Endpoint, src: Address, now: float) -> bytes:
    if isinstance(how, bytes):
        return how
    assert isinstance(how, tuple)
    kind, arg = how
    genuine = cookie_now(ep, src, now)
    if kind == "flip":
        assert isinstance(arg, int)
        out = bytearray(genuine)
        out[arg] ^= 0x01
        return bytes(out)
    if kind == "shift":  # bytes 1..16 of the full HMAC instead of 0..15
        secret = hmac.new(MASTER, b"intentra cookie" + epoch_at(ep, now).to_bytes(8, "big"),
                          hashlib.sha256).digest()
        return hmac.new(secret, ip_port(src), hashlib.sha256).digest()[1:17]
    assert isinstance(kind, bytes) and isinstance(arg, int)
    return spec_cookie(kind, src, epoch_at(ep, now) + arg)


@pytest.mark.parametrize("family", FAMILY_IDS)
@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_cookie_gets_one_small_cookie_reply_and_no_state(
        forgery: str, family: str) -> None:
    ep = server()
    src = FAMILIES[family]
    baseline = warmed(ep, T0)
    cookie = forged_cookie(FORGERIES[forgery], ep, src, T0)
    assert cookie != cookie_now(ep, src, T0)
    request = raw_hello(0x5EED, cookie, ephemeral(forgery))
    stats = ep.stats.as_dict()
    replies = metric(ep, "intentra_cookie_replies_total")

    ep.receive_datagram(request, src, T0)

    one_cookie_reply(ep.datagrams_to_send(T0), request, src, 0x5EED, cookie_now(ep, src, T0))
    assert stats_delta(stats, ep.stats.as_dict()) == {
        "packets_received": 1, "packets_sent": 1, "cookie_replies": 1}
    assert metric(ep, "intentra_cookie_replies_total") == replies + 1
    assert metric(ep, "intentra_handshake_in_flight") == 0
    assert_no_state(ep, baseline)
    # The same HELLO with the genuine cookie is accepted: only the cookie was wrong.
    ep.receive_datagram(raw_hello(0x5EED, cookie_now(ep, src, T0), ephemeral(forgery)), src, T0)
    [(reply, _)] = ep.datagrams_to_send(T0)
    assert parse_hs(reply)[0] == HsKind.RESPONSE
    assert ep.handshakes_in_flight == 1


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("length", [0, 1, 8, 15, 17, 20, 32, 48])
def test_cookie_of_the_wrong_length_is_malformed_and_gets_no_reply(
        length: int, family: str) -> None:
    ep = server()
    src = FAMILIES[family]
    baseline = warmed(ep, T0)
    genuine = cookie_now(ep, src, T0)
    cookie = (genuine * 3)[:length]  # even the genuine bytes, cut or stretched
    request = raw_hello(0x5EED, cookie, ephemeral(length))
    assert len(request) == HELLO_LEN - 16 + length
    stats = ep.stats.as_dict()

    ep.receive_datagram(request, src, T0)

    assert ep.datagrams_to_send(T0) == []
    assert stats_delta(stats, ep.stats.as_dict()) == {
        "packets_received": 1, "packets_dropped_malformed": 1}
    assert_no_state(ep, baseline)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("extra", [-1, 1, 16], ids=["short-1", "long+1", "long+16"])
def test_hello_whose_header_length_disagrees_with_the_datagram_is_malformed(
        extra: int, family: str) -> None:
    ep = server()
    src = FAMILIES[family]
    baseline = warmed(ep, T0)
    genuine = valid_hello(ep, src, T0, "len")
    request = genuine[:extra] if extra < 0 else genuine + bytes(extra)
    stats = ep.stats.as_dict()

    ep.receive_datagram(request, src, T0)

    assert ep.datagrams_to_send(T0) == []
    assert stats_delta(stats, ep.stats.as_dict()) == {
        "packets_received": 1, "packets_dropped_malformed": 1}
    assert_no_state(ep, baseline)


# ----------------------------------------------------------------- 1. cookie from elsewhere


ELSEWHERE: Final[dict[str, tuple[str, Address]]] = {
    # name -> (family of the cookie's owner, the address that presents it)
    "v4-other-ip": ("ipv4", other_ip(FAMILIES["ipv4"], 1)),
    "v4-far-ip": ("ipv4", ("203.0.113.200", 40001)),
    "v4-other-port": ("ipv4", other_port(FAMILIES["ipv4"], 1)),
    "v4-port-zero": ("ipv4", other_port(FAMILIES["ipv4"], 65536 - 40001)),
    "v4-as-mapped-v6": ("ipv4", ("::ffff:198.51.100.7", 40001)),
    "v6-other-ip": ("ipv6", other_ip(FAMILIES["ipv6"], 1)),
    "v6-other-prefix": ("ipv6", ("2001:db8:6::7", 40001)),
    "v6-other-port": ("ipv6", other_port(FAMILIES["ipv6"], 1)),
    "v6-4tuple-other-port": ("ipv6-4tuple", other_port(FAMILIES["ipv6-4tuple"], 7)),
    "v6-as-v4": ("ipv6", ("198.51.100.7", 40001)),
}


@pytest.mark.parametrize("case", list(ELSEWHERE))
def test_valid_cookie_presented_from_another_address_is_refused(case: str) -> None:
    owner_family, thief = ELSEWHERE[case]
    owner = FAMILIES[owner_family]
    ep = server()
    baseline = warmed(ep, T0)
    stolen = cookie_now(ep, owner, T0)
    assert stolen != cookie_now(ep, thief, T0)
    request = raw_hello(0x7E1F, stolen, ephemeral(case))
    stats = ep.stats.as_dict()

    ep.receive_datagram(request, thief, T0)

    # The thief learns only its own address's cookie, which it could ask for anyway.
    one_cookie_reply(ep.datagrams_to_send(T0), request, thief, 0x7E1F, cookie_now(ep, thief, T0))
    assert stats_delta(stats, ep.stats.as_dict()) == {
        "packets_received": 1, "packets_sent": 1, "cookie_replies": 1}
    assert_no_state(ep, baseline)
    # The owner can still use it.
    ep.receive_datagram(raw_hello(0x0111, stolen, ephemeral("owner")), owner, T0)
    [(reply, dst)] = ep.datagrams_to_send(T0)
    assert dst == owner and parse_hs(reply)[0] == HsKind.RESPONSE


# ----------------------------------------------------------------- 1. rotation


# (seconds into an epoch when the cookie is issued, seconds later it is presented,
#  whether docs/protocol.md accepts it: epochs n and n - 1 only)
ROTATION_CASES: Final = [
    ("same-epoch-at-once", 0.5, 0.0, True),
    ("same-epoch-end", 0.5, ROTATION - 0.5 - 1e-6, True),
    ("next-epoch-start", 0.5, ROTATION - 0.5, True),
    ("next-epoch-end", 0.5, 2 * ROTATION - 0.5 - 1e-6, True),
    ("issued-at-epoch-end-next-epoch-end", ROTATION - 0.01, ROTATION, True),
    ("two-rotations-later-exactly", 0.5, 2 * ROTATION - 0.5, False),
    ("issued-at-epoch-end-0.02s-past-next", ROTATION - 0.01, ROTATION + 0.02, False),
    ("two-rotations-plus", 0.5, 2 * ROTATION + 30.0, False),
    ("a-day-later", 0.5, 86400.0, False),
]


@pytest.mark.parametrize("wall_offset", [0.0, 1_700_000_037.25], ids=["wall0", "wall-unix"])
@pytest.mark.parametrize(("issued_in", "later", "accepted"),
                         [c[1:] for c in ROTATION_CASES], ids=[c[0] for c in ROTATION_CASES])
def test_cookie_from_the_current_and_previous_secret_only(
        issued_in: float, later: float, accepted: bool, wall_offset: float) -> None:
    """The cookie is obtained the way an initiator does (COOKIE reply to a HELLO),
    then presented again on the fake clock; epochs count in unix time (now +
    wall_offset)."""
    ep = server(wall_offset=wall_offset)
    src = FAMILIES["ipv4"]
    first_epoch = math.floor(wall_offset / ROTATION) + 10
    issued_at = first_epoch * ROTATION + issued_in - wall_offset
    assert epoch_at(ep, issued_at) == first_epoch
    msg1 = ephemeral("rot")
    ep.receive_datagram(raw_hello(0x1234, bytes(16), msg1), src, issued_at)
    [(reply, _)] = ep.datagrams_to_send(issued_at)
    cookie = parse_hs(reply)[3]
    assert cookie == spec_cookie(MASTER, src, first_epoch)
    now = issued_at + later
    assert (epoch_at(ep, now) - first_epoch in (0, 1)) == accepted  # protocol.md §7's rule
    baseline = warmed(ep, now)
    stats = ep.stats.as_dict()

    request = raw_hello(0x1234, cookie, msg1)
    ep.receive_datagram(request, src, now)
    out = ep.datagrams_to_send(now)

    if accepted:
        [(response, dst)] = out
        assert dst == src and parse_hs(response)[0] == HsKind.RESPONSE
        assert len(response) <= len(request)
        assert ep.handshakes_in_flight == 1
        assert stats_delta(stats, ep.stats.as_dict()) == {"packets_received": 1,
                                                         "packets_sent": 1}
    else:
        one_cookie_reply(out, request, src, 0x1234, cookie_now(ep, src, now))
        assert stats_delta(stats, ep.stats.as_dict()) == {
            "packets_received": 1, "packets_sent": 1, "cookie_replies": 1}
        assert_no_state(ep, baseline)


@pytest.mark.parametrize("rotation", [1.0, 10.0, 600.0])
def test_configured_rotation_bounds_a_cookie_to_two_epochs(rotation: float) -> None:
    ep = server(EndpointConfig(cookie_rotation=rotation))
    src = FAMILIES["ipv6"]
    n = 50
    issued_at = n * rotation + rotation / 4
    cookie = spec_cookie(MASTER, src, n)
    verdicts = []
    for k, now in enumerate([issued_at, issued_at + rotation, (n + 2) * rotation,
                             (n + 2) * rotation + rotation / 2]):
        ep.receive_datagram(raw_hello(0x100 + k, cookie, ephemeral((rotation, k))), src, now)
        [(reply, _)] = ep.datagrams_to_send(now)
        verdicts.append(parse_hs(reply)[0])
    assert verdicts == [HsKind.RESPONSE, HsKind.RESPONSE, HsKind.COOKIE, HsKind.COOKIE]
    assert ep.handshakes_in_flight == 2


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_captured_hello_replayed_after_two_rotations_creates_nothing(family: str) -> None:
    """A real initiator's cookie-bearing HELLO, captured off the wire and replayed from
    the initiator's own address once the secret has rotated twice: refused with a
    COOKIE, no pending handshake, no session, in-flight gauge unchanged."""
    base: Address = FAMILIES[family]
    link = Link(seed=41)
    srv = link.add("srv", cookie_master=MASTER, addr=other_ip(base, 100))
    cli = link.add("cli", addr=base)
    link.establish(cli, srv)
    hellos = link.sent_by(cli, is_hs(HsKind.HELLO))
    captured = hellos[-1].data
    assert parse_hs(captured)[3][:16] == cookie_now(srv.endpoint, cli.addr, hellos[-1].sent_at)
    ep = srv.endpoint
    assert len(ep.sessions) == 1
    later = link.now + 2 * ROTATION
    assert epoch_at(ep, later) - epoch_at(ep, hellos[-1].sent_at) == 2
    ep.handle_timer(later)  # idle timeout: the session is gone, like its HELLO memory
    ep.datagrams_to_send(later)
    ep.events()
    assert ep.sessions == {}
    baseline = warmed(ep, later)
    stats = ep.stats.as_dict()

    ep.receive_datagram(captured, cli.addr, later)

    one_cookie_reply(ep.datagrams_to_send(later), captured, cli.addr,
                     parse_hs(captured)[2], cookie_now(ep, cli.addr, later))
    assert stats_delta(stats, ep.stats.as_dict()) == {
        "packets_received": 1, "packets_sent": 1, "cookie_replies": 1}
    assert metric(ep, "intentra_handshake_in_flight") == 0
    assert_no_state(ep, baseline)


# ----------------------------------------------------------------- 2. the 10,000 HELLO flood


FLOOD: Final = 10_000
FLOOD_KINDS: Final = ["zero-cookie", "random-cookie", "harvested-cookie", "expired-cookie",
                      "other-master-cookie"]


def flood_cookie(kind: str, ep: Endpoint, src: Address, now: float, rng: random.Random,
                 harvested: bytes) -> bytes:
    if kind == "zero-cookie":
        return bytes(16)
    if kind == "random-cookie":
        return rng.randbytes(16)
    if kind == "harvested-cookie":  # one genuine cookie (the attacker's own), sprayed
        return harvested
    if kind == "expired-cookie":   # each source's own cookie, two rotations old
        return spec_cookie(MASTER, src, epoch_at(ep, now) - 2)
    return spec_cookie(OTHER_MASTER, src, epoch_at(ep, now))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("kind", FLOOD_KINDS)
def test_hello_flood_from_10000_sources_keeps_no_state_and_never_amplifies(
        kind: str, family: str) -> None:
    ep = server()
    now = T0
    rng = random.Random(f"flood-{kind}-{family}")
    sources = distinct_sources(FLOOD, family)
    assert len(set(sources)) == FLOOD and len({s[0] for s in sources}) == FLOOD
    harvested = cookie_now(ep, ("192.0.2.66", 5000), now)
    batch = [(raw_hello(rng.randrange(1, 1 << 32), flood_cookie(kind, ep, src, now, rng,
                                                                harvested), rng.randbytes(32)),
              src) for src in sources]
    baseline = warmed(ep, now)
    stats = ep.stats.as_dict()

    ep.receive_datagrams(batch, now)
    out = ep.datagrams_to_send(now)

    # One COOKIE per HELLO, each to its own source, none larger than its HELLO.
    assert len(out) == FLOOD
    sent_in = sum(len(d) for d, _ in batch)
    sent_out = 0
    for (request, src), (reply, dst) in zip(batch, out, strict=True):
        assert dst == src
        assert len(reply) <= len(request)
        sent_out += len(reply)
        assert parse_hs(reply)[0] == HsKind.COOKIE
    assert sent_out <= sent_in
    assert stats_delta(stats, ep.stats.as_dict()) == {
        "packets_received": FLOOD, "packets_sent": FLOOD, "cookie_replies": FLOOD}
    assert_no_state(ep, baseline)
    # A legitimate client is served right after the flood.
    legit: Address = ("192.0.2.10", 7000)
    ep.receive_datagram(valid_hello(ep, legit, now, "legit"), legit, now)
    [(reply, dst)] = ep.datagrams_to_send(now)
    assert dst == legit and parse_hs(reply)[0] == HsKind.RESPONSE


def test_hello_flood_allocates_nothing_that_stays() -> None:
    """tracemalloc over the endpoint: 10,000 cookie-less HELLOs from 10,000 sources
    (IPv4 and IPv6 mixed) leave no memory allocated by intentra behind."""
    ep = server()
    now = T0
    rng = random.Random("flood-mem")
    sources = distinct_sources(FLOOD // 2, "ipv4") + distinct_sources(FLOOD // 2, "ipv6")
    batch = [(raw_hello(rng.randrange(1, 1 << 32), rng.randbytes(16), rng.randbytes(32)), src)
             for src in sources]
    warm = distinct_sources(200, "ipv4")
    for src in warm:  # reach steady state (caches, interned objects) first
        ep.receive_datagram(raw_hello(9, bytes(16), bytes(32)), other_port(src, 1), now)
    ep.datagrams_to_send(now)
    baseline = footprint(ep)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        reply_bytes = 0
        for i in range(0, FLOOD, 500):
            ep.receive_datagrams(batch[i:i + 500], now)
            reply_bytes += sum(len(d) for d, _ in ep.datagrams_to_send(now))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    only_intentra = [tracemalloc.Filter(True, "*intentra*")]
    grown = sum(stat.size_diff for stat in after.filter_traces(only_intentra).compare_to(
        before.filter_traces(only_intentra), "filename"))
    # Per-source state would be >= 10,000 x (dict slot + key + value) = hundreds of KiB.
    assert grown < 8 * 1024, f"intentra kept {grown} bytes after the flood"
    assert reply_bytes <= sum(len(d) for d, _ in batch)
    assert footprint(ep) == baseline
    assert ep.sessions == {} and ep._pending_per_ip == {} and ep.get_timer() is None


# ----------------------------------------------------------------- 3. handshake limits


def fill(ep: Endpoint, sources: list[Address], now: float, tag: object
         ) -> list[tuple[bytes, bytes]]:
    """Send one cookie-valid HELLO from each source; return (HELLO, reply) pairs."""
    pairs = []
    for i, src in enumerate(sources):
        request = valid_hello(ep, src, now, (tag, i), sender_id=0x1000 + i)
        ep.receive_datagram(request, src, now)
        out = ep.datagrams_to_send(now)
        pairs.append((request, out[0][0] if out else b""))
    return pairs


def assert_refused(ep: Endpoint, src: Address, now: float, seed: object) -> None:
    """A cookie-valid HELLO over a limit: dropped without reply, counted, no state."""
    stats = ep.stats.as_dict()
    sessions = dict(ep.sessions)
    in_flight = ep.handshakes_in_flight
    per_ip = dict(ep._pending_per_ip)
    rejected = metric(ep, "intentra_handshakes_rejected_total")
    ep.receive_datagram(valid_hello(ep, src, now, seed), src, now)
    assert ep.datagrams_to_send(now) == []
    assert stats_delta(stats, ep.stats.as_dict()) == {"packets_received": 1,
                                                     "handshakes_rejected": 1}
    assert metric(ep, "intentra_handshakes_rejected_total") == rejected + 1
    assert ep.sessions == sessions
    assert ep.handshakes_in_flight == in_flight
    assert ep._pending_per_ip == per_ip


def responses(pairs: list[tuple[bytes, bytes]]) -> int:
    return sum(1 for _, reply in pairs if reply and parse_hs(reply)[0] == HsKind.RESPONSE)


@pytest.mark.parametrize("limit", [1, 7, DEFAULTS.max_handshakes_in_flight])
def test_global_pending_limit_holds_exactly(limit: int) -> None:
    """MAX_HANDSHAKES_IN_FLIGHT is never exceeded; a full table makes room by dropping
    its oldest pending handshake (issue 9 item 3), counted as rejected."""
    config = (EndpointConfig(max_handshakes_in_flight=limit)
              if limit != DEFAULTS.max_handshakes_in_flight else None)
    ep = server(config)
    sources = distinct_sources(limit + 21, "ipv4")
    pairs = fill(ep, sources[:limit], T0, "global")
    assert responses(pairs) == limit  # the limit-th is accepted ...
    assert ep.handshakes_in_flight == limit
    assert metric(ep, "intentra_handshake_in_flight") == limit
    assert all(len(reply) <= len(request) for request, reply in pairs)
    oldest_first = sorted(ep.sessions, key=lambda cid: ep.sessions[cid].created_at)
    for i, src in enumerate(sources[limit:]):  # ... and each next one evicts the oldest
        ep.handle_timer(T0 + 0.001 * (i + 1))
        [(_, reply)] = fill(ep, [src], T0 + 0.001 * (i + 1), ("more", i))
        assert parse_hs(reply)[0] == HsKind.RESPONSE
        assert ep.handshakes_in_flight == limit == len(ep.sessions)
        assert ep.datagrams_to_send(T0) == [] and ep.events() == []  # evicted silently
    assert ep.stats.handshakes_rejected == 21
    assert not set(oldest_first[:min(21, limit)]) & set(ep.sessions)
    assert {s.state for s in ep.sessions.values()} == {SessionState.RESPONSE_SENT}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("limit", [1, 3, DEFAULTS.max_handshakes_per_ip])
def test_per_ip_pending_limit_holds_exactly(limit: int, family: str) -> None:
    config = (EndpointConfig(max_handshakes_per_ip=limit)
              if limit != DEFAULTS.max_handshakes_per_ip else None)
    ep = server(config)
    ip = FAMILIES[family]
    ports = [other_port(ip, k) for k in range(limit + 1)]
    pairs = fill(ep, ports[:limit], T0, "per-ip")
    assert responses(pairs) == limit
    assert ep._pending_per_ip == {source_key(ip): limit}
    assert_refused(ep, ports[limit], T0, "sixth")
    assert_refused(ep, ports[0], T0, "new-key-same-port")  # a new HELLO, not a repeat
    if family == "ipv6":  # an IPv6 source counts per /64 (issue 9 item 3)
        assert_refused(ep, other_ip(ip, 1), T0, "same-64")
        assert_refused(ep, other_ip(ip, (1 << 64) - 8), T0, "same-64-far")
        neighbour = other_ip(ip, 1 << 64)
    else:  # another IPv4 address is not affected, the neighbour included
        neighbour = other_ip(ip, 1)
    [(_, reply)] = fill(ep, [neighbour], T0, "neighbour")
    assert parse_hs(reply)[0] == HsKind.RESPONSE
    assert ep.handshakes_in_flight == limit + 1


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_repeated_hello_at_the_limit_gets_the_same_response_not_a_rejection(
        family: str) -> None:
    ep = server()
    ip = FAMILIES[family]
    limit = ep.config.max_handshakes_per_ip
    pairs = fill(ep, [other_port(ip, k) for k in range(limit)], T0, "repeat")
    stats = ep.stats.as_dict()
    for k, (request, response) in enumerate(pairs):
        ep.receive_datagram(request, other_port(ip, k), T0 + 0.1)
        assert ep.datagrams_to_send(T0 + 0.1) == [(response, other_port(ip, k))]
    assert stats_delta(stats, ep.stats.as_dict()) == {"packets_received": limit,
                                                     "packets_sent": limit}
    assert ep.handshakes_in_flight == limit


@pytest.mark.parametrize("which", ["global", "per-ip"])
def test_full_limits_free_up_after_handshake_timeout(which: str) -> None:
    ep = server(EndpointConfig(max_handshakes_in_flight=10))
    if which == "global":
        sources = distinct_sources(10, "ipv6")
        fresh = ("2001:db8:ffff::1", 9999)
    else:
        sources = [other_port(FAMILIES["ipv4"], k) for k in range(5)]
        fresh = other_port(FAMILIES["ipv4"], 999)
    pairs = fill(ep, sources, T0, which)
    assert responses(pairs) == len(sources)
    deadline = T0 + HS_TIMEOUT
    timer = ep.get_timer()
    assert timer is not None and timer <= deadline

    just_before = deadline - 1e-3
    ep.handle_timer(just_before)
    assert ep.handshakes_in_flight == len(sources)
    if which == "per-ip":  # (a full global table evicts instead: the test above)
        assert_refused(ep, fresh, just_before, "early")

    ep.handle_timer(deadline)
    assert ep.datagrams_to_send(deadline) == []  # expiry sends nothing
    assert ep.events() == []                     # and the application never knew
    assert ep.handshakes_in_flight == 0
    assert ep.sessions == {} and ep._pending_per_ip == {} and ep._pending_hello == {}
    [(_, reply)] = fill(ep, [fresh], deadline, "after")
    assert parse_hs(reply)[0] == HsKind.RESPONSE
    assert ep.handshakes_in_flight == 1


def test_completed_handshake_frees_its_per_ip_slot_but_keeps_a_connection() -> None:
    """Accounting is exact: the pending slot is returned when the handshake completes
    (not leaked, not double-freed), while the session still counts towards
    MAX_CONNECTIONS."""
    link = Link(seed=7)
    srv = link.add("srv", cookie_master=MASTER,
                   config=EndpointConfig(max_connections=1000))
    shared_ip = "198.51.100.77"
    cli = link.add("cli", addr=(shared_ip, 5000))
    ep = srv.endpoint
    limit = ep.config.max_handshakes_per_ip
    fill(ep, [(shared_ip, 6000 + k) for k in range(limit - 1)], link.now, "before")
    assert ep._pending_per_ip == {shared_ip: limit - 1}

    link.establish(cli, srv)  # the limit-th handshake from this IP, completed
    assert ep._pending_per_ip == {shared_ip: limit - 1}
    assert ep.handshakes_in_flight == limit - 1
    assert len(ep.sessions) == limit

    [(_, reply)] = fill(ep, [(shared_ip, 7000)], link.now, "after")
    assert parse_hs(reply)[0] == HsKind.RESPONSE
    assert ep._pending_per_ip == {shared_ip: limit}
    assert_refused(ep, (shared_ip, 7001), link.now, "over")


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_legitimate_client_completes_while_one_ip_floods(family: str) -> None:
    """One IP sends 3,000 HELLOs (cookie-less, and cookie-valid from 2,000 of its
    ports, as its owner can) before and during a legitimate client's handshake."""
    link = Link(seed=11)
    srv = link.add("srv", cookie_master=MASTER)
    cli = link.add("cli", addr=("192.0.2.200", 4242))
    flooder = FAMILIES[family]
    ep = srv.endpoint
    rng = random.Random(f"one-ip-{family}")
    for k in range(3000):
        src = other_port(flooder, k)
        cookie = bytes(16) if k % 3 == 2 else cookie_now(ep, src, link.now)
        link.inject(raw_hello(1 + k, cookie, rng.randbytes(32)), src, srv, delay=k * 1e-4)
    link.advance(0.1)
    cid = link.connect(cli, srv)
    assert link.run(link.now + 1.0, lambda: bool(cli.of_type(HandshakeCompleted))
                    and bool(srv.of_type(HandshakeCompleted)))
    link.send(cli, cid, b"through the flood", Intent.RELIABLE)
    link.advance(0.2)
    assert srv.payloads() == [b"through the flood"]
    limit = ep.config.max_handshakes_per_ip
    assert ep._pending_per_ip == {source_key(flooder): limit}
    assert ep.stats.handshakes_rejected == 2000 - limit
    assert ep.stats.cookie_replies == 1000 + 1  # the flood's cookie-less third, the client
    assert len(ep.sessions) == limit + 1


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_10000_cookie_valid_hellos_from_10000_ips_hold_100_pending(family: str) -> None:
    """Never more than 100 pending, the newest ones: each HELLO past the limit evicts
    the oldest (issue 9 item 3). Every reply is a RESPONSE no larger than its HELLO."""
    ep = server()
    rng = random.Random(f"valid-flood-{family}")
    sources = distinct_sources(FLOOD, family)
    batch = [(raw_hello(1 + i, cookie_now(ep, src, T0), rng.randbytes(32)), src)
             for i, src in enumerate(sources)]
    ep.receive_datagrams(batch, T0)
    out = ep.datagrams_to_send(T0)
    limit = ep.config.max_handshakes_in_flight
    assert [parse_hs(d)[0] for d, _ in out] == [HsKind.RESPONSE] * FLOOD
    assert [dst for _, dst in out] == sources
    assert all(len(d) <= len(h) for (d, _), (h, _) in zip(out, batch, strict=True))
    assert ep.handshakes_in_flight == limit == len(ep.sessions)
    assert sorted(s.addr for s in ep.sessions.values()) == sorted(sources[-limit:])
    assert len(ep._pending_per_ip) == limit
    assert ep.stats.handshakes_rejected == FLOOD - limit


# ----------------------------------------------------------------- 3. MAX_CONNECTIONS


def clients(link: Link, count: int, tag: str) -> list[Node]:
    return [link.add(f"{tag}{i}", addr=(f"192.0.2.{10 + i}", 5000 + i)) for i in range(count)]


@pytest.mark.parametrize(("established", "pending"),
                         [(0, 3), (1, 2), (2, 1), (3, 0), (1, 0), (0, 1), (4, 4)])
def test_max_connections_holds_exactly(established: int, pending: int) -> None:
    limit = established + pending
    link = Link(seed=5)
    srv = link.add("srv", cookie_master=MASTER, config=EndpointConfig(max_connections=limit))
    ep = srv.endpoint
    for cli in clients(link, established, "c"):
        link.establish(cli, srv)
    pairs = fill(ep, distinct_sources(pending, "ipv6"), link.now, "pending")
    assert responses(pairs) == pending  # the limit-th is accepted
    assert len(ep.sessions) == limit
    assert ep.connections_active == established
    assert ep.handshakes_in_flight == pending

    assert_refused(ep, ("203.0.113.1", 1), link.now, "over")
    assert_refused(ep, ("2001:db8:dead::1", 1), link.now, "over6")
    with pytest.raises(ConnectionLimitError):
        ep.connect(("203.0.113.2", 2), link.now)
    assert len(ep.sessions) == limit

    # One slot freed (a session closed, or the pending handshakes expired): exactly
    # as many new ones as were freed.
    now = link.now
    if established:
        [first, *_] = [cid for cid, s in ep.sessions.items()
                       if s.state is SessionState.ESTABLISHED]
        ep.close(first, now)
        ep.datagrams_to_send(now)  # its CLOSE
    else:
        now += HS_TIMEOUT
        ep.handle_timer(now)
        assert ep.sessions == {}
        assert responses(fill(ep, distinct_sources(limit - 1, "ipv4"), now, "refill")) == limit - 1
    [(_, reply)] = fill(ep, [("203.0.113.3", 3)], now, "freed")
    assert parse_hs(reply)[0] == HsKind.RESPONSE
    assert_refused(ep, ("203.0.113.4", 4), now, "over-again")


def test_client_refused_by_max_connections_gets_only_a_cookie_then_times_out() -> None:
    link = Link(seed=9)
    srv = link.add("srv", cookie_master=MASTER, config=EndpointConfig(max_connections=2))
    first, second, third = clients(link, 3, "c")
    link.establish(first, srv)
    cid_second, _ = link.establish(second, srv)

    cid = link.connect(third, srv)
    link.advance(HS_TIMEOUT + 0.5)

    [failed] = third.of_type(HandshakeFailed)
    assert (failed.conn_id, failed.reason) == (cid, "timeout")
    to_third = [d for d in link.sent_by(srv) if d.dst == third.addr]
    assert {d.hs_kind for d in to_third} == {HsKind.COOKIE}
    assert all(len(d.data) < HELLO_LEN for d in to_third)
    hellos = link.sent_by(third, is_hs(HsKind.HELLO))
    assert srv.endpoint.stats.handshakes_rejected == len(hellos) - 1  # all but the first
    assert len(srv.endpoint.sessions) == 2 and srv.endpoint.connections_active == 2

    # A slot frees up: the same client now gets in.
    link.send(second, cid_second, b"bye", Intent.RELIABLE)
    second.endpoint.close(cid_second, link.now)
    link.advance(0.2)
    assert len(srv.endpoint.sessions) == 1
    link.establish(third, srv)
    assert len(srv.endpoint.sessions) == 2


def test_default_max_connections_holds_exactly_at_10000() -> None:
    """The default MAX_CONNECTIONS, 10,000 sessions plus pending handshakes: filled
    with the endpoint's own outgoing handshakes (no DH needed on our side) and one
    inbound pending handshake, the 10,001st is refused."""
    ep = server()
    limit = DEFAULTS.max_connections
    assert ep.config.max_connections == limit == 10_000
    for i in range(limit - 1):
        ep.connect((f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 443), T0)
        if i % 1000 == 999:
            ep.datagrams_to_send(T0)
    ep.datagrams_to_send(T0)
    [(_, reply)] = fill(ep, [("203.0.113.10", 10)], T0, "last")
    assert parse_hs(reply)[0] == HsKind.RESPONSE
    assert len(ep.sessions) == limit
    assert_refused(ep, ("203.0.113.11", 11), T0, "over")
    with pytest.raises(ConnectionLimitError):
        ep.connect(("203.0.113.12", 443), T0)
    assert len(ep.sessions) == limit


# ------------------------------------------- issue 9 item 3: the cheap lockout of all handshakes


def test_cookie_valid_flood_from_20_ips_and_a_64_cannot_lock_out_new_clients() -> None:
    """20 IPv4 addresses and one IPv6 /64 (a fresh address of it for every HELLO),
    each with valid cookies, flood HELLOs with random msg1 at 2,000/s in all.

    Before: the per-IP limit keyed on the full address, so the /64 alone held every
    pending slot, and a full table refused every newcomer: 0 of 50 clients got in.
    Now an IPv6 source counts per /64, and a full table drops its oldest pending
    handshake to make room: the flood must outpace the clients' round trips."""
    link = Link(seed=31)
    srv = link.add("srv", cookie_master=MASTER)
    ep = srv.endpoint
    rng = random.Random("lockout")
    v4 = [(f"203.0.113.{1 + i}", 20000 + i) for i in range(20)]
    rate, start, duration = 2000.0, 0.0, 12.0
    for k in range(int(rate * duration)):
        at = start + k / rate
        pick = rng.randrange(21)
        if pick < 20:
            src: Address = (v4[pick][0], 20000 + rng.randrange(40000))
        else:
            src = (f"2001:db8:66:1:{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}:"
                   f"{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}", 30000)
        link.inject(raw_hello(1 + k, cookie_now(ep, src, at), rng.randbytes(32)), src, srv,
                    delay=at)
    link.now = 0.0
    link.advance(1.0)  # the flood has filled the table
    assert ep.handshakes_in_flight == ep.config.max_handshakes_in_flight
    legit = [link.add(f"cli{i}", addr=(f"192.0.2.{10 + i}", 5000 + i)) for i in range(50)]
    started: dict[str, float] = {}
    for i, cli in enumerate(legit):
        link.run(1.0 + i * 0.1)
        link.connect(cli, srv)
        started[cli.name] = link.now
    link.run(1.0 + 50 * 0.1 + HS_TIMEOUT)
    done = 0
    for cli in legit:
        confirmed = [t for t, e in cli.timed(HandshakeConfirmed)]
        if confirmed and confirmed[0] - started[cli.name] <= HS_TIMEOUT:
            done += 1
    print(f"lockout: {done} of 50 clients completed within 5 s")
    assert done >= 45, f"only {done} of 50 clients completed a handshake within 5 s"
    assert ep.handshakes_in_flight <= ep.config.max_handshakes_in_flight
    assert all(n <= ep.config.max_handshakes_per_ip for n in ep._pending_per_ip.values())
