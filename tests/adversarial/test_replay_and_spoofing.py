"""Adversarial: replayed packets of every kind, and forged packets aimed at a live session.

Replay (docs/protocol.md sections 5 and 7). An on-path attacker records every datagram of a real
exchange (HELLO with and without cookie, COOKIE, RESPONSE, FINISH, reliable and
realtime DATA, ACK both ways, CLOSE) and plays each one back to its receiver:
at once, 30 s later, after the replay window has moved (more than REPLAY_WINDOW
packets later), after both sides updated their keys, and to a restarted endpoint
(same static key, same address, new process). Each from the original source and from
the attacker's own address. Whatever the case, the copy delivers nothing, changes no
state of the receiver (a deep snapshot of the endpoint and all its sessions, taken
before and after, is equal; only the token bucket and the counters may move), is
counted under the docs/protocol.md section 11 counter that names its fate, and is answered with
nothing larger than itself.

Spoofing (docs/protocol.md sections 5 and 10). 10,000 forged packets carrying a live session's
conn_id, with valid headers, plausible packet numbers and random bodies, from the
peer's address and from elsewhere. The session survives with zero strikes, keeps
delivering real traffic interleaved with the forgeries, and ends in exactly the state
of a control run that saw no forgery at all. The only thing a forger can drain is the
session's token bucket (test docstrings below say how that shows).

Everything runs on the seeded in-memory link of ``corelink`` with its fake clock.
"""

from __future__ import annotations

import enum
import functools
import random
import types
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import pytest

from corelink import Datagram, Link, Node, seeded_rng
from intentra.config import EndpointConfig
from intentra.constants import (
    HEADER_LEN,
    HS_BODY_LEN,
    TAG_LEN,
    HsKind,
    Intent,
    PacketType,
)
from intentra.core.cookie import CookieJar
from intentra.core.endpoint import Endpoint
from intentra.core.session import Session, SessionState
from intentra.core.wire import pack_header
from intentra.events import Address, MessageReceived

RELIABLE, REALTIME = Intent.RELIABLE, Intent.REALTIME
DEFAULTS: Final = EndpointConfig()
REPLAY_WINDOW: Final = DEFAULTS.replay_window
ATTACKER: Final[Address] = ("203.0.113.66", 6666)
MASTER: Final = bytes(range(0x20, 0x40))


# ----------------------------------------------------------------- state snapshots

SKIP: Final = frozenset({"bucket", "_failed_opens", "stats", "config", "out", "events",
                         "_ahead", "_next"})
"""Attributes a snapshot leaves out: the token bucket and the failed-open allowances
(the one thing an unauthenticated packet may drain, checked separately), the counters (checked as
exact deltas), the immutable config, the shared output lists (drained), and the
receiver's catch-up key cache ``_ahead`` (keys that follow from the current one,
derived at most once per silence: not session state, see aead.ReceiveKeys), and the
next key's AESGCM object, made on first use from ``_next_key`` (whose raw bytes
stay in the snapshot)."""


def _attrs(obj: object) -> Iterable[tuple[str, object]]:
    names: list[str] = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    for name in names:
        if name not in SKIP and hasattr(obj, name):
            yield name, getattr(obj, name)


def freeze(obj: object, cross_run: bool = False) -> object:
    """A deep, comparable image of an endpoint (or any intentra object).

    Every attribute of every intentra object reachable from ``obj`` is included:
    sessions, keys (raw bytes), replay windows, reliable windows and their queues,
    timers, pending handshakes, per-IP counts, the random generator's state.
    Foreign objects (AESGCM, Noise states) are compared by identity within one
    run; with ``cross_run`` (comparing two runs) by type, their keys being in
    the raw bytes next to them, and the endpoint's timer heap by its live
    entries.
    """
    f = functools.partial(freeze, cross_run=cross_run)
    if obj is None or isinstance(obj, bool | int | float | str | bytes | enum.Enum):
        return obj
    if isinstance(obj, random.Random):
        return ("Random", obj.getstate())
    if isinstance(obj, types.MethodType):
        return ("method", obj.__func__.__qualname__, f(obj.__self__))
    if isinstance(obj, dict):
        return ("dict", tuple((f(k), f(v)) for k, v in obj.items()))
    if isinstance(obj, list | tuple | deque):
        return (type(obj).__name__, tuple(f(x) for x in obj))
    if isinstance(obj, set | frozenset):
        return ("set", tuple(sorted(repr(f(x)) for x in obj)))
    if isinstance(obj, Endpoint):
        items = dict(_attrs(obj))
        if cross_run:
            items.pop("_timer_tick")
            items["_timers"] = sorted(
                (t, cid) for t, _, cid in obj._timers
                if cid in obj.sessions and obj.sessions[cid].timer_at == t)
        return ("Endpoint", tuple((k, f(v)) for k, v in items.items()))
    if type(obj).__module__.startswith("intentra"):
        if isinstance(obj, CookieJar):
            # its secrets cache is derived from (master, clock) and bounded; not per source
            return ("CookieJar", f(obj._master), f(obj.rotation))
        return (type(obj).__name__, tuple((k, f(v)) for k, v in _attrs(obj)))
    return ("opaque", type(obj).__name__) if cross_run else ("opaque", id(obj))


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def session_between(node: Node, peer: Node) -> Session:
    """The node's live session with ``peer`` (the newest, if several)."""
    found = [s for s in node.endpoint.sessions.values()
             if s.state is SessionState.ESTABLISHED and s.peer_key == peer.public]
    assert found, f"{node.name} has no session with {peer.name}"
    return found[-1]


