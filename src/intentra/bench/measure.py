"""What every process of ``intentra bench`` shares: its measurements and its plumbing.

The runner (:mod:`intentra.bench`) and the role processes of
:mod:`intentra.bench.roles` (intentra, raw UDP) and :mod:`intentra.bench.quic`
(the aioquic baseline) all count and time the same way: a message starts with
:data:`STAMP`, receivers keep a :class:`Counter`, and each role process answers
JSON commands on stdin (:func:`commands`, :func:`counting_server`). Keeping these
here lets the roles and the baseline import them without importing each other.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import struct
import sys
import threading
import time
from array import array
from collections.abc import Awaitable, Callable

from intentra.bench.proto import Json, reply

STAMP = struct.Struct("!qQ")
"""Timestamp (monotonic ns) and per-peer sequence number at the head of a message."""


def rss_kib() -> int:
    """Resident set size of this process, KiB (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def wait_seconds() -> float:
    """Seconds this process was runnable but waited for a CPU (Linux schedstat; else 0).

    On a shared machine a process may miss its work for want of a core while
    its own CPU share stays low: this is the figure that shows it.
    """
    try:
        with open("/proc/self/schedstat", encoding="ascii") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy() -> float:
    """CPU seconds all the machine's cores were busy since boot (Linux /proc/stat; else 0).

    Busy is everything but idle and iowait; a VM's steal (the host ran something
    else) counts as busy, as the cores were not ours. A generator reports the
    difference over its sending window: the cores busy in all, other work too.
    """
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def percentiles(samples: array[float], base: float = 0.0) -> Json:
    """p50/p99/p99.9/max in ms of ``samples - base`` (seconds)."""
    if not samples:
        return {"count": 0}
    ordered = sorted(v - base for v in samples)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] * 1e3  # ms

    return {"count": n, "p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999),
            "max_ms": ordered[-1] * 1e3}


class Counter:
    """Counts messages, in-order messages per peer, and optionally latencies."""

    __slots__ = ("in_order", "last", "latencies", "messages", "record", "started")

    def __init__(self) -> None:
        self.messages = 0
        self.in_order = 0
        self.last: dict[object, int] = {}
        self.latencies: array[float] = array("d")
        self.record = False
        self.started = time.monotonic()

    def reset(self, record: bool) -> None:
        self.messages = 0
        self.in_order = 0
        self.latencies = array("d")
        self.record = record
        self.started = time.monotonic()

    def see(self, source: object, data: bytes | memoryview, now_ns: int) -> None:
        self.messages += 1
        if len(data) < STAMP.size:
            return
        stamp, seq = STAMP.unpack_from(data)
        if seq > self.last.get(source, -1):
            self.in_order += 1
            self.last[source] = seq
        if self.record:
            self.latencies.append((now_ns - stamp) / 1e9)

    def stats(self, base_ns: int = 0) -> Json:
        """Counts, and latency percentiles with stamps taken as offsets from ``base_ns``."""
        return {"messages": self.messages, "in_order": self.in_order,
                "seconds": time.monotonic() - self.started,
                "latency": percentiles(self.latencies, base_ns / 1e9) if self.record else None,
                "rss_kib": rss_kib(), "cpu": cpu_seconds(), "wait": wait_seconds()}


def payload(size: int) -> bytearray:
    return bytearray(max(size, STAMP.size))


# ---------------------------------------------------------------- command plumbing

async def commands(handler: Callable[[Json], Awaitable[bool] | bool]) -> None:
    """Read JSON commands from stdin (a thread), run ``handler`` until it returns False."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Json | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(queue.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    while (command := await queue.get()) is not None:
        try:
            result = handler(command)
            if inspect.isawaitable(result):
                result = await result
            if not result:
                return
        except Exception as exc:
            reply(error=f"{type(exc).__name__}: {exc}")
            return


def counting_server(counter: Counter, on_reset: Callable[[], None] | None = None,
                    extra: Callable[[Json], None] | None = None
                    ) -> Callable[[Json], bool]:
    """The command handler every receiving role shares: reset, stats, quit.

    ``on_reset`` clears the role's own counts; ``extra`` adds its fields to a
    stats reply (sessions, handshakes, a sink's count).
    """

    def handle(command: Json) -> bool:
        cmd = command["cmd"]
        if cmd == "quit":
            return False
        if cmd == "reset":
            counter.reset(bool(command.get("latency", False)))
            if on_reset is not None:
                on_reset()
            reply(ok=True)
        elif cmd == "stats":
            stats = counter.stats(int(command.get("base_ns", 0)))
            stats.update(sessions=0, handshakes=0)
            if extra is not None:
                extra(stats)
            reply(**stats)
        elif cmd == "count":  # the message count alone: no latency percentiles to sort
            stats = {"messages": counter.messages}
            if extra is not None:
                extra(stats)
            reply(messages=stats["messages"])
        else:
            reply(error=f"unknown command {cmd!r}")
        return True

    return handle


def run_async(main: Callable[[], Awaitable[None]]) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional extra
    except ImportError:
        asyncio.run(main())  # type: ignore[arg-type]
    else:
        uvloop.run(main())  # type: ignore[arg-type]
