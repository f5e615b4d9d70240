"""A fault-injection UDP proxy: real sockets, deterministic faults.

:class:`UdpProxy` sits between UDP clients and one target and applies
:class:`Faults` (loss, duplication, reordering, delay, jitter, truncation, bit
corruption) to each direction independently, plus timed blackholes. It works for
any UDP application, not only intentra::

    async with await UdpProxy.start(("127.0.0.1", 9000),
                                    forward=Faults(loss=0.2, jitter=0.03)) as proxy:
        ...  # clients send to proxy.address
        print(proxy.report())

Addressing is NAT-like: every distinct client address gets its own upstream
socket (connected to the target), so several clients, or one client that changes
its source port, appear to the target as distinct sources. Datagrams the target
sends to an upstream socket go back to that client from the listen socket. An
upstream socket idle (both ways) for ``idle_timeout`` seconds is closed; the
client's next datagram opens a new one (a new source port, as a NAT would).

Determinism: each direction has its own ``random.Random(f"{seed}-{direction}")``
and draws exactly :data:`DRAWS_PER_DATAGRAM` numbers for every datagram it
receives, in this order, whatever the outcome (even when it is blackholed or
lost): loss, dup, reorder, jitter of the datagram, jitter of its copy, truncate,
truncated length, corrupt, flipped bit. So the same seed and the same sequence of
datagrams (per direction) give the same faults, and changing one fault
probability does not shift the decisions of the others.

Pipeline of one datagram: blackholed? -> lost? -> truncated -> corrupted (the
copy, if any, carries the same bytes) -> held for ``delay + U(0, jitter)``
(the copy with its own jitter) -> if chosen for reordering, held back until the
next datagram of that direction goes out (at most :data:`REORDER_MAX_HOLD`
seconds) -> sent. The blackhole is checked when a datagram arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import random
import re
import socket
from dataclasses import dataclass, fields
from types import TracebackType

__all__ = [
    "COUNTERS",
    "DIRECTIONS",
    "DRAWS_PER_DATAGRAM",
    "MAX_HELD",
    "REORDER_MAX_HOLD",
    "Faults",
    "UdpProxy",
    "parse_duration",
]

DIRECTIONS = ("forward", "backward")
"""``forward``: client -> target; ``backward``: target -> client."""

COUNTERS = ("received", "sent", "dropped", "duplicated", "reordered", "delayed",
            "truncated", "corrupted", "blackholed")
"""The keys of each direction's :attr:`UdpProxy.counts`.

