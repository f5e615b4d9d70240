"""Hubs joined through NATS: :class:`Bridge` (``intentra serve --bus``), docs/scaling.md.

A hub relays between its own peers (:mod:`intentra.hub`). A :class:`Bridge`
joins one hub :class:`~intentra.aio.transport.Transport` to a NATS cluster, so
that hubs on many processes and machines serve one population of peers:

- each message the hub's own peers send is published once, as a *bus
  message* (below) naming its origin (this hub, the peer's static key), intent,
  priority and lane;
- what other hubs publish is fanned out to this hub's peers with the same
  intent and priority, never back to the hub it came from (the connection is
  made with ``no_echo``, and RELIABLE messages of this hub are skipped by hub
  id) nor to the peer that sent it (a peer that moved here from another hub is
  excluded by its key).

The intents keep their promises across hubs:

- **REALTIME** goes on core NATS subjects: at most once, never late. It is
  dropped and counted, never queued, when the bus is slow: while the
  connection is down, when the client's outbound buffer holds more than
  ``realtime_pending_bytes``, when it waited in this bridge longer than
  ``realtime_deadline``, when a received one is older than that (by the
  publisher's wall-clock stamp: hubs on several machines need synchronised
  clocks, NTP, or a larger deadline), or when the receiving subscription
  overflows.
- **RELIABLE** goes through a JetStream stream (replicated, 3 by default):
  exactly once and in order per sending peer, also across the loss and
  restart of a NATS server. Each hub numbers its RELIABLE messages (``seq``,
  from 1) and publishes them pipelined with ``Nats-Msg-Id: HUB-SEQ``, resending
  any that is not acknowledged by the stream within ``ack_timeout`` (the
  stream drops the duplicates a resend makes within its duplicate window).
  Each hub reads the stream through its own durable pull consumer (explicit
  acks; what is not acked is redelivered after ``consumer_ack_wait``) and,
  per origin hub, delivers in ``seq`` order, holding what comes early and
  dropping what it has already delivered: order and uniqueness are checked
  end to end, whatever the stream or a failover does to them. A gap is
  skipped (counted in ``intentra_bus_dropped_total{cause="gap"}``) only when
  its origin hub has fallen silent for ``hub_timeout`` (it died before its
  message was stored), after ``gap_timeout``, or beyond ``max_held`` held
  messages.

What is not promised: a hub that crashes loses the messages its peers sent it
that it had acknowledged but not yet stored on the bus (at most its publish
backlog, normally a few milliseconds of traffic); peers that reconnect to
another hub resend only what the crashed hub never acknowledged (at least once
across a reconnect, :meth:`Transport.connect`).

Bus message (version 1), the NATS payload on ``SUBJECT.rt.HUB`` (REALTIME) and
``SUBJECT.rel.HUB`` (RELIABLE); ``HUB`` is the hub id in 16 hex digits::

    offset size
    0      1    0xB1: magic and bus message version 1
    1      1    intent: 0 RELIABLE, 1 REALTIME
    2      1    priority 0..7
    3      1    lane 0..255
    4      8    origin hub id
    12     8    seq: the hub's RELIABLE sequence number from 1 (REALTIME: 0), big-endian
    20     8    stamp: publisher's wall clock, microseconds since the Unix epoch, big-endian
    28     32   the origin peer's static X25519 public key, as its hub authenticated it
    60     ...  the message, unchanged

Each hub also publishes a heartbeat, JSON ``{"hub": HUB, "peers": N, "seq": S}``,
on ``SUBJECT.hb.HUB`` every ``heartbeat_interval``. The NATS connection is
trusted as a hub is: anyone allowed to publish on the bus can claim any origin
key, so secure it with NATS credentials and TLS (``tls://`` URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from intentra.aio.transport import Message, Transport
from intentra.constants import Intent
from intentra.envelope import MAGIC as ENVELOPE_MAGIC
from intentra.errors import BusError, IntentraError, MessageTooLargeError

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["HEADER", "MAGIC", "OVERHEAD", "Bridge", "BusConfig", "BusError", "BusMessage",
           "BusStats", "Sequencer", "pack", "unpack"]

MAGIC: Final = 0xB1
"""The first byte of a bus message: magic and version 1."""
HEADER: Final = struct.Struct("!BBBB8sQQ32s")
OVERHEAD: Final = HEADER.size
"""Bytes a bus message adds to the original message (60)."""
HUB_ID_LEN: Final = 8
_RELIABLE: Final = int(Intent.RELIABLE)
_REALTIME: Final = int(Intent.REALTIME)
_INTENTS: Final = {int(i): i for i in Intent}
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
#: Upper bounds of the RELIABLE publish-to-stored-ack histogram, seconds.
ACK_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0)


@dataclass(frozen=True, slots=True)
class BusMessage:
    """A parsed bus message (see the module docstring for the layout)."""

    intent: int
    priority: int
    lane: int
    hub: bytes
    seq: int
    stamp_us: int
    origin: bytes
    data: bytes


def pack(intent: int, priority: int, lane: int, hub: bytes, seq: int, stamp_us: int,
         origin: bytes, data: bytes) -> bytes:
    """A bus message; ``hub`` is 8 bytes, ``origin`` 32."""
    return HEADER.pack(MAGIC, intent, priority, lane, hub, seq, stamp_us, origin) + data


def unpack(payload: bytes) -> BusMessage | None:
    """The fields of a bus message, or None if ``payload`` is not one (never raises)."""
    if len(payload) <= OVERHEAD or payload[0] != MAGIC:
        return None
    _, intent, priority, lane, hub, seq, stamp, origin = HEADER.unpack_from(payload)
    if intent not in (_RELIABLE, _REALTIME) or priority > 7:
        return None
    return BusMessage(intent, priority, lane, hub, seq, stamp, origin, payload[OVERHEAD:])


def _seconds(name: str, value: float, zero_ok: bool = False) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or \
            not (value >= 0 if zero_ok else value > 0):
        raise BusError(f"BusConfig.{name} is a number of seconds "
                       f"{'>= 0' if zero_ok else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class BusConfig:
    """How a :class:`Bridge` uses NATS. Every field has a working default."""

    subject: str = "intentra"
    """Subject prefix: ``SUBJECT.rt.HUB``, ``SUBJECT.rel.HUB``, ``SUBJECT.hb.HUB``."""
    replicas: int = 3
    """Replicas of the RELIABLE stream (1 on a single server, found out at start)."""
    storage: str = "file"
    """Where the stream keeps messages: ``"file"`` or ``"memory"``."""
    max_age: float = 120.0
    """Seconds the stream keeps a RELIABLE message (a hub further behind loses it)."""
    duplicate_window: float = 60.0
    """Seconds the stream remembers a Nats-Msg-Id to drop a resent duplicate."""
    publish_window: int = 1024
    """RELIABLE messages published and not yet acknowledged by the stream, at most."""
    max_backlog: int = 16384
    """RELIABLE messages waiting or in flight beyond which the relay waits (backpressure)."""
    ack_timeout: float = 2.0
    """Seconds without a stream acknowledgement after which a RELIABLE message is resent."""
    retry_delay: float = 0.2
    """Seconds before resending a RELIABLE message the stream refused (no leader yet)."""
    realtime_deadline: float = 0.1
    """Seconds a REALTIME message may take from its hub's publish to another hub's fan-out."""
    realtime_queue: int = 4096
    """REALTIME messages waiting for the bus, at most (the oldest are dropped)."""
    realtime_pending_bytes: int = 1 << 20
    """Outbound bytes buffered in the NATS client above which REALTIME is dropped."""
    heartbeat_interval: float = 0.5
    """Seconds between this hub's heartbeats (and bus RTT measurements)."""
    hub_timeout: float = 3.0
    """Seconds of silence after which another hub counts as gone."""
    gap_timeout: float = 30.0
    """Seconds a gap in a live hub's RELIABLE sequence is waited for before it is skipped."""
    max_held: int = 65536
    """Early RELIABLE messages held per origin hub while a gap is waited for, at most."""
    reconnect_wait: float = 0.2
    """Seconds between attempts to reach the same NATS server again."""
    connect_timeout: float = 2.0
    """Seconds for one NATS connection attempt."""
    start_timeout: float = 30.0
    """Seconds :meth:`Bridge.start` waits for NATS and JetStream before giving up."""
    consumer_ack_wait: float = 3.0
    """Seconds after which the stream redelivers a RELIABLE message this hub did not ack."""
    max_ack_pending: int = 20000
    """RELIABLE messages delivered to this hub and not yet acked, at most (stream side)."""
    pull_batch: int = 512
    """Messages asked for per pull request."""
    pull_expires: float = 2.0
    """Seconds a pull request stays open at the stream (a fresh one every half of it)."""
    consumer_inactive: float = 120.0
    """Seconds after which the stream deletes the consumer of a hub that stopped pulling."""
    ping_interval: float = 1.0
    """Seconds between NATS pings (a silent server is left after two unanswered)."""

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not _TOKEN.match(self.subject):
            raise BusError(f"bus subject must be NATS tokens of letters, digits, '-' and '_' "
                           f"joined by dots (no wildcards), like 'intentra' or "
                           f"'plant.robots', got {self.subject!r}")
        if self.storage not in ("file", "memory"):
            raise BusError(f"BusConfig.storage is 'file' or 'memory', got {self.storage!r}")
        for name in ("replicas", "publish_window", "max_backlog", "realtime_queue",
                     "realtime_pending_bytes", "max_held", "max_ack_pending", "pull_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BusError(f"BusConfig.{name} is a positive integer, got {value!r}")
        for name in ("max_age", "duplicate_window", "ack_timeout", "retry_delay",
                     "realtime_deadline", "heartbeat_interval", "hub_timeout", "gap_timeout",
                     "reconnect_wait", "connect_timeout", "start_timeout", "consumer_ack_wait",
                     "pull_expires", "consumer_inactive", "ping_interval"):
            _seconds(name, getattr(self, name))
        if self.duplicate_window > self.max_age:
            raise BusError("BusConfig.duplicate_window must not exceed max_age")

    @property
    def stream(self) -> str:
        """The JetStream stream's name: the subject in capitals, dots as underscores."""
        return self.subject.replace(".", "_").upper()


@dataclass
class BusStats:
    """Plain counters of one bridge (read by :class:`intentra.metrics.BusCollector`)."""

    published: list[int] = field(default_factory=lambda: [0, 0])
    """Messages stored (RELIABLE) or handed to NATS (REALTIME), by intent value."""
    received: list[int] = field(default_factory=lambda: [0, 0])
    """Messages from other hubs fanned out to this hub's peers, by intent value."""
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)
    """(intent name, cause) -> messages dropped on the way through the bus."""
    duplicates: int = 0
    """RELIABLE messages delivered twice by the stream and dropped here (by seq)."""
    retransmissions: int = 0
    """RELIABLE publishes sent again (no acknowledgement in time, or refused)."""
    reconnects: int = 0
    """Times the NATS connection was re-established."""
    rtt: float | None = None
    """The last NATS round trip (PING to PONG), seconds."""
    ack_buckets: list[int] = field(default_factory=lambda: [0] * len(ACK_BUCKETS))
    ack_count: int = 0
    ack_sum: float = 0.0

    def drop(self, intent: int, cause: str, count: int = 1) -> None:
        key = ("reliable" if intent == _RELIABLE else "realtime", cause)
        self.dropped[key] = self.dropped.get(key, 0) + count

    def observe_ack(self, seconds: float) -> None:
        self.ack_count += 1
        self.ack_sum += seconds
        for i, bound in enumerate(ACK_BUCKETS):
            if seconds <= bound:
                self.ack_buckets[i] += 1
                return