# ----------------------------------------------------------------- the recorded exchange


class RecordingLink(Link):
    """A Link that calls ``hook(datagram, receiver)`` after each delivery."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.hook: Callable[[Datagram, Node], None] | None = None

    def deliver(self, data: bytes, src: Address, dst: Node) -> None:
        super().deliver(data, src, dst)
        if self.hook is not None:
            self.hook(Datagram(self.now, src, dst.addr, data), dst)


KINDS: Final = ["hello", "hello+cookie", "cookie", "response", "finish", "data-reliable",
                "data-realtime", "ack-to-initiator", "ack-to-responder", "close"]
TIMINGS: Final = ["immediately", "later", "window-moved", "keys-updated", "restarted"]
SOURCES: Final = ["original", "attacker"]


def classify(d: Datagram, receiver: Node, phase: str) -> str | None:
    """Which recorded kind a delivered datagram is (first session: only its CLOSE)."""
    initiator = receiver.name == "a"
    if d.ptype == PacketType.HS:
        if phase != "s2":
            return None
        kind = d.hs_kind
        if kind is HsKind.HELLO:
            cookie = d.data[HEADER_LEN + 5:HEADER_LEN + 21]
            return "hello" if cookie == bytes(16) else "hello+cookie"
        return {HsKind.COOKIE: "cookie", HsKind.RESPONSE: "response",
                HsKind.FINISH: "finish"}.get(kind) if kind is not None else None
    if d.ptype == PacketType.CLOSE:
        return "close" if phase == "s1" and not initiator else None
    if phase != "s2":
        return None
    if d.ptype == PacketType.ACK:
        return "ack-to-initiator" if initiator else "ack-to-responder"
    if d.intent == REALTIME:
        return "data-realtime" if initiator else None
    return "data-reliable" if not initiator else None


@dataclass
class Exchange:
    link: RecordingLink
    a: Node  # the initiator
    b: Node  # the responder
    captured: dict[str, tuple[Datagram, Node]] = field(default_factory=dict)


def record(on_first: Callable[[Exchange, str], None] | None = None) -> Exchange:
    """Two sessions between a and b, every kind of datagram recorded on first delivery.

    Session 1 is established and closed by a (its CLOSE is recorded); session 2
    is established (HELLO, COOKIE, HELLO+cookie, RESPONSE, FINISH, the confirming
    ACK) and carries reliable a->b, realtime b->a and reliable b->a messages (so
    ACKs flow both ways). ``on_first(exchange, kind)`` runs right after the
    receiver processed the first datagram of each kind.
    """
    link = RecordingLink(seed=23)
    a = link.add("a")
    b = link.add("b", cookie_master=MASTER)
    ex = Exchange(link, a, b)
    phase = ["s1"]

    def hook(d: Datagram, receiver: Node) -> None:
        kind = classify(d, receiver, phase[0])
        if kind is not None and kind not in ex.captured:
            ex.captured[kind] = (d, receiver)
            if on_first is not None:
                on_first(ex, kind)

    link.hook = hook
    cid1, _ = link.establish(a, b)
    link.send(a, cid1, b"session one", RELIABLE)
    link.advance(0.2)
    a.endpoint.close(cid1, link.now)
    link.advance(0.2)
    assert b.endpoint.sessions == {}
    phase[0] = "s2"
    cid_a, cid_b = link.establish(a, b)
    link.advance(0.1)
    link.send(a, cid_a, b"r-1", RELIABLE)
    link.advance(0.1)
    link.send(b, cid_b, b"t-1", REALTIME)
    link.advance(0.1)
    link.send(b, cid_b, b"r-2", RELIABLE)
    link.advance(0.2)
    link.hook = None
    assert sorted(ex.captured) == sorted(KINDS)
    assert b.payloads() == [b"session one", b"r-1"] and a.payloads() == [b"t-1", b"r-2"]
    return ex


# Fates a replayed datagram may have, as docs/protocol.md sections 5, 7 and 11 name them:
# counters that rise by one besides packets_received, and what may be sent back.
FATES: Final[dict[str, tuple[dict[str, int], str]]] = {
    "replay": ({"replay_rejections": 1}, "nothing"),                 # 4 step 4
    "unknown": ({"packets_dropped_unknown": 1}, "nothing"),          # 4 step 2, 5
    "cookie": ({"cookie_replies": 1, "packets_sent": 1}, "cookie"),  # 5 flow 2, stateless
    "same-response": ({"packets_sent": 1}, "same-response"),         # 5 flow 3
    # The HELLO of a handshake whose session is still alive: docs/protocol.md is silent; the
    # implementation remembers it for the session's life (protocol.md 12) and
    # drops it, under no counter.
    "ignored": ({}, "nothing"),
}


def fate(kind: str, timing: str, source: str) -> str:
    """What docs/protocol.md says becomes of the replayed copy: the oracle of the replay tests."""
    if kind == "hello":
        return "cookie"  # its cookie is all-zero: a COOKIE and never any state
    if kind == "hello+cookie":
        if source == "attacker" or timing == "restarted":
            return "cookie"  # the cookie is bound to the source, and to the old master
        # From the initiator's address, with a cookie still of epoch n or n - 1:
        return "same-response" if timing == "immediately" else "ignored"
    if kind in ("cookie", "response", "finish", "close") or timing == "restarted":
        return "unknown"  # no handshake left to take it, or no such session
    return "replay"


def restart(link: Link, node: Node, peer: Node) -> None:
    """``node``'s process restarts: a new Endpoint with the same static key on the same
    address (a fresh random source, hence a fresh cookie master, as os.urandom
    gives); then a new session between the two is established, so that the
    restarted endpoint has state to protect."""
    node.endpoint = Endpoint(node.key.to_bytes(), seeded_rng(f"restarted-{node.name}"),
                             node.endpoint.config)
    if node is link.nodes[0]:   # the initiator restarted: it connects again
        link.establish(node, peer)
    else:                       # the responder restarted: the initiator connects again
        link.establish(peer, node)
    link.advance(0.3)


def prepare(ex: Exchange, timing: str, receiver: Node) -> None:
    """Bring the exchange to the moment of the replay."""
    link, a, b = ex.link, ex.a, ex.b
    if timing == "later":
        link.advance(30.0)
    elif timing == "window-moved":
        # Past HANDSHAKE_TIMEOUT first (a FINISH copy is then no longer answered,
        # docs/protocol.md section 7 step 6), then more than REPLAY_WINDOW packets each way.
        link.advance(DEFAULTS.handshake_timeout + 1.0)
        sa, sb = session_between(a, b), session_between(b, a)
        for i in range(REPLAY_WINDOW + 76):
            link.send(a, sa.conn_id, b"fill-a-%d" % i, REALTIME)
            link.send(b, sb.conn_id, b"fill-b-%d" % i, REALTIME)
            link.advance(0.0005)
        link.advance(0.2)
        assert len(b.payloads(REALTIME)) == len(a.payloads(REALTIME)) - 1 == REPLAY_WINDOW + 76
        d, _ = ex.captured["data-reliable"]
        assert sb.replay.highest - d.seq >= REPLAY_WINDOW
    elif timing == "keys-updated":
        # Past KEY_UPDATE_TIME: the next packets go out under the next key, and the
        # previous key is erased 3 RTO after the peer's first packet under it.
        link.advance(DEFAULTS.key_update_time + 1.0)
        sa, sb = session_between(a, b), session_between(b, a)
        for i in range(4):
            link.send(a, sa.conn_id, b"k-a-%d" % i, RELIABLE)
            link.send(b, sb.conn_id, b"k-b-%d" % i, RELIABLE)
            link.advance(0.1)
        link.advance(3.0)
        for s in (sa, sb):
            assert s.recv_keys is not None and s.send_keys is not None
            assert (s.recv_keys.phase, s.send_keys.phase) == (1, 1)
            assert s.recv_keys.prev_expires_at is None  # the old key is gone
    elif timing == "restarted":
        restart(link, receiver, b if receiver is a else a)
    link.pump()


def replay_once(ex: Exchange, kind: str, source: str, expected: str) -> None:
    """Replay the recorded ``kind`` to its receiver now and check every rule."""
    link = ex.link
    d, receiver = ex.captured[kind]
    ep = receiver.endpoint
    src = d.src if source == "original" else ATTACKER
    link.pump(receiver)
    before = freeze(ep)
    stats = ep.stats.as_dict()
    buckets = {cid: s.bucket.tokens for cid, s in ep.sessions.items()}
    delivered = len(receiver.messages)

    ep.receive_datagram(d.data, src, link.now)
    out = ep.datagrams_to_send(link.now)
    events = ep.events()

    counters, reply = FATES[expected]
    assert events == [], "a replayed datagram produced events"
    assert len(receiver.messages) == delivered
    assert freeze(ep) == before, "a replayed datagram changed the receiver's state"
    assert stats_delta(stats, ep.stats.as_dict()) == {"packets_received": 1, **counters}
    for cid, tokens in buckets.items():  # at most the one token of protocol.md section 6 step 3
        assert ep.sessions[cid].bucket.tokens >= tokens - 1.0
    assert all(len(r) <= len(d.data) and dst == src for r, dst in out)
    if reply == "nothing":
        assert out == []
    elif reply == "cookie":
        [(r, _)] = out
        assert r[HEADER_LEN] == HsKind.COOKIE
        assert r[4:8] == d.data[HEADER_LEN + 1:HEADER_LEN + 5]  # to the HELLO's sender id
    else:
        sent = [x.data for x in link.sent if x.hs_kind is HsKind.RESPONSE]
        assert [r for r, _ in out] == [sent[-1]]


def aftermath(ex: Exchange) -> None:
    """Later on: nothing was delivered twice, nobody struck, the live session works."""
    link, a, b = ex.link, ex.a, ex.b
    link.advance(0.5)
    for node in (a, b):
        payloads = node.payloads()
        assert len(payloads) == len(set(payloads)), f"{node.name} got a message twice"
        assert node.endpoint.stats.strike_events == 0
    assert b.payloads().count(b"r-1") == 1
    assert a.payloads().count(b"t-1") == a.payloads().count(b"r-2") == 1
    sa, sb = session_between(a, b), session_between(b, a)
    link.send(a, sa.conn_id, b"still-a", RELIABLE)
    link.send(b, sb.conn_id, b"still-b", RELIABLE)
    link.advance(0.3)
    assert b.payloads()[-1] == b"still-a" and a.payloads()[-1] == b"still-b"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("timing", TIMINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_replayed_datagram_changes_nothing_and_is_counted(
        kind: str, timing: str, source: str) -> None:
    expected = fate(kind, timing, source)
    done: list[str] = []

    def at_once(ex: Exchange, k: str) -> None:
        if k == kind:
            replay_once(ex, k, source, expected)
            done.append(k)

    ex = record(at_once if timing == "immediately" else None)
    if timing == "immediately":
        assert done == [kind]
    else:
        prepare(ex, timing, ex.captured[kind][1])
        replay_once(ex, kind, source, expected)
    aftermath(ex)


@pytest.mark.parametrize("rotations", [0, 2])
def test_replaying_the_whole_recording_delivers_nothing_and_counts_everything(
        rotations: int) -> None:
    """Every datagram of the recording (both sessions, every kind, in order) replayed
    in one burst to its receiver, 30 s later or after two cookie rotations.

    After two rotations every copy has a counted fate and no state appears. Within
    the cookie's life one thing does appear, and this test pins it as the limit of
    protocol.md section 7: the cookie-valid HELLO of the first, closed session opens ONE pending
    handshake (the cookie proves only the address, and nothing else remembers a
    finished handshake). It can never complete (the attacker lacks the initiator's
    ephemeral key), its RESPONSE goes to the initiator, which drops it, and it is
    gone after HANDSHAKE_TIMEOUT.
    """
    ex = record()
    link, a, b = ex.link, ex.a, ex.b
    recording = list(link.sent)
    link.advance(30.0 + rotations * DEFAULTS.cookie_rotation)
    link.pump()
    nodes = {a.addr: a, b.addr: b}
    before = {n.name: (freeze(n.endpoint), n.endpoint.stats.as_dict(), len(n.messages))
              for n in (a, b)}
    replies: list[tuple[bytes, Address, int]] = []
    for d in recording:
        dst = nodes[d.dst]
        dst.endpoint.receive_datagram(d.data, d.src, link.now)
        replies += [(r, to, len(d.data)) for r, to in dst.endpoint.datagrams_to_send(link.now)]
        assert dst.endpoint.events() == []
    assert all(len(r) <= size for r, _, size in replies)

    pending = 0 if rotations else 1
    for node in (a, b):
        state, stats, delivered = before[node.name]
        delta = stats_delta(stats, node.endpoint.stats.as_dict())
        received = sum(1 for d in recording if d.dst == node.addr)
        assert len(node.messages) == delivered
        assert delta.pop("packets_received") == received
        counted = sum(delta.get(k, 0) for k in (
            "replay_rejections", "packets_dropped_unknown", "cookie_replies"))
        ignored = 0 if rotations or node is a else 1  # session 2's HELLO+cookie
        assert counted == received - ignored - (pending if node is b else 0)
        assert set(delta) <= {"replay_rejections", "packets_dropped_unknown", "cookie_replies",
                              "packets_sent"}
        if node is a or not pending:
            assert freeze(node.endpoint) == state
    assert b.endpoint.handshakes_in_flight == pending
    kinds = [r[HEADER_LEN] for r, _, _ in replies]
    assert kinds.count(HsKind.RESPONSE) == pending
    assert all(k == HsKind.COOKIE for k in kinds if k != HsKind.RESPONSE)
    link.advance(DEFAULTS.handshake_timeout + 0.1)
    assert b.endpoint.handshakes_in_flight == 0
    assert len(b.endpoint.sessions) == 1
    aftermath(ex)


@pytest.mark.parametrize("intent", [REALTIME, RELIABLE], ids=["realtime", "reliable"])
@pytest.mark.parametrize("later", [1, 2, 63, 64, 65, 512, REPLAY_WINDOW - 1, REPLAY_WINDOW,
                                   REPLAY_WINDOW + 1, 2 * REPLAY_WINDOW, 5000])
def test_withheld_packet_released_after_the_window_moved(later: int, intent: Intent) -> None:
    """The attacker withholds one genuine DATA packet (never delivered) and releases
    it once ``later`` newer packets have been authenticated. docs/protocol.md section 5: the window
    remembers the highest pn and the REPLAY_WINDOW - 1 below it, so up to 1023
    behind the packet is still new and delivered once; from 1024 on it is refused
    as a replay, counted, and changes nothing (a reliable message in it then
    arrives by its retransmission, exactly once).

    v2: b's ACKs go back to a (congestion control would otherwise hold a's DATA
    back), so a learns by pn that the packet is missing and resends a RELIABLE
    message in it: the attacker withholds those retransmissions too until the
    release (a gets to try as often as it takes: each copy is lost 3 pns later, so
    the default MAX_RETRANSMISSIONS would end the session within some 30 pns).
    ``later`` counts packet numbers, a's skipped ones included."""
    link, a, b, cid_a, cid_b = established(seed=43, config=EndpointConfig(
        max_retransmissions=100_000))
    ea, eb = a.endpoint, b.endpoint
    now = link.now
    ea.send(cid_a, b"withheld", intent, 0, now)
    [(withheld, _)] = ea.datagrams_to_send(now)
    first = int.from_bytes(withheld[8:12], "big")
    highest, sent, i = first, 0, 0
    t = now
    while highest < first + later:  # each in its own packet (under the bucket rate)
        i += 1
        t = now + i * 2e-4
        ea.send(cid_a, b"n-%d" % i, REALTIME, 0, t)
        for data, _ in ea.datagrams_to_send(t):
            pn = int.from_bytes(data[8:12], "big")
            if pn > first + later or (data[0] & 0x0F == PacketType.DATA and data[1] >> 6 == 0):
                continue  # past the mark, or a retransmission of the withheld message
            highest = max(highest, pn)
            sent += data[0] & 0x0F == PacketType.DATA
            eb.receive_datagram(data, a.addr, t)
        for data, _ in eb.datagrams_to_send(t):
            ea.receive_datagram(data, b.addr, t)
    t += 2e-4
    assert len([e for e in eb.events() if isinstance(e, MessageReceived)]) == sent
    session = eb.sessions[cid_b]
    assert session.replay.highest - first == later
    before = freeze(eb)
    stats = eb.stats.as_dict()

    eb.receive_datagram(withheld, ATTACKER, t)

    got = [e.data for e in eb.events() if isinstance(e, MessageReceived)]
    if later < REPLAY_WINDOW:
        assert got == [b"withheld"]
        assert eb.stats.replay_rejections == stats["replay_rejections"]
    else:
        assert got == []
        assert freeze(eb) == before
        assert stats_delta(stats, eb.stats.as_dict()) == {"packets_received": 1,
                                                         "replay_rejections": 1}
    eb.datagrams_to_send(t)
    # Whatever happened, the message is delivered exactly once in the end.
    link.now = t
    link.advance(2.0)
    lost = intent == REALTIME and later >= REPLAY_WINDOW  # REALTIME is never resent
    assert len(got) + b.payloads().count(b"withheld") == (0 if lost else 1)
    assert session.strikes == 0