``received``: datagrams read; ``sent``: datagrams written (copies included);
``dropped``: lost to the ``loss`` fault, to the :data:`MAX_HELD` bound, or to a
send error; ``blackholed``: dropped by :meth:`UdpProxy.blackhole`;
``duplicated``/``reordered``/``truncated``/``corrupted``: datagrams so treated;
``delayed``: datagrams (copies included) held for a delay > 0.
"""

DRAWS_PER_DATAGRAM = 9
"""Random numbers drawn per received datagram, whatever happens to it."""

MAX_HELD = 10_000
"""Datagrams held (delayed or held back for reordering) per direction at most;
beyond it further datagrams are dropped and counted as ``dropped``."""

REORDER_MAX_HOLD = 0.05
"""Seconds a datagram chosen for reordering waits at most for the next one."""

RECV_SIZE = 65536
_DRAIN_LIMIT = 4096  # datagrams read per readiness callback (then yield to the loop)
_SOCKET_BUFFER = 1 << 20

_PROBABILITIES = ("loss", "dup", "reorder", "truncate", "corrupt")
_DURATIONS = ("delay", "jitter")


@dataclass(frozen=True, slots=True)
class Faults:
    """The faults applied to one direction. Probabilities are in [0, 1], times in seconds."""

    loss: float = 0.0
    """Probability a datagram is dropped."""
    dup: float = 0.0
    """Probability it is sent twice (the copy with its own jitter)."""
    reorder: float = 0.0
    """Probability it is held back and released after the next datagram of that
    direction (or after :data:`REORDER_MAX_HOLD` seconds)."""
    delay: float = 0.0
    """Seconds added to every datagram."""
    jitter: float = 0.0
    """Extra uniform random delay in [0, jitter] seconds (datagrams reorder naturally)."""
    truncate: float = 0.0
    """Probability it is cut to a random shorter length (possibly 0 bytes)."""
    corrupt: float = 0.0
    """Probability one random bit of it is flipped."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"Faults.{f.name} must be a number, not {value!r}")
            if f.name in _PROBABILITIES:
                if not 0.0 <= value <= 1.0:  # also rejects NaN
                    raise ValueError(
                        f"Faults.{f.name} is a probability and must be in [0, 1], got {value!r}")
            elif not (math.isfinite(value) and value >= 0.0):
                raise ValueError(
                    f"Faults.{f.name} is a duration in seconds and must be finite and >= 0, "
                    f"got {value!r}")

    def describe(self) -> str:
        """The non-zero faults, e.g. ``"loss=20% delay=20ms jitter=30ms"`` (``"none"``)."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value:
                if f.name in _DURATIONS:
                    parts.append(f"{f.name}={_format_seconds(value)}")
                else:
                    parts.append(f"{f.name}={value * 100:g}%")
        return " ".join(parts) or "none"


_DURATION_RE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs)?\s*")
_UNITS = {None: 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def parse_duration(text: str) -> float:
    """Parse ``"20ms"``, ``"1.5s"``, ``"500us"`` or ``"0.02"`` (seconds) into seconds.

    Raises:
        ValueError: not a non-negative number with an optional s/ms/us unit.
    """
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r} (expected e.g. 20ms, 1.5s, 500us, 0.02)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _format_seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1.0 else f"{value:g}s"


class _Flow:
    """One client's NAT mapping: its address and its upstream socket to the target."""

    __slots__ = ("client", "closed", "last", "sock")

    def __init__(self, client: tuple[object, ...], sock: socket.socket, now: float) -> None:
        self.client = client
        self.sock = sock
        self.last = now
        self.closed = False


class _Held:
    """A datagram held back for reordering."""

    __slots__ = ("data", "flow", "handle")

    def __init__(self, flow: _Flow, data: bytes) -> None:
        self.flow = flow
        self.data = data
        self.handle: asyncio.TimerHandle | None = None


class _Direction:
    __slots__ = ("blackhole_until", "counts", "delayed", "faults", "forward", "name",
                 "reordering", "rng", "sequence", "timer", "timer_at")

    def __init__(self, name: str, faults: Faults, seed: int, counts: dict[str, int]) -> None:
        self.name = name
        self.forward = name == "forward"
        self.faults = faults
        self.rng = random.Random(f"{seed}-{name}")
        self.counts = counts
        self.blackhole_until = -math.inf
        # Waiting for their delay: a heap of (due, arrival number, flow, data, hold),
        # so datagrams due at the same time go out in arrival order (one loop timer
        # per direction, rather than one per datagram whose order asyncio does not keep).
        self.delayed: list[tuple[float, int, _Flow, bytes, bool]] = []
        self.sequence = itertools.count()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.reordering: list[_Held] = []  # held back until the next datagram goes out

    def held(self) -> int:
        return len(self.delayed) + len(self.reordering)


