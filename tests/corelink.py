"""A seeded in-memory link between sans-I/O Endpoints, driven by a fake clock.

Tests only. The link owns the clock (``Link.now``), every datagram in flight and
the per-direction conditions (loss, duplication, reordering by holding a
datagram back, and a drop filter). ``run(until)`` moves the clock forward from
one delivery or timer deadline to the next, exactly as an event loop would:
after every input it drains the endpoint's datagrams, then its events. Every
random choice comes from one ``random.Random(seed)``, so a run is reproducible.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from intentra.config import EndpointConfig
from intentra.constants import HEADER_LEN, HsKind, Intent, PacketType
from intentra.core.endpoint import Endpoint
from intentra.core.session import SessionState
from intentra.events import Address, Event, HandshakeCompleted, MessageReceived, SessionClosed
from intentra.keys import PrivateKey

E = TypeVar("E")

LATENCY = 0.005
"""One-way delay of every datagram, seconds."""
HOLD_BACK = 0.03
"""Extra delay of a datagram the link reorders, seconds."""
MAX_TIMER_REPEATS = 5
"""Times one deadline may fire at the same instant before the link calls it stuck."""


def seeded_rng(seed: object) -> Callable[[int], bytes]:
    """A reproducible ``rng`` for an Endpoint."""
    return random.Random(str(seed)).randbytes


def seeded_key(seed: object) -> PrivateKey:
    """A reproducible static key (X25519 takes any 32 bytes)."""
    return PrivateKey(random.Random(f"key-{seed}").randbytes(32))


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram as a node sent it."""

    sent_at: float
    src: Address
    dst: Address
    data: bytes

    @property
    def ptype(self) -> int:
        return self.data[0] & 0x0F

    @property
    def conn_id(self) -> int:
        return int.from_bytes(self.data[4:8], "big")

    @property
    def seq(self) -> int:
        return int.from_bytes(self.data[8:12], "big")

    @property
    def priority(self) -> int:
        return (self.data[1] >> 3) & 0x07

    @property
    def intent(self) -> int:
        return self.data[1] >> 6

    @property
    def hs_kind(self) -> HsKind | None:
        if self.ptype != PacketType.HS or len(self.data) <= HEADER_LEN:
            return None
        try:
            return HsKind(self.data[HEADER_LEN])
        except ValueError:
            return None


Filter = Callable[[Datagram], bool]


def is_hs(kind: HsKind) -> Filter:
    """Matches handshake datagrams of one kind."""
    return lambda d: d.hs_kind is kind


def is_type(ptype: PacketType) -> Filter:
    """Matches datagrams of one packet type."""
    return lambda d: d.ptype == ptype


class DropFirst:
    """A drop filter: drops the first ``count`` datagrams that match, and keeps them."""

    def __init__(self, match: Filter, count: int = 1) -> None:
        self.match = match
        self.left = count
        self.dropped: list[Datagram] = []

    def __call__(self, d: Datagram) -> bool:
        if self.left > 0 and self.match(d):
            self.left -= 1
            self.dropped.append(d)
            return True
        return False