# ----------------------------------------------------------------- spoofing


FORGED: Final = 10_000
FORGE_KINDS: Final = ["data-reliable", "data-realtime", "ack", "close", "hs", "mixed"]
FORGE_SOURCES: Final = ["peer", "peer-ip-other-port", "other-ips"]


def forge(rng: random.Random, kind: str, conn_id: int, peer_id: int, pn_hint: int) -> bytes:
    """One forged datagram for the session ``conn_id``: a header that passes every
    check of docs/protocol.md section 3, a plausible packet number, a random body."""
    if kind == "mixed":
        kind = rng.choice(FORGE_KINDS[:-1])
    if kind == "hs":  # COOKIE / RESPONSE / FINISH with the session's ids
        hs = rng.choice([HsKind.COOKIE, HsKind.RESPONSE, HsKind.FINISH])
        body_len = HS_BODY_LEN[hs]
        sender = 0 if hs is HsKind.COOKIE else peer_id
        body = bytes([hs]) + sender.to_bytes(4, "big") + rng.randbytes(body_len - 5)
        return pack_header(PacketType.HS, 0, 0, 0, body_len, conn_id, 0, 0) + body
    r = rng.random()
    if r < 0.5:
        pn = pn_hint + rng.randint(1, 200)          # the numbers the peer uses next
    elif r < 0.7:
        pn = max(1, pn_hint - rng.randrange(REPLAY_WINDOW))  # inside the window
    elif r < 0.85:
        pn = pn_hint + rng.randint(201, 1 << 31)    # far ahead
    else:
        pn = rng.getrandbits(32)
    phase = int(rng.random() < 0.2)
    ack = rng.choice([0, rng.randint(1, 50), rng.getrandbits(32)])
    if kind == "data-reliable":
        ptype, intent, prio, plen = PacketType.DATA, RELIABLE, rng.randrange(8), rng.randint(7, 900)
    elif kind == "data-realtime":
        ptype, intent, prio, plen = PacketType.DATA, REALTIME, rng.randrange(8), rng.randint(3, 900)
    elif kind == "ack":
        ptype, intent, prio, plen = PacketType.ACK, RELIABLE, 0, 28
    else:
        ptype, intent, prio, plen, ack = PacketType.CLOSE, RELIABLE, 0, 1, 0
    return (pack_header(ptype, intent, prio, phase, plen, conn_id, pn & 0xFFFFFFFF, ack)
            + rng.randbytes(plen + TAG_LEN))