class _Origin:
    """What this hub knows of another hub's RELIABLE sequence."""

    __slots__ = ("gap_since", "heard", "held", "next")

    def __init__(self, now: float) -> None:
        self.next = 0                 # the seq to deliver next (0: none seen yet)
        self.held: dict[int, Any] = {}
        self.heard = now              # last heartbeat or message
        self.gap_since = 0.0          # when the oldest held message started waiting


class Sequencer:
    """Delivers each origin hub's RELIABLE messages once, in ``seq`` order (sans-I/O).

    The stream may deliver a message twice (a resent publish past the
    duplicate window, a redelivery after a lost ack) or out of order (a publish
    refused during a leader election and resent after later ones were stored).
    Per origin hub, :meth:`offer` returns what is now deliverable in order,
    holds what came early and drops what was already delivered. A hub's
    sequence starts at the first ``seq`` seen from it. A gap is skipped (its
    messages counted in :attr:`gaps`) when the origin has been silent for
    ``hub_timeout`` (it died before storing the missing message), after
    ``gap_timeout`` in any case, or when more than ``max_held`` messages wait.
    Time is passed in (``now``, monotonic seconds).
    """

    def __init__(self, *, hub_timeout: float, gap_timeout: float, max_held: int,
                 forget_after: float) -> None:
        self.hub_timeout = hub_timeout
        self.gap_timeout = gap_timeout
        self.max_held = max_held
        self.forget_after = forget_after
        self.origins: dict[bytes, _Origin] = {}
        self.duplicates = 0
        self.gaps = 0

    def heard(self, hub: bytes, now: float) -> None:
        """``hub`` is alive at ``now`` (a heartbeat or a REALTIME message)."""
        origin = self.origins.get(hub)
        if origin is None:
            origin = self.origins[hub] = _Origin(now)
        origin.heard = max(origin.heard, now)

    def alive(self, now: float) -> int:
        """Origins heard within ``hub_timeout``."""
        return sum(1 for o in self.origins.values() if now - o.heard < self.hub_timeout)

    def all_heard(self, now: float) -> None:
        """Count every origin as heard now (this side was cut off, not they)."""
        for origin in self.origins.values():
            origin.heard = max(origin.heard, now)

    def offer(self, hub: bytes, seq: int, item: Any, now: float) -> list[Any]:
        """Take message ``seq`` of ``hub``; returns the items now deliverable, in order."""
        origin = self.origins.get(hub)
        if origin is None:
            origin = self.origins[hub] = _Origin(now)
        if origin.next == 0:
            origin.next = seq
        if seq < origin.next or seq in origin.held:
            self.duplicates += 1
            return []
        if seq > origin.next:
            if not origin.held:
                origin.gap_since = now
            origin.held[seq] = item
            return self._skip(origin, now) if len(origin.held) > self.max_held else []
        out = [item]
        origin.next += 1
        self._release(origin, out, now)
        return out

    def expire(self, now: float) -> list[Any]:
        """Skip the gaps that waited too long; forget long-silent origins. Returns deliverables."""
        out: list[Any] = []
        for hub, origin in list(self.origins.items()):
            if origin.held:
                silent = now - origin.heard > self.hub_timeout
                waited = now - origin.gap_since
                if (silent and waited > self.hub_timeout) or waited > self.gap_timeout:
                    out += self._skip(origin, now)
            elif now - origin.heard > self.forget_after:
                del self.origins[hub]  # the stream no longer holds anything of it
        return out

    def _skip(self, origin: _Origin, now: float) -> list[Any]:
        first = min(origin.held)
        self.gaps += first - origin.next
        origin.next = first
        out: list[Any] = []
        self._release(origin, out, now)
        return out

    @staticmethod
    def _release(origin: _Origin, out: list[Any], now: float) -> None:
        held = origin.held
        while held:
            item = held.pop(origin.next, None)
            if item is None:
                origin.gap_since = now  # the next gap starts waiting now
                return
            out.append(item)
            origin.next += 1