class UdpProxy:
    """A fault-injecting UDP proxy in front of one target. Create with :meth:`start`."""

    address: tuple[str, int]
    """Where clients send (the bound listen address)."""
    target: tuple[str, int]
    """The target as resolved."""
    counts: dict[str, dict[str, int]]
    """Per direction (``"forward"``, ``"backward"``), the :data:`COUNTERS`."""

    def __init__(self, listen_sock: socket.socket, target: tuple[str, int],
                 target_family: socket.AddressFamily, target_sockaddr: tuple[object, ...],
                 forward: Faults, backward: Faults, seed: int,
                 idle_timeout: float | None) -> None:
        """Use :meth:`start`."""
        self._loop = asyncio.get_running_loop()
        self._sock = listen_sock
        self._target_family = target_family
        self._target_sockaddr = target_sockaddr
        self._idle_timeout = idle_timeout
        self._flows: dict[tuple[object, ...], _Flow] = {}
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None
        self.address = listen_sock.getsockname()[:2]
        self.target = target
        self.seed = seed
        self.counts = {name: dict.fromkeys(COUNTERS, 0) for name in DIRECTIONS}
        self._forward = _Direction("forward", forward, seed, self.counts["forward"])
        self._backward = _Direction("backward", backward, seed, self.counts["backward"])
        self._loop.add_reader(listen_sock.fileno(), self._on_listen_readable)
        if idle_timeout is not None:
            self._sweep = self._loop.call_later(idle_timeout / 2, self._on_sweep)

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def start(cls, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0),
                    forward: Faults = Faults(), backward: Faults = Faults(), seed: int = 0,
                    *, idle_timeout: float | None = 120.0) -> UdpProxy:
        """Bind the listen socket and start proxying to ``target``.

        Args:
            target: ``(host, port)`` every client's datagrams go to.
            listen: ``(host, port)`` to bind (port 0 picks one; see :attr:`address`).
            forward: faults applied client -> target.
            backward: faults applied target -> client.
            seed: seeds both directions' random decisions.
            idle_timeout: close a client's upstream socket after this many seconds
                without traffic either way (None: never).

        Raises:
            OSError: ``listen`` cannot be bound.
            ValueError: a host cannot be resolved, or ``idle_timeout`` <= 0.
        """
        if not isinstance(forward, Faults) or not isinstance(backward, Faults):
            raise TypeError("forward and backward must be Faults")
        if idle_timeout is not None and not (math.isfinite(idle_timeout) and idle_timeout > 0):
            raise ValueError(f"idle_timeout must be > 0 seconds or None, got {idle_timeout!r}")
        loop = asyncio.get_running_loop()
        family, sockaddr = await _resolve(loop, target, passive=False)
        listen_family, listen_sockaddr = await _resolve(loop, listen, passive=True)
        sock = socket.socket(listen_family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _enlarge_buffers(sock)
            sock.bind(listen_sockaddr)
        except BaseException:
            sock.close()
            raise
        resolved_host, resolved_port = sockaddr[0], sockaddr[1]
        assert isinstance(resolved_host, str) and isinstance(resolved_port, int)
        resolved = (resolved_host, resolved_port)
        return cls(sock, resolved, family, sockaddr, forward, backward, seed, idle_timeout)

    async def close(self) -> None:
        """Stop proxying: close every socket and discard held datagrams. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        for d in (self._forward, self._backward):
            if d.timer is not None:
                d.timer.cancel()
                d.timer = None
            for held in d.reordering:
                if held.handle is not None:
                    held.handle.cancel()
            d.delayed.clear()
            d.reordering.clear()
        for flow in list(self._flows.values()):
            self._close_flow(flow)
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def __aenter__(self) -> UdpProxy:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # ---------------------------------------------------------------- control

    def blackhole(self, direction: str, seconds: float) -> None:
        """Drop every datagram arriving in ``direction`` for the next ``seconds``.

        They are counted as ``blackholed``. A new call replaces the previous
        period (``seconds=0`` ends it). Datagrams already held for a delay are
        not affected.
        """
        d = self._direction(direction)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"blackhole seconds must be finite and >= 0, got {seconds!r}")
        d.blackhole_until = self._loop.time() + seconds

    def rebind(self) -> int:
        """Drop every client mapping, as a NAT rebinding does.

        The next datagram from each client leaves for the target from a new
        source port (the target sees the client roam); replies still on their
        way to the old port are lost.

        Returns:
            How many mappings were dropped.
        """
        flows = list(self._flows.values())
        for flow in flows:
            self._close_flow(flow)
        return len(flows)

    def set_faults(self, direction: str, faults: Faults) -> None:
        """Apply ``faults`` to datagrams arriving in ``direction`` from now on."""
        if not isinstance(faults, Faults):
            raise TypeError(f"faults must be a Faults, not {type(faults).__name__}")
        self._direction(direction).faults = faults

    def faults(self, direction: str) -> Faults:
        """The faults currently applied to ``direction``."""
        return self._direction(direction).faults

    @property
    def clients(self) -> int:
        """The number of client mappings (upstream sockets) open."""
        return len(self._flows)

    def held(self, direction: str) -> int:
        """Datagrams currently held (delayed or held back for reordering)."""
        return self._direction(direction).held()

    def report(self) -> str:
        """A readable multi-line summary of the faults and counts."""
        host, port = self.address
        thost, tport = self.target
        lines = [f"udp proxy {_hostport(host, port)} -> {_hostport(thost, tport)}, "
                 f"{len(self._flows)} client(s), seed {self.seed}"
                 + (" (closed)" if self._closed else "")]
        lines.append(f"  {'':<11}{'forward':>10}{'backward':>10}")
        for key in COUNTERS:
            lines.append(f"  {key:<11}{self.counts['forward'][key]:>10}"
                         f"{self.counts['backward'][key]:>10}")
        lines.append(f"  forward faults:  {self._forward.faults.describe()}")
        lines.append(f"  backward faults: {self._backward.faults.describe()}")
        return "\n".join(lines)

    def _direction(self, name: str) -> _Direction:
        if name == "forward":
            return self._forward
        if name == "backward":
            return self._backward
        raise ValueError(f"direction must be 'forward' or 'backward', got {name!r}")

    # ---------------------------------------------------------------- reading

    def _on_listen_readable(self) -> None:
        recv = self._sock.recvfrom
        flows = self._flows
        d = self._forward
        now = self._loop.time()
        for _ in range(_DRAIN_LIMIT):
            try:
                data, client = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. a queued ICMP error
            if self._closed:
                return
            flow = flows.get(client)
            if flow is None:
                flow = self._open_flow(client, now)
                if flow is None:
                    d.counts["received"] += 1
                    d.counts["dropped"] += 1
                    for _ in range(DRAWS_PER_DATAGRAM):
                        d.rng.random()
                    continue
            flow.last = now
            self._ingest(d, flow, data, now)

    def _on_upstream_readable(self, flow: _Flow) -> None:
        recv = flow.sock.recv
        d = self._backward
        now = self._loop.time()
        for _ in range(_DRAIN_LIMIT):
            if flow.closed:
                return
            try:
                data = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ECONNREFUSED: the target port is closed (ICMP)
            flow.last = now
            self._ingest(d, flow, data, now)

    def _open_flow(self, client: tuple[object, ...], now: float) -> _Flow | None:
        try:
            sock = socket.socket(self._target_family, socket.SOCK_DGRAM)
        except OSError:
            return None  # e.g. out of file descriptors
        try:
            sock.setblocking(False)
            _enlarge_buffers(sock)
            sock.connect(self._target_sockaddr)  # also filters other sources
        except OSError:
            sock.close()
            return None
        flow = _Flow(client, sock, now)
        self._flows[client] = flow
        self._loop.add_reader(sock.fileno(), self._on_upstream_readable, flow)
        return flow

    def _close_flow(self, flow: _Flow) -> None:
        if flow.closed:
            return
        flow.closed = True
        if self._flows.get(flow.client) is flow:
            del self._flows[flow.client]
        self._loop.remove_reader(flow.sock.fileno())
        flow.sock.close()

    def _on_sweep(self) -> None:
        timeout = self._idle_timeout
        if self._closed or timeout is None:
            return
        deadline = self._loop.time() - timeout
        for flow in [f for f in self._flows.values() if f.last < deadline]:
            self._close_flow(flow)
        self._sweep = self._loop.call_later(timeout / 2, self._on_sweep)

    # ---------------------------------------------------------------- faults

    def _ingest(self, d: _Direction, flow: _Flow, data: bytes, now: float) -> None:
        counts = d.counts
        f = d.faults
        r = d.rng.random
        counts["received"] += 1
        # Always exactly DRAWS_PER_DATAGRAM draws, in this order (see module doc).
        u_loss = r()
        u_dup = r()
        u_reorder = r()
        u_jitter = r()
        u_jitter_copy = r()
        u_truncate = r()
        u_length = r()
        u_corrupt = r()
        u_bit = r()
        if now < d.blackhole_until:
            counts["blackholed"] += 1
            return
        if u_loss < f.loss:
            counts["dropped"] += 1
            return
        if u_truncate < f.truncate and data:
            data = data[:min(int(u_length * len(data)), len(data) - 1)]
            counts["truncated"] += 1
        if u_corrupt < f.corrupt and data:
            bit = min(int(u_bit * len(data) * 8), len(data) * 8 - 1)
            flipped = bytearray(data)
            flipped[bit >> 3] ^= 1 << (bit & 7)
            data = bytes(flipped)
            counts["corrupted"] += 1
        hold = u_reorder < f.reorder
        if hold:
            counts["reordered"] += 1
        self._schedule(d, flow, data, f.delay + u_jitter * f.jitter, hold, now)
        if u_dup < f.dup:
            counts["duplicated"] += 1
            self._schedule(d, flow, data, f.delay + u_jitter_copy * f.jitter, False, now)

    def _schedule(self, d: _Direction, flow: _Flow, data: bytes, delay: float, hold: bool,
                  now: float) -> None:
        if delay <= 0.0 and not hold:
            self._emit(d, flow, data, False)
            return
        if d.held() >= MAX_HELD:
            d.counts["dropped"] += 1
            return
        if delay <= 0.0:
            self._emit(d, flow, data, True)
            return
        d.counts["delayed"] += 1
        due = now + delay
        heapq.heappush(d.delayed, (due, next(d.sequence), flow, data, hold))
        if due < d.timer_at:
            if d.timer is not None:
                d.timer.cancel()
            d.timer = self._loop.call_at(due, self._on_due, d)
            d.timer_at = due

    def _on_due(self, d: _Direction) -> None:
        d.timer = None
        d.timer_at = math.inf
        if self._closed:
            return
        now = self._loop.time()
        queue = d.delayed
        while queue and queue[0][0] <= now:
            _, _, flow, data, hold = heapq.heappop(queue)
            self._emit(d, flow, data, hold)
        if queue:
            d.timer_at = queue[0][0]
            d.timer = self._loop.call_at(d.timer_at, self._on_due, d)

    def _emit(self, d: _Direction, flow: _Flow, data: bytes, hold: bool) -> None:
        if hold:
            held = _Held(flow, data)
            held.handle = self._loop.call_later(REORDER_MAX_HOLD, self._on_hold_over, d, held)
            d.reordering.append(held)
            return
        self._send(d, flow, data)
        if d.reordering:
            released, d.reordering = d.reordering, []
            for held in released:
                if held.handle is not None:
                    held.handle.cancel()
                self._send(d, held.flow, held.data)

    def _on_hold_over(self, d: _Direction, held: _Held) -> None:
        held.handle = None
        try:
            d.reordering.remove(held)
        except ValueError:
            return
        if not self._closed:
            self._send(d, held.flow, held.data)

    def _send(self, d: _Direction, flow: _Flow, data: bytes) -> None:
        if flow.closed:  # its mapping expired (or the proxy closed) meanwhile
            d.counts["dropped"] += 1
            return
        try:
            if d.forward:
                flow.sock.send(data)
            else:
                self._sock.sendto(data, flow.client)
        except OSError:  # including BlockingIOError: the socket buffer is full
            d.counts["dropped"] += 1
            return
        d.counts["sent"] += 1


async def _resolve(loop: asyncio.AbstractEventLoop, address: tuple[str, int], *,
                   passive: bool) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    host, port = address
    try:
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM,
                                       flags=socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc.strerror}") from None
    if not infos:
        raise ValueError(f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    return family, tuple(sockaddr)


def _enlarge_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