def forged_source(rng: random.Random, source: str, peer: Address) -> Address:
    if source == "peer":
        return peer
    if source == "peer-ip-other-port":  # another port of the peer's IP (its NAT, say)
        port = rng.randrange(1, 65535)
        return (peer[0], port if port != peer[1] else 65535)
    return (f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(1, 65536))


def forgeries(kind: str, source: str, a: Node, cid_a: int, cid_b: int, seed: object
              ) -> list[tuple[bytes, Address]]:
    rng = random.Random(f"forge-{kind}-{source}-{seed}")
    hint = a.endpoint.sessions[cid_a].pn_next - 1  # what the forger saw on the wire
    return [(forge(rng, kind, cid_b, cid_a, hint), forged_source(rng, source, a.addr))
            for _ in range(FORGED)]


def established(seed: int, config: EndpointConfig | None = None
                ) -> tuple[Link, Node, Node, int, int]:
    link = Link(seed)
    a, b = link.add("a", config), link.add("b", config)
    cid_a, cid_b = link.establish(a, b)
    link.advance(0.2)
    return link, a, b, cid_a, cid_b


DROPS: Final = ("packets_dropped_crypto", "replay_rejections", "packets_dropped_unknown",
                "packets_dropped_rate_limit", "packets_dropped_malformed")