class _Pending:
    """A RELIABLE publish not yet acknowledged by the stream."""

    __slots__ = ("first_sent", "payload", "retry_at", "sent_at")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.sent_at = 0.0      # 0: not sent on the current connection
        self.first_sent = 0.0
        self.retry_at = 0.0     # refused: resend at this time


def _wall_us() -> int:
    return time.time_ns() // 1000


def _servers(servers: str | Sequence[str]) -> list[str]:
    items = [s.strip() for s in (servers.split(",") if isinstance(servers, str) else servers)]
    items = [s for s in items if s]
    if not items:
        raise BusError("the bus needs at least one NATS server URL, like nats://127.0.0.1:4222")
    for url in items:
        if not re.match(r"^(nats|tls|ws|wss)://[^/\s]+$", url):
            raise BusError(f"bad NATS server URL {url!r}: expected nats://HOST:PORT "
                           "(or tls://, with credentials as nats://USER:PASS@HOST:PORT)")
    return items


class Bridge:
    """Joins a hub Transport's peers to other hubs through NATS.

    ``async with Bridge(transport, "nats://127.0.0.1:4222") as bridge:`` then
    run the hub with ``intentra.hub.relay(transport, bus=bridge)``, which
    hands the bridge every message the hub's own peers send
    (:meth:`publish`) and waits while the bus is backlogged. What other hubs
    publish is fanned out to the transport's peers by the bridge itself.

    Args:
        transport: the hub's transport.
        servers: NATS URLs, a list or comma-separated (``nats://h1:4222,nats://h2:4222``).
        config: how NATS is used (:class:`BusConfig`).
        envelope: wrap what comes from other hubs in an origin envelope
            (:mod:`intentra.envelope`), as ``relay(..., envelope=True)`` wraps
            what the hub relays between its own peers.

    Raises:
        BusError: no server URL, or a malformed one.
    """

    def __init__(self, transport: Transport, servers: str | Sequence[str], *,
                 config: BusConfig | None = None, envelope: bool = False) -> None:
        self.transport = transport
        self.servers = _servers(servers)
        self.config = config if config is not None else BusConfig()
        self.envelope = envelope
        self.hub = os.urandom(HUB_ID_LEN)
        self.hub_id = self.hub.hex()
        self.stats = BusStats()
        subject = self.config.subject
        self._rt_subject = f"{subject}.rt.{self.hub_id}"
        self._rel_subject = f"{subject}.rel.{self.hub_id}"
        self._hb_subject = f"{subject}.hb.{self.hub_id}"
        self._nc: NatsClient | None = None
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False
        self._started = False
        self._closing = False
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._seq = 0
        self._waiting: deque[tuple[int, bytes]] = deque()   # RELIABLE not yet published
        self._inflight: dict[int, _Pending] = {}            # published, not yet acked
        self._realtime: deque[tuple[float, bytes]] = deque()  # (queued at, payload)
        self.sequencer = Sequencer(hub_timeout=self.config.hub_timeout,
                                   gap_timeout=self.config.gap_timeout,
                                   max_held=self.config.max_held,
                                   forget_after=self.config.max_age + 60.0)
        self._ack_prefix = ""
        self._deliver_subject = ""
        self._consumer = f"hub-{self.hub_id}"
        self._since_pull = 0
        self._max_payload = 1 << 20

    # ---------------------------------------------------------------- life

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while the NATS connection is up."""
        return self._connected

    @property
    def hubs(self) -> int:
        """Other hubs heard from within ``hub_timeout``."""
        return self.sequencer.alive(time.monotonic())

    @property
    def backlog(self) -> int:
        """RELIABLE messages not yet acknowledged by the stream."""
        return len(self._waiting) + len(self._inflight)

    @property
    def backlogged(self) -> bool:
        """True when the relay should wait (:meth:`wait_for_room`) before handing more."""
        return self.backlog >= self.config.max_backlog

    async def wait_for_room(self) -> None:
        """Wait until the RELIABLE backlog is below half of ``max_backlog``."""
        while self.backlogged and not self._closing:
            self._room.clear()
            await self._room.wait()

    async def start(self) -> None:
        """Connect to NATS, make sure the stream exists, create this hub's consumer.

        Raises:
            BusError: nats-py is not installed, no server answered, or
                JetStream did not become available within ``start_timeout``.
        """
        if self._started:
            return
        try:
            import nats.errors  # noqa: PLC0415 - an optional extra
            from nats.aio.client import Client  # noqa: PLC0415
        except ImportError:
            raise BusError("intentra.bus needs nats-py: pip install 'intentra[bus]'") from None
        cfg = self.config
        await self._probe()
        nc = Client()
        self._nc = nc
        options: dict[str, Any] = {
            "servers": self.servers, "name": f"intentra-hub-{self.hub_id}", "no_echo": True,
            "allow_reconnect": True, "max_reconnect_attempts": -1,
            "reconnect_time_wait": cfg.reconnect_wait, "connect_timeout": cfg.connect_timeout,
            "ping_interval": cfg.ping_interval, "max_outstanding_pings": 2,
            "error_cb": self._on_error, "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected}
        try:
            await asyncio.wait_for(nc.connect(**options), cfg.start_timeout)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            self._nc = None
            what = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise BusError(f"cannot reach NATS at {', '.join(self.servers)} within "
                           f"{cfg.start_timeout:g} s ({what}); is a nats-server running "
                           "there?") from None
        self._connected = True
        self._max_payload = nc.max_payload
        try:
            await self._prepare(nc)
        except BaseException:
            with contextlib.suppress(Exception):
                await nc.close()
            self._nc = None
            self._connected = False
            raise
        self._started = True
        from intentra.metrics import BusCollector  # noqa: PLC0415

        self.transport.registry.register(BusCollector(self))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pump()), loop.create_task(self._timers())]

    async def _probe(self) -> None:
        """Fail at once, not after ``start_timeout``, when no server takes a TCP connection."""
        async def reach(url: str) -> str | None:
            parts = urlsplit(url)
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(parts.hostname, parts.port or 4222),
                    self.config.connect_timeout)
            except (OSError, TimeoutError) as exc:
                return f"{url}: {getattr(exc, 'strerror', None) or 'no answer'}"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return None

        failures = await asyncio.gather(*(reach(url) for url in self.servers))
        if all(failures):
            raise BusError(f"cannot reach any NATS server ({'; '.join(f for f in failures if f)})"
                           "; is a nats-server running there?")

    async def _prepare(self, nc: NatsClient) -> None:
        """Subscriptions, the stream and this hub's consumer (retried while JetStream starts)."""
        cfg = self.config
        self._ack_prefix = nc.new_inbox()
        self._deliver_subject = nc.new_inbox()
        big, big_bytes = 1 << 20, 1 << 30
        self._subs = [
            await nc.subscribe(f"{cfg.subject}.rt.*", cb=self._on_realtime,
                               pending_msgs_limit=cfg.realtime_queue,
                               pending_bytes_limit=64 << 20),
            await nc.subscribe(f"{cfg.subject}.hb.*", cb=self._on_heartbeat),
            await nc.subscribe(f"{self._ack_prefix}.*", cb=self._on_ack,
                               pending_msgs_limit=big, pending_bytes_limit=big_bytes),
            await nc.subscribe(self._deliver_subject, cb=self._on_reliable,
                               pending_msgs_limit=big, pending_bytes_limit=big_bytes),
        ]
        deadline = time.monotonic() + cfg.start_timeout
        while True:
            try:
                await self._ensure_stream(nc)
                await self._ensure_consumer(nc)
                break
            except BusError:
                raise
            except Exception as exc:  # JetStream not ready yet (no leader, no responders)
                if time.monotonic() > deadline:
                    raise BusError(f"JetStream on {', '.join(self.servers)} not available "
                                   f"within {cfg.start_timeout:g} s ({exc or type(exc).__name__}"
                                   "); are the servers run with JetStream enabled "
                                   "(nats-server -js)?") from None
                await asyncio.sleep(0.25)
        await self._pull()

    async def _ensure_stream(self, nc: NatsClient) -> None:
        from nats.js import api  # noqa: PLC0415
        from nats.js.errors import APIError, NotFoundError  # noqa: PLC0415

        cfg = self.config
        js = nc.jetstream(timeout=cfg.connect_timeout)
        subjects = [f"{cfg.subject}.rel.>"]
        try:
            info = await js.stream_info(cfg.stream)
        except NotFoundError:
            pass
        else:
            if not set(subjects) <= set(info.config.subjects or ()):
                raise BusError(f"a JetStream stream {cfg.stream!r} exists without the subject "
                               f"{subjects[0]!r}; delete it or choose another --bus-subject")
            return
        replicas = cfg.replicas
        while True:
            config = api.StreamConfig(
                name=cfg.stream, subjects=subjects, retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE if cfg.storage == "file" else
                api.StorageType.MEMORY, num_replicas=replicas, max_age=cfg.max_age,
                duplicate_window=cfg.duplicate_window, discard=api.DiscardPolicy.OLD)
            try:
                await js.add_stream(config)
                return
            except APIError as exc:
                text = str(exc.description or "").lower()
                if replicas > 1 and ("replicas" in text or "insufficient" in text
                                     or "non-clustered" in text):
                    replicas = 1  # a single server (or too few): keep what it can hold
                    continue
                if "already in use" in text:
                    return  # another hub made it meanwhile
                raise

    async def _ensure_consumer(self, nc: NatsClient) -> None:
        from nats.js import api  # noqa: PLC0415

        cfg = self.config
        js = nc.jetstream(timeout=cfg.connect_timeout)
        await js.add_consumer(cfg.stream, api.ConsumerConfig(
            durable_name=self._consumer, deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=cfg.consumer_ack_wait,
            max_ack_pending=cfg.max_ack_pending, filter_subject=f"{cfg.subject}.rel.>",
            inactive_threshold=cfg.consumer_inactive, max_waiting=512))

    async def close(self, flush_timeout: float = 2.0) -> int:
        """Publish what is left (up to ``flush_timeout`` s), remove the consumer, disconnect.

        Returns:
            RELIABLE messages never acknowledged by the stream (lost to other hubs).
        """
        if self._closing or self._nc is None:
            return 0
        self._closing = True  # publish() drops from now on; what is queued still goes
        self._wake.set()
        deadline = time.monotonic() + flush_timeout
        while self.backlog and self._connected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        left = self.backlog
        self._room.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        nc = self._nc
        if self._started and self._connected:
            with contextlib.suppress(Exception):
                await nc.jetstream(timeout=1.0).delete_consumer(self.config.stream,
                                                                self._consumer)
        with contextlib.suppress(Exception):
            await nc.close()
        self._connected = False
        return left

    # ---------------------------------------------------------------- outgoing

    def publish(self, msg: Message) -> None:
        """Put a message this hub's own peer sent on the bus (never waits).

        RELIABLE is queued for the stream (check :attr:`backlogged`);
        REALTIME is dropped and counted rather than queued when the bus is slow.
        After :meth:`close` messages are dropped (counted, cause ``closed``).

        Raises:
            BusError: the bridge was never started.
        """
        intent = int(msg.intent)
        if not self._started or self._closing:
            if not self._started:
                raise BusError("start the Bridge before publishing: await bridge.start(), "
                               "or async with Bridge(...) as bridge")
            self.stats.drop(intent, "closed")
            return
        data = msg.data
        if OVERHEAD + len(data) > self._max_payload:
            self.stats.drop(intent, "too_large")
            return
        lane = msg.lane
        origin = msg.peer.public_key.to_bytes()
        if intent == _RELIABLE:
            self._seq += 1
            self._waiting.append((self._seq, pack(_RELIABLE, msg.priority, lane, self.hub,
                                                  self._seq, _wall_us(), origin, data)))
            if self.backlogged:
                self._room.clear()
        else:
            if not self._connected:
                self.stats.drop(_REALTIME, "disconnected")
                return
            if len(self._realtime) >= self.config.realtime_queue:
                self._realtime.popleft()
                self.stats.drop(_REALTIME, "slow")
            self._realtime.append((time.monotonic(), pack(
                _REALTIME, msg.priority, lane, self.hub, 0, _wall_us(), origin, data)))
        self._wake.set()

    async def _pump(self) -> None:
        """Hand queued messages to NATS: REALTIME first, RELIABLE within the window."""
        cfg = self.config
        assert self._nc is not None
        nc = self._nc
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._realtime or (self._waiting and self._connected
                                     and len(self._inflight) < cfg.publish_window):
                # 1. REALTIME: late, disconnected or backed up is dropped, not queued.
                sent = 0
                while self._realtime and sent < 256:
                    queued_at, payload = self._realtime.popleft()
                    if time.monotonic() - queued_at > cfg.realtime_deadline:
                        self.stats.drop(_REALTIME, "late")
                    elif not self._connected:
                        self.stats.drop(_REALTIME, "disconnected")
                    elif nc.pending_data_size > cfg.realtime_pending_bytes:
                        self.stats.drop(_REALTIME, "slow")
                    else:
                        try:
                            await nc.publish(self._rt_subject, payload)
                        except Exception:
                            self.stats.drop(_REALTIME, "disconnected")
                        else:
                            self.stats.published[_REALTIME] += 1
                    sent += 1
                # 2. RELIABLE, oldest first, while the window has room.
                sent = 0
                while (self._waiting and self._connected and sent < 256
                       and len(self._inflight) < cfg.publish_window):
                    seq, payload = self._waiting.popleft()
                    pending = _Pending(payload)
                    self._inflight[seq] = pending
                    await self._send_reliable(seq, pending)
                    sent += 1
                await asyncio.sleep(0)  # the hub's own work goes on meanwhile

    async def _send_reliable(self, seq: int, pending: _Pending) -> None:
        assert self._nc is not None
        now = time.monotonic()
        if pending.first_sent:
            self.stats.retransmissions += 1
        else:
            pending.first_sent = now
        pending.sent_at = now
        pending.retry_at = 0.0
        try:
            await self._nc.publish(self._rel_subject, pending.payload,
                                   reply=f"{self._ack_prefix}.{seq}",
                                   headers={"Nats-Msg-Id": f"{self.hub_id}-{seq}"})
        except Exception:
            pending.sent_at = 0.0  # not handed over: sent again once connected

    async def _on_ack(self, msg: Msg) -> None:
        """The stream's answer to a RELIABLE publish: stored (or a duplicate), or refused."""
        try:
            seq = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        pending = self._inflight.get(seq)
        if pending is None:
            return  # answered before (an answer to a resend)
        headers = msg.headers
        if (headers and headers.get("Status") == "503") or not msg.data or \
                b'"error"' in msg.data:
            # No responders (the stream has no leader yet) or an error: resend later.
            pending.retry_at = time.monotonic() + self.config.retry_delay
            return
        del self._inflight[seq]
        self.stats.published[_RELIABLE] += 1
        self.stats.observe_ack(time.monotonic() - pending.first_sent)
        if self._waiting:
            self._wake.set()
        if self.backlog < self.config.max_backlog // 2:
            self._room.set()

    async def _resend_due(self) -> None:
        """Resend, oldest first, what the stream did not acknowledge in time or refused."""
        if not self._connected:
            return
        now = time.monotonic()
        cfg = self.config
        for seq, pending in list(self._inflight.items()):
            if (not pending.sent_at or (pending.retry_at and pending.retry_at <= now)
                    or now - pending.sent_at > cfg.ack_timeout) and seq in self._inflight:
                await self._send_reliable(seq, pending)

    # ---------------------------------------------------------------- incoming

    def _deliver(self, m: BusMessage) -> None:
        """Fan a message from another hub out to this hub's peers (not to its sender)."""
        transport = self.transport
        if transport.closed:
            return
        data = m.data
        if self.envelope:
            data = bytes((ENVELOPE_MAGIC,)) + m.origin + data
        exclude = transport.peer_for_key(m.origin)
        intent = _INTENTS[m.intent]
        try:
            transport.broadcast_nowait(data, intent, m.priority, exclude=exclude, lane=m.lane)
        except MessageTooLargeError:
            self.stats.drop(m.intent, "too_large")
            return
        except IntentraError:
            return  # the transport is closing
        self.stats.received[m.intent] += 1

    async def _on_realtime(self, msg: Msg) -> None:
        m = unpack(msg.data)
        if m is None or m.intent != _REALTIME:
            self.stats.drop(_REALTIME, "malformed")
            return
        if m.hub == self.hub:
            return
        self.sequencer.heard(m.hub, time.monotonic())
        if _wall_us() - m.stamp_us > self.config.realtime_deadline * 1e6:
            self.stats.drop(_REALTIME, "late")
            return
        self._deliver(m)

    async def _on_reliable(self, msg: Msg) -> None:
        """A message of this hub's pull consumer, or a status from the stream."""
        reply = msg.reply
        if not reply:  # a status (no messages, request expired, heartbeat): pulls go on
            headers = msg.headers or {}
            if headers.get("Status") == "409" and "deleted" in \
                    str(headers.get("Description", "")).lower():
                asyncio.get_running_loop().create_task(self._recreate_consumer())
            return
        assert self._nc is not None
        with contextlib.suppress(Exception):
            await self._nc.publish(reply, b"+ACK")
        self._since_pull += 1
        if self._since_pull >= self.config.pull_batch // 2:
            await self._pull()
        m = unpack(msg.data)
        if m is None or m.intent != _RELIABLE or m.seq == 0:
            self.stats.drop(_RELIABLE, "malformed")
            return
        if m.hub == self.hub:
            return  # our own, back from the stream
        sequencer = self.sequencer
        duplicates, gaps = sequencer.duplicates, sequencer.gaps
        for ready in sequencer.offer(m.hub, m.seq, m, time.monotonic()):
            self._deliver(ready)
        self._count(duplicates, gaps)

    def _count(self, duplicates: int, gaps: int) -> None:
        sequencer = self.sequencer
        self.stats.duplicates += sequencer.duplicates - duplicates
        if sequencer.gaps > gaps:
            self.stats.drop(_RELIABLE, "gap", sequencer.gaps - gaps)

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            hub = bytes.fromhex(json.loads(msg.data)["hub"])
        except (ValueError, KeyError, TypeError):
            return
        if len(hub) == HUB_ID_LEN and hub != self.hub:
            self.sequencer.heard(hub, time.monotonic())

    async def _pull(self) -> None:
        """Ask this hub's consumer for the next batch (requests overlap; each expires)."""
        if self._nc is None or not self._connected:
            return
        cfg = self.config
        self._since_pull = 0
        request = json.dumps({"batch": cfg.pull_batch,
                              "expires": int(cfg.pull_expires * 1e9)}).encode()
        with contextlib.suppress(Exception):
            await self._nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{cfg.stream}.{self._consumer}", request,
                reply=self._deliver_subject)

    async def _recreate_consumer(self) -> None:
        if self._nc is None or self._closing:
            return
        with contextlib.suppress(Exception):
            await self._ensure_consumer(self._nc)
            await self._pull()

    # ---------------------------------------------------------------- timers

    async def _timers(self) -> None:
        """Resends, pulls, heartbeats, RTT and gap checks, every tenth of a second."""
        cfg = self.config
        next_pull = next_beat = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            await self._resend_due()
            if now >= next_pull:
                next_pull = now + cfg.pull_expires / 2
                await self._pull()
            if now >= next_beat:
                next_beat = now + cfg.heartbeat_interval
                await self._beat()
            self._check_gaps(now)

    async def _beat(self) -> None:
        nc = self._nc
        if nc is None or not self._connected:
            return
        beat = json.dumps({"hub": self.hub_id, "peers": len(self.transport.peers),
                           "seq": self._seq}).encode()
        with contextlib.suppress(Exception):
            await nc.publish(self._hb_subject, beat)
            sent = time.perf_counter()  # not nc.rtt(): uvloop's loop clock counts in ms
            await nc.flush(timeout=1)  # a PING, answered by a PONG
            self.stats.rtt = time.perf_counter() - sent

    def _check_gaps(self, now: float) -> None:
        sequencer = self.sequencer
        duplicates, gaps = sequencer.duplicates, sequencer.gaps
        for ready in sequencer.expire(now):
            self._deliver(ready)
        self._count(duplicates, gaps)

    # ---------------------------------------------------------------- NATS events

    async def _on_error(self, exc: Exception) -> None:
        import nats.errors  # noqa: PLC0415

        if isinstance(exc, nats.errors.SlowConsumerError):
            sub = exc.sub
            if sub is not None and sub.subject.endswith(".rt.*"):
                self.stats.drop(_REALTIME, "slow_consumer")

    async def _on_disconnected(self) -> None:
        self._connected = False  # REALTIME is dropped until the reconnect; RELIABLE waits

    async def _on_reconnected(self) -> None:
        self._connected = True
        self.stats.reconnects += 1
        self.sequencer.all_heard(time.monotonic())  # heartbeats were not reaching us
        # Everything unacknowledged goes again, oldest first, before anything new.
        for seq, pending in list(self._inflight.items()):
            pending.sent_at = 0.0
            if seq in self._inflight:
                await self._send_reliable(seq, pending)
        await self._pull()
        self._wake.set()

    def __repr__(self) -> str:
        return (f"Bridge(hub {self.hub_id}, {','.join(self.servers)}, "
                f"{'connected' if self._connected else 'disconnected'})")
