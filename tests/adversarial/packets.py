"""Real datagrams of every kind, the endpoint states that receive them, and attack builders.

Shared by the adversarial tests. Nothing here is a mock: :func:`build` runs a
real handshake and a short exchange between two sans-I/O Endpoints (seeded keys
and rng, a fake clock) and records every datagram on the wire:

=============  =====  ==================================================
name           to     what
=============  =====  ==================================================
hello0         b      HELLO with the all-zero cookie
cookie         a      COOKIE
hello          b      HELLO with the cookie
response       a      RESPONSE
finish         b      FINISH
ack_credit     b      the initiator's first ACK, right after FINISH (its credit)
ack_confirm    a      the responder's confirming ACK (ack-eliciting: its credit)
ack_answer     b      the initiator's answer to that ACK (A = 0)
data_reliable  b      DATA, RELIABLE, three messages packed
data_realtime  b      DATA, REALTIME, three messages packed
ack            a      ACK of the three reliable messages
close          b      CLOSE (NORMAL)
=============  =====  ==================================================

Everything is deterministic, so ``build(stop=name)`` rebuilds, fresh, the exact
state in which the receiver is about to get datagram ``name`` (which is
recorded, not delivered): the packet is genuine for that state, and a test can
feed it, or any corruption of it, to the endpoint that would receive it.
``build(ESTABLISHED)`` stops with the session open on both sides and quiet.

:func:`snapshot` captures what an attacker must not be able to change: every
session's state machine, keys, windows, strikes, timers and handshake fields,
and the endpoint's pending-handshake bookkeeping (counters are compared apart).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Final

from corelink import seeded_key, seeded_rng
from intentra.config import EndpointConfig
from intentra.constants import HEADER_LEN, TAG_LEN, Intent, PacketType
from intentra.core.endpoint import Endpoint
from intentra.core.session import Session
from intentra.core.wire import pack_header
from intentra.events import Address, Event

A_ADDR: Final[Address] = ("10.0.0.1", 4001)
B_ADDR: Final[Address] = ("10.0.0.2", 4002)
ATTACKER: Final[Address] = ("203.0.113.9", 4444)
STEP: Final = 0.005
"""Clock advance between two deliveries, seconds (a one-way latency)."""

RELIABLE_MESSAGES: Final = ((b"rel-1", 1), (b"rel-22", 5), (b"rel-333", 0))
REALTIME_MESSAGES: Final = ((b"rt-1", 2), (b"rt-22", 7), (b"rt-333", 0))

PACKETS: Final = ("hello0", "cookie", "hello", "response", "finish", "ack_credit",
                  "ack_confirm", "ack_answer", "data_reliable", "data_realtime", "ack", "close")
"""Every recorded datagram, in the order they went on the wire."""
RECEIVER: Final = {"hello0": "b", "cookie": "a", "hello": "b", "response": "a",
                   "finish": "b", "ack_credit": "b", "ack_confirm": "a", "ack_answer": "b",
                   "data_reliable": "b",
                   "data_realtime": "b", "ack": "a", "close": "b"}
HS_PACKETS: Final = ("hello0", "cookie", "hello", "response", "finish")
SEALED_PACKETS: Final = ("ack_credit", "ack_confirm", "ack_answer", "data_reliable",
                         "data_realtime", "ack", "close")

ESTABLISHED: Final = "established"
"""A stop of :func:`build`: both sides established, everything acknowledged, quiet
(the state just before a closes; every datagram but ``close`` recorded)."""

_HEADER: Final = struct.Struct("!BBHIII")


@dataclass
class World:
    """Two endpoints, a (initiator, at A_ADDR) and b (responder, at B_ADDR)."""

    a: Endpoint
    b: Endpoint
    now: float = 0.0
    cid_a: int = 0
    cid_b: int = 0
    packets: dict[str, bytes] = field(default_factory=dict)
    events: dict[str, list[Event]] = field(default_factory=lambda: {"a": [], "b": []})

    def endpoint(self, name: str) -> Endpoint:
        return self.a if name == "a" else self.b

    def receiver(self, packet: str) -> Endpoint:
        """The endpoint that datagram ``packet`` is addressed to."""
        return self.endpoint(RECEIVER[packet])

    def source(self, packet: str) -> Address:
        """The address datagram ``packet`` comes from."""
        return B_ADDR if RECEIVER[packet] == "a" else A_ADDR

    def session_a(self) -> Session:
        return self.a.sessions[self.cid_a]

    def session_b(self) -> Session:
        return self.b.sessions[self.cid_b]

    def drain(self, name: str) -> list[tuple[bytes, Address]]:
        ep = self.endpoint(name)
        out = ep.datagrams_to_send(self.now)
        self.events[name].extend(ep.events())
        return out


class Stop(Exception):
    """Internal: the script reached the datagram it was asked to stop before."""


def _record(w: World, name: str, sender: str, stop: str | None, *also: str) -> None:
    """Record the datagrams ``sender`` sends now: ``name`` then, in order, ``also``.

    Stops (when asked) only for ``name``: the script stops for the others where
    their receiver is ready for them.
    """
    out = w.drain(sender)
    names = (name, *also)
    assert len(out) == len(names), \
        f"{name}: expected {len(names)} datagrams from {sender}, got {len(out)}"
    for n, (data, dst) in zip(names, out, strict=True):
        assert dst == (B_ADDR if sender == "a" else A_ADDR)
        w.packets[n] = data
    if stop == name:
        raise Stop


def _deliver(w: World, name: str) -> None:
    w.now += STEP
    w.receiver(name).receive_datagram(w.packets[name], w.source(name), w.now)


def _settle(w: World, name: str, strict: bool) -> None:
    """``name`` has nothing to send (``strict``), or only ACKs, which reach the peer.

    With a small ``max_reliable_in_flight`` the application's read moves the credit
    edge by a quarter of it at once, and the receiver says so in an ACK (section 6).
    """
    out = w.drain(name)
    if strict:
        assert out == []
    other = "b" if name == "a" else "a"
    for data, _ in out:
        assert data[0] & 0x0F == int(PacketType.ACK), "only a credit update may go here"
        w.endpoint(other).receive_datagram(data, B_ADDR if name == "b" else A_ADDR, w.now)
        assert w.drain(other) == []


def new_world(seed: int = 1, config: EndpointConfig | None = None) -> World:
    key_a, key_b = seeded_key(f"{seed}-a"), seeded_key(f"{seed}-b")
    a = Endpoint(key_a.to_bytes(), seeded_rng(f"{seed}-a"), config)
    b = Endpoint(key_b.to_bytes(), seeded_rng(f"{seed}-b"), config)
    return World(a, b)


def build(stop: str | None = None, seed: int = 1,
          config: EndpointConfig | None = None) -> World:
    """Run the script; with ``stop``, return just before that datagram is delivered."""
    if stop is not None and stop not in RECEIVER and stop != ESTABLISHED:
        raise ValueError(f"unknown packet {stop!r}")
    w = new_world(seed, config)
    with contextlib.suppress(Stop):
        _script(w, stop)
    return w


def _script(w: World, stop: str | None) -> None:
    w.cid_a = w.a.connect(B_ADDR, w.now)
    _record(w, "hello0", "a", stop)
    _deliver(w, "hello0")
    _record(w, "cookie", "b", stop)
    _deliver(w, "cookie")
    _record(w, "hello", "a", stop)
    _deliver(w, "hello")
    _record(w, "response", "b", stop)
    [w.cid_b] = w.b.sessions
    _deliver(w, "response")
    # The initiator sends FINISH and at once its first ACK, which carries its credit.
    _record(w, "finish", "a", stop, "ack_credit")
    _deliver(w, "finish")
    _record(w, "ack_confirm", "b", stop)
    if stop == "ack_credit":
        raise Stop
    assert header_fields(w.packets["ack_credit"])["ack_eliciting"] == 0
    assert header_fields(w.packets["ack_confirm"])["ack_eliciting"] == 1
    assert w.session_b().send_window.edge == 0  # nothing RELIABLE before the peer's ACK
    _deliver(w, "ack_credit")
    assert w.drain("b") == []
    assert w.session_b().send_window.edge > 0  # the initiator's credit
    _deliver(w, "ack_confirm")
    assert w.session_a().send_window.edge > 0  # the responder's credit
    # The responder's ACK is ack-eliciting: the initiator answers it at once (A = 0).
    _record(w, "ack_answer", "a", stop)
    assert header_fields(w.packets["ack_answer"])["ack_eliciting"] == 0  # never a loop
    _deliver(w, "ack_answer")
    assert w.drain("b") == []
    for data, prio in RELIABLE_MESSAGES:
        w.a.send(w.cid_a, data, Intent.RELIABLE, prio, w.now)
    _record(w, "data_reliable", "a", stop)
    _deliver(w, "data_reliable")
    strict = w.b.config == EndpointConfig()
    _settle(w, "b", strict)  # acknowledged after ACK_DELAY
    for data, prio in REALTIME_MESSAGES:
        w.a.send(w.cid_a, data, Intent.REALTIME, prio, w.now)
    _record(w, "data_realtime", "a", stop)
    _deliver(w, "data_realtime")
    out = w.b.datagrams_to_send(w.now)
    if out:
        # A credit update (small max_reliable_in_flight: see _settle) that went out
        # with the read: it acknowledges everything, so it is the script's "ack".
        assert not strict and len(out) == 1 and out[0][0][0] & 0x0F == int(PacketType.ACK)
        w.packets["ack"] = out[0][0]
        w.events["b"].extend(w.b.events())
        if stop == "ack":
            raise Stop
    else:
        w.events["b"].extend(w.b.events())
        w.now += w.b.config.ack_delay
        w.b.handle_timer(w.now)
        _record(w, "ack", "b", stop)
    _deliver(w, "ack")
    assert w.drain("a") == []
    if stop == ESTABLISHED:
        raise Stop
    w.a.close(w.cid_a, w.now)
    _record(w, "close", "a", stop)
    _deliver(w, "close")
    w.drain("b")


@cache
def captured(seed: int = 1, config: EndpointConfig | None = None) -> dict[str, bytes]:
    """Every datagram of the full script, by name."""
    w = build(None, seed, config)
    return dict(w.packets)


# ------------------------------------------------------------------ rewriting

def header_fields(data: bytes) -> dict[str, int]:
    """The raw header bytes of a datagram as named integers (no checks)."""
    b0, b1, payload_len, conn_id, seq, ack = _HEADER.unpack_from(data)
    return {"version": b0 >> 4, "ptype": b0 & 0x0F, "intent": b1 >> 6,
            "priority": (b1 >> 3) & 0x07, "reserved": (b1 >> 2) & 0x01,
            "ack_eliciting": (b1 >> 1) & 0x01, "key_phase": b1 & 1,
            "payload_len": payload_len, "conn_id": conn_id, "seq": seq, "ack": ack}


def rewrite(data: bytes, **changes: int) -> bytes:
    """The datagram with some header fields replaced (any value that fits its bits)."""
    f = header_fields(data)
    unknown = set(changes) - set(f)
    if unknown:
        raise ValueError(f"unknown header fields {sorted(unknown)}")
    f.update(changes)
    header = _HEADER.pack((f["version"] << 4) | f["ptype"],
                          (f["intent"] << 6) | (f["priority"] << 3) | (f["reserved"] << 2)
                          | (f["ack_eliciting"] << 1) | f["key_phase"],
                          f["payload_len"], f["conn_id"], f["seq"], f["ack"])
    return header + data[HEADER_LEN:]


def resize_body(data: bytes, size: int, fill: int = 0) -> bytes:
    """An HS datagram whose body is cut or padded to ``size`` bytes, payload_len to match."""
    body = data[HEADER_LEN:HEADER_LEN + size]
    body += bytes([fill]) * (size - len(body))
    return rewrite(data[:HEADER_LEN], payload_len=size) + body


def resize_sealed(data: bytes, payload_len: int) -> bytes:
    """A DATA/ACK/CLOSE datagram cut or zero-padded so that its length matches
    ``payload_len`` (header + payload_len + tag): consistent, but not authentic."""
    size = HEADER_LEN + payload_len + TAG_LEN
    body = data[HEADER_LEN:size]
    body += bytes(size - HEADER_LEN - len(body))
    return rewrite(data[:HEADER_LEN], payload_len=payload_len) + body


def seal(endpoint: Endpoint, conn_id: int, ptype: int, plaintext: bytes, *,
         intent: int = Intent.RELIABLE, priority: int = 0, ack: int | None = None,
         payload_len: int | None = None, key_phase: int | None = None,
         ack_eliciting: int | None = None) -> bytes:
    """A datagram sealed with the session's real send key and its next packet number.

    What a peer holding the session's keys (or a buggy one) can send: every
    header field is the caller's, including a ``payload_len`` that disagrees
    with the plaintext. Consumes the packet number, as a real send does.
    """
    session = endpoint.sessions[conn_id]
    keys = session.send_keys
    assert keys is not None, "the session is not established"
    pn = session.pn_next
    session.pn_next += 1
    header = pack_header(int(ptype), int(intent), priority,
                         keys.phase if key_phase is None else key_phase,
                         len(plaintext) if payload_len is None else payload_len,
                         session.remote_id, pn & 0xFFFFFFFF,
                         session.recv_window.ack if ack is None else ack, ack_eliciting)
    return header + keys.seal(session.remote_id, pn, header, plaintext)


# ------------------------------------------------------------------ observing

def session_snapshot(s: Session, bucket: bool = True) -> dict[str, object]:
    """Everything of one session that only an authenticated packet (or a timer) may change."""
    rk, sk = s.recv_keys, s.send_keys
    rw, sw = s.recv_window, s.send_window
    snap: dict[str, object] = {
        "state": s.state,
        "ids": (s.conn_id, s.remote_id, s.initiator, s.peer_key),
        "addr": s.addr,
        "confirmed": s.confirmed,
        "pn_next": s.pn_next,
        "recv_keys": None if rk is None else (rk.phase, rk.first_pn_current,
                                              rk.prev_expires_at, rk._prev is not None),
        "send_keys": None if sk is None else (sk.phase, sk.packets_under_key, sk.updated_at),
        "replay": (s.replay.highest, s.replay._bits),
        "recv_window": (rw.next_rseq, tuple(sorted(rw.buffer.items())), rw.buffered_bytes,
                        rw.unread_bytes, rw.edge, rw.gap_since),
        "send_window": (sw.acked, sw.next_rseq, tuple(sw.outstanding), sw.rto_at, sw.edge),
        "pn_acks": (s.rx_largest, s.rx_bits, s.rx_largest_at, s.last_ack_largest, s.skip_at),
        "recovery": None if s.recovery is None else (
            tuple(s.recovery.sent), s.recovery.in_flight, s.recovery.largest_acked,
            s.recovery.loss_at, s.recovery.pto_count, s.recovery.last_ack_at,
            tuple(s.recovery.skipped)),
        "cc": None if s.cc is None else (s.cc.cwnd, s.cc.btl_bw, s.cc.min_rtt, s.cc.mode,
                                         s.cc.loss_cap),
        "strikes": (s.strikes, s.last_strike_at),
        "times": (s.last_recv_at, s.last_send_at, s.idle_limit),
        "rtt": (s.rtt.rto, s.rtt.srtt, s.rtt.rttvar),
        "hs_datagram": s.hs_datagram,
        "cookie": (s.cookie, s.cookie_taken_at),
        "finish_retry_at": s.finish_retry_at,
        "handshake": (s.finish_datagram, s.finish_body, s.finish_answered_at,
                      s.finish_answer_until, s.hs_rto, s.hs_retransmit_at, s.hs_deadline_at,
                      s.pending, s.pending_ip, s.hello_key, s.initiator_hs is not None,
                      s.responder_hs is not None),
        "queue": (s.queued, s.queued_reliable, tuple(s.retransmit), s.ack_at, s.ack_now,
                  s.ack_probe, s.pace_at, s.credit_probe_at),
    }
    if bucket:
        snap["bucket"] = (s.bucket.tokens, s.bucket.updated_at)
    return snap


def snapshot(endpoint: Endpoint, bucket: bool = True) -> dict[str, object]:
    """The endpoint's observable state (not its counters; see :func:`counters`)."""
    return {
        "sessions": {cid: session_snapshot(s, bucket) for cid, s in endpoint.sessions.items()},
        "pending": (endpoint.handshakes_in_flight, dict(endpoint._pending_per_ip),
                    frozenset(endpoint._pending_hello.items())),
        "by_peer_key": dict(endpoint._by_peer_key),
        "timer": endpoint.get_timer(),
    }


def counters(endpoint: Endpoint) -> dict[str, int]:
    return endpoint.stats.as_dict()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that moved, and by how much."""
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def diff(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """Human-readable paths where two snapshots differ (empty: identical)."""
    out: list[str] = []

    def walk(path: str, x: object, y: object) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=repr):
                walk(f"{path}.{k}", x.get(k, "<absent>"), y.get(k, "<absent>"))
        elif x != y:
            out.append(f"{path}: {x!r} -> {y!r}")

    walk("", before, after)
    return out


def total_size(datagrams: Iterable[tuple[bytes, Address]]) -> int:
    return sum(len(d) for d, _ in datagrams)