@dataclass(frozen=True)
class Run:
    a_state: object
    b_state: object
    a_stats: dict[str, int]
    b_stats: dict[str, int]
    a_payloads: list[bytes]
    b_payloads: list[bytes]
    b_strikes: int
    b_addr: Address


SPAN: Final = 2.0  # seconds the 10,000 forgeries are spread over: 5,000/s, half the bucket rate


@functools.cache
def interleaved(kind: str | None, source: str | None) -> Run:
    """A real exchange (100 messages a->b, 10 back) over SPAN seconds, with the
    10,000 forgeries spread over the same time (none if ``kind`` is None)."""
    link, a, b, cid_a, cid_b = established(seed=31)
    t0 = link.now
    if kind is not None and source is not None:
        for i, (data, src) in enumerate(forgeries(kind, source, a, cid_a, cid_b, 1)):
            link.inject(data, src, b, delay=i * SPAN / FORGED)
    for block in range(100):
        link.run(t0 + block * SPAN / 100)
        link.send(a, cid_a, b"real-%03d" % block, RELIABLE if block % 2 else REALTIME)
        if block % 10 == 0:
            link.send(b, cid_b, b"back-%03d" % block, RELIABLE)
    link.run(t0 + SPAN + 1.0)
    sb = b.endpoint.sessions[cid_b]
    return Run(freeze(a.endpoint, cross_run=True), freeze(b.endpoint, cross_run=True),
               a.endpoint.stats.as_dict(), b.endpoint.stats.as_dict(),
               a.payloads(), b.payloads(), sb.strikes, sb.addr)