@dataclass
class Path:
    """Conditions of one direction between two nodes."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    hold: float = HOLD_BACK
    drop: Filter | None = None
    rate: float | None = None
    """Bottleneck rate in bytes per second (None: no bottleneck), as tbf shapes a link."""
    queue_limit: int = 375_000
    """Bytes the bottleneck queues before it drops (tbf's limit; 300 ms at 10 Mbit/s)."""
    busy_until: float = 0.0
    """When the bottleneck finishes sending what it has queued (link state)."""
    dropped_queue: int = 0
    """Datagrams the bottleneck dropped because its queue was full."""


@dataclass
class Node:
    """One endpoint on the link, its fake address and what it reported."""

    name: str
    endpoint: Endpoint
    addr: Address
    key: PrivateKey
    log: list[tuple[float, Event]] = field(default_factory=list)
    messages: list[MessageReceived] = field(default_factory=list)

    @property
    def public(self) -> bytes:
        return self.key.public_key.to_bytes()

    @property
    def events(self) -> list[Event]:
        return [e for _, e in self.log]

    def of_type(self, cls: type[E]) -> list[E]:
        return [e for _, e in self.log if isinstance(e, cls)]

    def timed(self, cls: type[E]) -> list[tuple[float, E]]:
        return [(t, e) for t, e in self.log if isinstance(e, cls)]

    def payloads(self, intent: Intent | None = None, conn_id: int | None = None) -> list[bytes]:
        """Data of every message delivered, in delivery order."""
        return [e.data for e in self.messages
                if (intent is None or e.intent == intent)
                and (conn_id is None or e.conn_id == conn_id)]

    def closed(self, conn_id: int) -> SessionClosed | None:
        found = [e for e in self.of_type(SessionClosed) if e.conn_id == conn_id]
        return found[-1] if found else None

    def established(self, conn_id: int) -> bool:
        session = self.endpoint.sessions.get(conn_id)
        return session is not None and session.state is SessionState.ESTABLISHED


class Link:
    """Endpoints joined by a fake network with a fake clock."""

    def __init__(self, seed: int = 1, latency: float = LATENCY) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.latency = latency
        self.now = 0.0
        self.nodes: list[Node] = []
        self._timer_heap: list[tuple[float, int, Node]] = []
        self._timer_of: dict[str, float | None] = {}
        self._timer_seq = 0
        self.sent: list[Datagram] = []
        self.undeliverable: list[Datagram] = []
        self._by_addr: dict[Address, Node] = {}
        self._paths: dict[tuple[str, str], Path] = {}
        self._flight: list[tuple[float, int, Datagram]] = []
        self._tick = 0

    # ------------------------------------------------------------ topology

    def add(self, name: str, config: EndpointConfig | None = None,
            allowed_peers: Iterable[bytes] | None = None, key: PrivateKey | None = None,
            cookie_master: bytes | None = None, addr: Address | None = None,
            wall_offset: float = 0.0, release_on_take: bool = True) -> Node:
        """Create an endpoint with a seeded rng and key, at a fake address.

        ``release_on_take=False`` makes an application that never reads: taking
        events gives no credit back (call ``endpoint.release`` to read).
        """
        index = len(self.nodes) + 1
        key = key if key is not None else seeded_key(f"{self.seed}-{name}")
        addr = addr if addr is not None else (f"10.0.0.{index}", 4000 + index)
        endpoint = Endpoint(key.to_bytes(), seeded_rng(f"{self.seed}-{name}"), config,
                            allowed_peers, cookie_master, wall_offset,
                            release_on_take=release_on_take)
        node = Node(name, endpoint, addr, key)
        self.nodes.append(node)
        self._by_addr[addr] = node
        return node

    def move(self, node: Node, addr: Address) -> None:
        """The node now sends from ``addr`` (its old address still reaches it)."""
        node.addr = addr
        self._by_addr[addr] = node

    def path(self, src: Node, dst: Node) -> Path:
        """The conditions from ``src`` to ``dst`` (created on first use)."""
        return self._paths.setdefault((src.name, dst.name), Path())

    def both(self, a: Node, b: Node) -> tuple[Path, Path]:
        return self.path(a, b), self.path(b, a)

    # ------------------------------------------------------------ datagrams

    def _transmit(self, src: Node, dst: Address, data: bytes) -> None:
        d = Datagram(self.now, src.addr, dst, data)
        self.sent.append(d)
        node = self._by_addr.get(dst)
        if node is None:
            self.undeliverable.append(d)
            return
        path = self._paths.get((src.name, node.name))
        if path is None:
            self._schedule(self.now + self.latency, d)
            return
        if path.drop is not None and path.drop(d):
            return
        rng = self.rng
        if path.loss and rng.random() < path.loss:
            return
        copies = 2 if path.dup and rng.random() < path.dup else 1
        if path.rate is not None:
            # A shaped link: FIFO at ``rate`` behind a queue of ``queue_limit`` bytes.
            start = max(self.now, path.busy_until)
            if (start - self.now) * path.rate + len(data) > path.queue_limit:
                path.dropped_queue += 1
                return
            path.busy_until = start + len(data) / path.rate
            self._schedule(path.busy_until + self.latency, d)
            return
        for _ in range(copies):
            delay = self.latency
            if path.reorder and rng.random() < path.reorder:
                delay += path.hold * (0.5 + rng.random())
            self._schedule(self.now + delay, d)

    def _schedule(self, at: float, d: Datagram) -> None:
        self._tick += 1
        heapq.heappush(self._flight, (at, self._tick, d))

    def inject(self, data: bytes, src: Address, dst: Node, delay: float | None = None) -> None:
        """Put a datagram on the wire towards ``dst`` as if sent from ``src``."""
        d = Datagram(self.now, src, dst.addr, data)
        self._schedule(self.now + (self.latency if delay is None else delay), d)

    def deliver(self, data: bytes, src: Address, dst: Node) -> None:
        """Hand a datagram to ``dst`` now, then drain it (no link conditions)."""
        dst.endpoint.receive_datagram(data, src, self.now)
        self.pump(dst)

    # ------------------------------------------------------------ the loop

    def pump(self, *nodes: Node) -> None:
        """Drain datagrams, then events, of the nodes (all if none given) at ``now``."""
        for node in nodes or tuple(self.nodes):
            for data, dst in node.endpoint.datagrams_to_send(self.now):
                self._transmit(node, dst, data)
            for event in node.endpoint.events():
                node.log.append((self.now, event))
                if isinstance(event, MessageReceived):
                    node.messages.append(event)

    def _next_timer(self, stale: list[Node]) -> tuple[float, Node | None]:
        """The earliest timer of any node, re-reading only the ``stale`` nodes'.

        A node's deadline changes only when its endpoint is touched, so ``run``
        re-reads every node once when it starts and then only those it delivered to
        or fired: a link of 1,000 nodes costs a heap operation per step, not 1,000
        ``get_timer`` calls. Entries whose node has since moved are skipped.
        """
        heap, timer_of = self._timer_heap, self._timer_of
        for node in stale:
            t = node.endpoint.get_timer()
            timer_of[node.name] = t
            if t is not None:
                self._timer_seq += 1
                heapq.heappush(heap, (t, self._timer_seq, node))
        while heap:
            t, _, node = heap[0]
            if timer_of.get(node.name) == t:
                return t, node
            heapq.heappop(heap)
        return float("inf"), None

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> bool:
        """Advance the clock to ``until``, delivering datagrams and firing timers.

        Returns:
            True if ``stop()`` became true (the clock stays where that happened).
        """
        self.pump()
        # A deadline may fire twice (the endpoint re-arms lazily and finds nothing
        # due the second time); one that keeps firing at the same instant would
        # spin an event loop for ever.
        stuck: tuple[float, str] | None = None
        repeats = 0
        self._timer_heap.clear()  # tests may have touched any endpoint since the last run
        stale: list[Node] = self.nodes
        while True:
            if stop is not None and stop():
                return True
            t_data = self._flight[0][0] if self._flight else float("inf")
            t_timer, node = self._next_timer(stale)
            stale = []
            t = min(t_data, t_timer)
            if t > until:
                self.now = max(self.now, until)
                return False
            self.now = max(self.now, t)
            if t_data <= t_timer:
                _, _, d = heapq.heappop(self._flight)
                dst = self._by_addr.get(d.dst)
                if dst is None:
                    self.undeliverable.append(d)
                    continue
                self.deliver(d.data, d.src, dst)
                stale.append(dst)
                stuck, repeats = None, 0
            else:
                assert node is not None
                if stuck == (t_timer, node.name):
                    repeats += 1
                    if repeats >= MAX_TIMER_REPEATS:
                        raise AssertionError(
                            f"{node.name}: timer at {t_timer} fired {repeats} times, still due")
                else:
                    stuck, repeats = (t_timer, node.name), 0
                node.endpoint.handle_timer(self.now)
                self.pump(node)
                stale.append(node)

    def advance(self, seconds: float, stop: Callable[[], bool] | None = None) -> bool:
        return self.run(self.now + seconds, stop)

    # ------------------------------------------------------------ helpers

    def connect(self, a: Node, b: Node, server_key: bytes | None = None) -> int:
        conn_id = a.endpoint.connect(b.addr, self.now, server_key)
        self.pump(a)
        return conn_id

    def responder_id(self, b: Node, a: Node) -> int | None:
        """The conn_id of b's latest session established by a's handshake."""
        found = [e.conn_id for e in b.of_type(HandshakeCompleted)
                 if not e.initiator and e.peer_key == a.public]
        return found[-1] if found else None

    def establish(self, a: Node, b: Node, within: float = 10.0) -> tuple[int, int]:
        """a connects to b; runs until both sides completed. Returns (a's id, b's id)."""
        done_before = len(b.of_type(HandshakeCompleted))
        conn_id = self.connect(a, b)

        def both_done() -> bool:
            return (any(e.conn_id == conn_id for e in a.of_type(HandshakeCompleted))
                    and len(b.of_type(HandshakeCompleted)) > done_before)

        if not self.run(self.now + within, both_done):
            raise AssertionError("handshake did not complete")
        responder = self.responder_id(b, a)
        assert responder is not None
        return conn_id, responder

    def send(self, node: Node, conn_id: int, data: bytes, intent: Intent = Intent.RELIABLE,
             priority: int = 0) -> bool:
        """Queue one message at ``now`` (the flush happens at the next pump)."""
        return node.endpoint.send(conn_id, data, intent, priority, self.now)

    def sent_by(self, node: Node, match: Filter | None = None) -> list[Datagram]:
        return [d for d in self.sent
                if self._by_addr.get(d.src) is node and (match is None or match(d))]


def connected_pair(seed: int = 1, config: EndpointConfig | None = None,
                   config_b: EndpointConfig | None = None
                   ) -> tuple[Link, Node, Node, int, int]:
    """Nodes a and b with an established session (b takes ``config`` unless given
    its own); the link is quiet afterwards. Returns (link, a, b, a's id, b's id)."""
    link = Link(seed)
    a = link.add("a", config)
    b = link.add("b", config_b if config_b is not None else config)
    cid_a, cid_b = link.establish(a, b)
    link.advance(0.1)
    return link, a, b, cid_a, cid_b