@pytest.mark.parametrize("source", FORGE_SOURCES)
@pytest.mark.parametrize("kind", FORGE_KINDS)
def test_10000_forgeries_interleaved_with_real_traffic_change_nothing(
        kind: str, source: str) -> None:
    """10,000 forged packets with the live session's conn_id, valid headers and
    plausible packet numbers (the next ones the peer will use, ones inside the
    replay window, far ahead, random), spread over 2 s among 110 real messages.

    The run ends in EXACTLY the state of a control run without forgeries: both
    endpoints, every session field (keys, replay window, reliable windows, RTT,
    timers, address, strikes), every delivered message. The only differences are the
    drop counters, which account for every forgery, and the token bucket, which
    this rate (half the refill rate) never empties: no real packet was refused.
    """
    control = interleaved(None, None)
    run = interleaved(kind, source)
    assert control.b_payloads == [b"real-%03d" % i for i in range(100)]
    assert control.a_payloads == [b"back-%03d" % i for i in range(0, 100, 10)]
    assert run.b_payloads == control.b_payloads
    assert run.a_payloads == control.a_payloads
    assert run.b_strikes == 0 and run.b_stats["strike_events"] == 0
    assert run.b_stats["connection_closes"] == 0
    assert run.b_addr == control.b_addr  # no roaming to a forger's address
    assert run.b_state == control.b_state
    assert run.a_state == control.a_state
    assert run.a_stats == control.a_stats
    delta = stats_delta(control.b_stats, run.b_stats)
    assert delta.pop("packets_received") == FORGED
    assert set(delta) <= set(DROPS)
    assert sum(delta.values()) == FORGED, delta
    assert "packets_dropped_rate_limit" not in delta  # 5,000/s is within both allowances
    assert "packets_dropped_malformed" not in delta  # the headers were all valid
    if kind != "hs":
        assert delta.get("packets_dropped_crypto", 0) > FORGED // 2  # they reached AEAD


@pytest.mark.parametrize("source", FORGE_SOURCES)
@pytest.mark.parametrize("kind", ["data-reliable", "data-realtime", "ack", "close", "mixed"])
def test_a_forger_can_drain_only_its_failed_open_allowance(kind: str, source: str) -> None:
    """What a forger CAN do, and that it is the only thing: 10,000 forgeries in 20 ms
    (500,000/s) empty the session's failed-open allowance for their kind of source
    (issue 9 item 4), not the bucket genuine packets are paid from. Nothing else
    moves: a deep snapshot of the endpoint without the allowances is identical
    before and after. A genuine packet in the middle of the flood is delivered at
    once, unless the forger spoofs the peer's exact address and port: then it is
    refused before decryption with the forgeries (the denial of service that stays,
    docs/security.md), and its retransmission gets through once the flood stops.
    """
    link, a, b, cid_a, cid_b = established(seed=37)
    ep = b.endpoint
    session = ep.sessions[cid_b]
    packets = forgeries(kind, source, a, cid_a, cid_b, 2)
    hs = sum(1 for data, _ in packets if data[0] & 0x0F == PacketType.HS)
    t0 = link.now
    flood_span = 0.02
    before = freeze(ep)
    stats = ep.stats.as_dict()
    tokens = session.bucket.tokens

    for i, (data, src) in enumerate(packets):
        ep.receive_datagram(data, src, t0 + i * flood_span / FORGED)
    t1 = t0 + (FORGED - 1) * flood_span / FORGED  # the last forgery's instant
    assert ep.datagrams_to_send(t1) == [] and ep.events() == []

    assert session.bucket.tokens >= tokens, "forgeries spent the genuine packets' bucket"
    allowance = ep._failed_opens[cid_b][source != "peer"]
    assert allowance.tokens < 1.0, "the failed-open allowance was not drained"
    assert freeze(ep) == before, "the forgeries changed more than the allowances"
    delta = stats_delta(stats, ep.stats.as_dict())
    assert delta.pop("packets_received") == FORGED
    assert delta.pop("packets_dropped_unknown", 0) == hs  # HS never touch the allowances
    limited = delta.pop("packets_dropped_rate_limit")
    opens = ep.config.failed_open_burst + ep.config.failed_open_pps * flood_span
    # Forgeries that name a pn already seen are refused as replays before they can
    # spend anything; the others are opened (within the allowance) or limited.
    replays = delta.get("replay_rejections", 0)
    assert limited >= FORGED - hs - opens - replays - 1
    assert set(delta) <= {"packets_dropped_crypto", "replay_rejections"}
    assert sum(delta.values()) + limited == FORGED - hs

    ea = a.endpoint
    ea.send(cid_a, b"during the flood", RELIABLE, 0, t1)
    [(real, _)] = ea.datagrams_to_send(t1)
    link.now = t1
    link.deliver(real, a.addr, b)
    if source == "peer":
        assert ep.stats.packets_dropped_rate_limit == \
            stats["packets_dropped_rate_limit"] + limited + 1
        assert b.payloads()[-1:] != [b"during the flood"]
    else:
        assert b.payloads()[-1] == b"during the flood"
    link.advance(1.0)
    link.send(a, cid_a, b"after the flood", RELIABLE)
    link.advance(0.2)
    assert b.payloads()[-2:] == [b"during the flood", b"after the flood"]
    assert session.strikes == 0 and ep.stats.strike_events == 0
    assert session.state is SessionState.ESTABLISHED and session.addr == a.addr
    if source == "peer":
        assert ea.stats.retransmissions >= 1


@pytest.mark.parametrize("source", FORGE_SOURCES)
def test_forgeries_to_a_quiet_session_in_key_catch_up_mode_change_nothing(source: str) -> None:
    """After a silence of KEY_UPDATE_MIN_INTERVAL the receiver also tries keys beyond
    the next one (protocol.md 12, catch-up). 10,000 forgeries (half of them of the
    other key phase) arriving then still move nothing; the catch-up keys are
    derived once, not per forgery (a bounded cache), and no key moves."""
    link, a, b, cid_a, cid_b = established(seed=41)
    ep = b.endpoint
    session = ep.sessions[cid_b]
    keys = session.recv_keys
    assert keys is not None
    t0 = session.last_recv_at + ep.config.key_update_min_interval + 0.5
    assert t0 < session.last_recv_at + ep.config.keepalive_interval  # still silent
    ep.handle_timer(t0)
    ep.datagrams_to_send(t0)
    before = freeze(ep)
    stats = ep.stats.as_dict()

    for i, (data, src) in enumerate(forgeries("data-realtime", source, a, cid_a, cid_b, 3)):
        ep.receive_datagram(data, src, t0 + i * SPAN / FORGED)
    t1 = t0 + SPAN
    assert ep.datagrams_to_send(t1) == [] and ep.events() == []

    assert freeze(ep) == before
    assert len(keys._ahead) <= ep.config.key_update_catch_up
    delta = stats_delta(stats, ep.stats.as_dict())
    assert delta.pop("packets_received") == FORGED
    assert set(delta) <= {"packets_dropped_crypto", "replay_rejections"}
    assert sum(delta.values()) == FORGED
    link.now = t1
    link.send(a, cid_a, b"real", REALTIME)
    link.advance(0.1)
    assert b.payloads() == [b"real"]
    assert (keys.phase, session.strikes, session.addr) == (0, 0, a.addr)
