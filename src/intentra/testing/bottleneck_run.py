"""Scenario runner for the real bottleneck: endpoints in separate processes, measured.

This module owns the traffic through a :class:`~intentra.testing.bottleneck.Bottleneck`
and its measurement. :func:`run` (the parent side, outside the namespace) starts
one receiver process and ``senders`` sender processes inside the namespace, each
``ip netns exec NS python -m intentra.testing.bottleneck_run ROLE 'JSON'`` with its
own core and event loop, starts them together at one CLOCK_MONOTONIC instant
``t0`` (the clock is shared by every process of the machine, namespaces
included), changes the link rate on the scenario's schedule, and returns the
receiver's analysis as JSON-able dicts. Roles talk to the parent with one JSON
object per line on stdin/stdout.

Traffic (all on 127.0.0.1 inside the namespace), per paced sender: REALTIME
messages of ``size`` bytes at ``load`` times the link's rate (payload bytes), sent
in 1 ms ticks with ``send_nowait``, plus one RELIABLE message at priority
``reliable_priority`` every ``reliable_every_ms`` ms with ``await peer.send``. A
*bulk* sender instead sends RELIABLE messages as fast as ``send_many`` lets it.
Every message starts with :data:`HEAD`: its ``time.monotonic_ns()`` stamp taken
just before the send call, a per-(sender, intent) sequence number, the sender's
index and the intent.

The receiving application reads with ``await t.receive()``; a *slow reader*
(``reader_rate`` > 0) sleeps ``reader_batch / reader_rate`` seconds after every
``reader_batch`` messages. It measures, per intent: messages delivered, one-way
latency p50/p99 from the send call to ``receive`` returning; per sender:
delivered rate; RELIABLE completeness, duplicates and order; delivered payload
per :data:`BIN` seconds; its own RSS every :data:`BIN` seconds. **Warm-up
exclusion:** latency percentiles count only messages sent at or after
``t0 + warmup`` (0.5 s by default), and rates count only messages received in
``[t0 + warmup, t0 + duration]`` (per-sender rates, with ``stagger``, from the
start of the last sender plus ``warmup``); totals and completeness count everything.
After the senders stop, the receiver keeps reading until every RELIABLE message
the senders' ``send`` accepted has arrived, or ``drain`` seconds have passed.

``kind`` selects the stack under test: ``intentra``; ``raw``, plain UDP with no
control (one datagram per message, RELIABLE included, nothing retransmitted);
``quic``, aioquic (REALTIME as DATAGRAM frames, RELIABLE on one stream; the
sender drops a REALTIME message rather than queue more than
:data:`QUIC_PENDING_DATAGRAMS` frames inside aioquic, whose queue is unbounded).
The slow reader and bulk senders are intentra only.

From a shell (as root; makes and deletes its own namespace)::

    python -m intentra.testing.bottleneck_run run '{"load": 2.4, "duration": 5}'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
import sys
import threading
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from intentra.bench.measure import cpu_seconds, rss_kib, run_async
from intentra.bench.proto import Role, RoleError, reply
from intentra.testing.bottleneck import Bottleneck, BottleneckError

__all__ = ["BIN", "HEAD", "RunError", "Scenario", "jain", "main", "run"]

Json = dict[str, Any]

HEAD = struct.Struct("!qIBB")
"""Head of every message: send stamp (monotonic ns), sequence, sender index, intent."""
REALTIME, RELIABLE = 1, 0
"""Intent codes in :data:`HEAD` (the same numbers as :class:`intentra.Intent`)."""
BIN = 0.25
"""Seconds per bin of the delivered-rate and RSS time series."""
TICK = 0.001
"""Seconds between two pacing ticks of a sender."""
QUIC_PENDING_DATAGRAMS = 256
"""Most DATAGRAM frames a QUIC sender leaves queued inside aioquic."""
KINDS = ("intentra", "raw", "quic")
_START_MARGIN = 0.25


class RunError(RoleError):
    """A role process failed, timed out or answered nonsense (its stderr is included)."""


@dataclass(frozen=True)
class Scenario:
    """Every parameter of one run. Loads are multiples of the link's rate in payload bytes."""

    kind: str = "intentra"
    link_mbit: float = 10.0
    size: int = 200
    load: float = 1.0
    """REALTIME offered by each paced sender, as a multiple of the link's rate."""
    senders: int = 1
    bulk_senders: int = 0
    """How many of the senders (the first ones) send RELIABLE with ``send_many`` as fast as
    they can instead of paced traffic."""
    bulk_batch: int = 64
    bulk_priority: int = 0
    """Priority of the bulk senders' RELIABLE messages (a bulk transfer is not urgent)."""
    duration: float = 5.0
    reliable_every_ms: float = 10.0
    """One RELIABLE message per paced sender every this many ms (0: none)."""
    reliable_priority: int = 7
    reader_rate: float = 0.0
    """Messages per second the receiving application reads at most (0: as fast as it can)."""
    reader_batch: int = 20
    receive_buffer: int = 0
    """The intentra receiver's ``max_reorder_buffer`` (what it holds unread per session),
    with ``max_message_size`` lowered to fit; 0: the defaults."""
    rate_schedule: tuple[tuple[float, float], ...] = ()
    """(seconds after t0, Mbit/s): link rate changes during the run."""
    stagger: float = 0.0
    """Seconds between the starts of two senders: sender i starts at t0 + i x stagger
    (a session joining a busy link); all stop at t0 + duration."""
    warmup: float = 0.5
    rates_after_start: float = 0.0
    """Extra seconds after the last sender's start (and ``warmup``) before per-sender
    rates are compared: the time a latecomer is given to get its share."""
    settle: float = 1.0
    """Seconds after a rate change that a phase's figures leave out."""
    drain: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.size < HEAD.size:
            raise ValueError(f"size must be at least {HEAD.size} bytes, got {self.size}")
        if not 0 <= self.bulk_senders <= self.senders or not 1 <= self.senders <= 255:
            raise ValueError("need 1 <= senders <= 255 and 0 <= bulk_senders <= senders")
        for name in ("link_mbit", "load", "duration", "reader_batch", "bulk_batch"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("reliable_every_ms", "reader_rate", "settle", "drain",
                     "rates_after_start", "receive_buffer"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.bulk_senders and self.kind != "intentra":
            raise ValueError("bulk senders are intentra only")
        if not 0 <= self.warmup < self.duration:
            raise ValueError("warmup must be in [0, duration)")
        if not 0 <= self.shared_from < self.duration:
            raise ValueError("the last sender must start (plus warmup) before the run ends: "
                             "need warmup + (senders - 1) x stagger < duration")

    @property
    def shared_from(self) -> float:
        """Seconds after t0 from which per-sender rates are compared: every sender has
        started and had ``warmup`` seconds to get going."""
        return self.warmup + (self.senders - 1) * self.stagger + self.rates_after_start

    @property
    def message_rate(self) -> float:
        """REALTIME messages per second of one paced sender."""
        return self.load * self.link_mbit * 1e6 / 8 / self.size

    def to_json(self) -> Json:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Json) -> Scenario:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown scenario parameters: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "rate_schedule" in values:
            values["rate_schedule"] = tuple((float(a), float(b))
                                            for a, b in values["rate_schedule"])
        return cls(**values)


# ------------------------------------------------------------------ parent side

def _start(link: Bottleneck, role: str, args: Json) -> Role:
    """One role process inside the namespace, speaking the bench's JSON lines."""
    return Role(role, args, module="intentra.testing.bottleneck_run", wrap=link.command)


def run(scenario: Scenario, link: Bottleneck | None = None) -> Json:
    """Run ``scenario`` through ``link`` (or a new bottleneck, deleted afterwards).

    Returns the receiver's analysis (see the module docstring) with the senders'
    reports under ``"senders"`` and ``tc -s qdisc`` after the run under ``"qdisc"``
    (its counters add up over the namespace's life, not per run).

    Raises:
        RunError: a role failed (with its stderr), or timed out.
        BottleneckError: the namespace or qdisc could not be made or changed.
    """
    if link is None:
        with Bottleneck.create(scenario.link_mbit) as own:
            return run(scenario, own)
    if link.rate_mbit != scenario.link_mbit:
        link.set_rate(scenario.link_mbit)
    roles: list[Role] = []
    try:
        receiver = _start(link, "receiver", scenario.to_json())
        roles.append(receiver)
        ready = receiver.read(60)
        senders = []
        for index in range(scenario.senders):
            args = {**scenario.to_json(), "index": index, "port": ready["port"],
                    "server_key": ready["key"]}
            senders.append(_start(link, "sender", args))
        roles += senders
        for sender in senders:
            sender.read(60)
        t0 = time.monotonic() + _START_MARGIN
        for role in roles:
            role.send(cmd="start", t0=t0)
        for at, mbit in sorted(scenario.rate_schedule):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            link.set_rate(mbit)
        reports = [s.read(scenario.duration + 60) for s in senders]
        receiver.send(cmd="expect", reliable=[r["sent"]["reliable"] for r in reports])
        result = receiver.read(scenario.duration + scenario.drain + 60)
        result["senders"] = reports
        result["qdisc"] = link.qdisc_stats().strip()
        if link.rate_mbit != scenario.link_mbit:
            link.set_rate(scenario.link_mbit)
        return result
    except RoleError as exc:
        raise RunError(str(exc)) from None
    finally:
        for role in reversed(roles):
            role.stop()


# ------------------------------------------------------------------ analysis

def percentiles(values: Sequence[float]) -> Json:
    """count, p50, p99, max (ms) of latencies in seconds."""
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    n = len(ordered)
    return {"count": n, "p50_ms": ordered[min(n - 1, int(0.5 * n))] * 1e3,
            "p99_ms": ordered[min(n - 1, int(0.99 * n))] * 1e3, "max_ms": ordered[-1] * 1e3}


def jain(rates: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all rates are equal, 1/n when one takes everything."""
    if not rates or not any(rates):
        return 0.0
    return sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates))


class Records:
    """What the receiving application saw: one row per message, in arrival order."""

    def __init__(self) -> None:
        self.stamp = array("q")
        self.arrive = array("q")
        self.seq = array("I")
        self.sender = array("B")
        self.intent = array("B")
        self.size = array("I")
        self.reliable_seqs: dict[int, set[int]] = {}

    def add(self, data: bytes | memoryview, now_ns: int) -> None:
        if len(data) < HEAD.size:
            return
        stamp, seq, sender, intent = HEAD.unpack_from(data)
        self.stamp.append(stamp)
        self.arrive.append(now_ns)
        self.seq.append(seq)
        self.sender.append(sender)
        self.intent.append(intent)
        self.size.append(len(data))
        if intent == RELIABLE:
            self.reliable_seqs.setdefault(sender, set()).add(seq)

    def reliable_count(self, sender: int) -> int:
        """Distinct RELIABLE messages of ``sender`` seen so far."""
        return len(self.reliable_seqs.get(sender, ()))


def analyse(s: Scenario, rec: Records, t0_ns: int, expected: list[int],
            rss: list[tuple[float, int]], drained: float, cpu_seconds: float = 0.0) -> Json:
    """The figures of one run from the receiver's records (see the module docstring)."""
    sec = 1e-9
    start, end = s.warmup, s.duration
    window = end - start
    shared = s.shared_from
    n_bins = math.ceil((s.duration + s.drain) / BIN)
    bins: list[Json] = [{"t": i * BIN, "payload_bytes": 0, "realtime_bytes": 0,
                         "realtime_lat": [], "reliable_lat": []} for i in range(n_bins)]
    lat: dict[int, list[float]] = {REALTIME: [], RELIABLE: []}
    per_sender: list[Json] = [{"sender": i, "delivered_window": 0, "realtime_bytes_window": 0,
                               "lat": {REALTIME: [], RELIABLE: []}}
                              for i in range(s.senders)]
    totals = {REALTIME: 0, RELIABLE: 0}
    realtime_bytes_window = 0
    next_seq: dict[int, int] = {}
    seen: dict[int, set[int]] = {}
    out_of_order = duplicates = 0
    for stamp, arrive, seq, sender, intent, size in zip(
            rec.stamp, rec.arrive, rec.seq, rec.sender, rec.intent, rec.size, strict=True):
        sent_at = (stamp - t0_ns) * sec
        got_at = (arrive - t0_ns) * sec
        latency = (arrive - stamp) * sec
        totals[intent] = totals.get(intent, 0) + 1
        mine = per_sender[sender] if sender < len(per_sender) else None
        if intent == RELIABLE:
            got = seen.setdefault(sender, set())
            if seq in got:
                duplicates += 1
            else:
                got.add(seq)
                if seq != next_seq.get(sender, 0):
                    out_of_order += 1
                next_seq[sender] = seq + 1
        if sent_at >= start:
            lat[intent].append(latency)
            if mine is not None:
                mine["lat"][intent].append(latency)
        if start <= got_at < end and intent == REALTIME:
            realtime_bytes_window += size
        if shared <= got_at < end and mine is not None:
            mine["delivered_window"] += 1
            if intent == REALTIME:
                mine["realtime_bytes_window"] += size
        k = int(got_at / BIN)
        if 0 <= k < n_bins:
            bins[k]["payload_bytes"] += size
            if intent == REALTIME:
                bins[k]["realtime_bytes"] += size
                bins[k]["realtime_lat"].append(latency)
            else:
                bins[k]["reliable_lat"].append(latency)
    rss_by_bin: dict[int, int] = {}
    for at, kib in rss:
        rss_by_bin[int(at / BIN)] = kib
    series = []
    for i, b in enumerate(bins):
        rt = percentiles(b["realtime_lat"])
        rl = percentiles(b["reliable_lat"])
        series.append({"t": b["t"], "link_mbit": _link_at(s, b["t"]),
                       "payload_mbit": b["payload_bytes"] * 8 / BIN / 1e6,
                       "realtime_mbit": b["realtime_bytes"] * 8 / BIN / 1e6,
                       "realtime_p99_ms": rt["p99_ms"], "reliable_p99_ms": rl["p99_ms"],
                       "rss_kib": rss_by_bin.get(i)})
    sent_reliable = sum(expected)
    got_reliable = sum(len(seen.get(i, ())) for i in range(s.senders))
    senders_out = []
    for mine in per_sender:
        senders_out.append({
            "sender": mine["sender"],
            "delivered_rate": mine["delivered_window"] / (end - shared),
            "realtime_mbit": mine["realtime_bytes_window"] * 8 / (end - shared) / 1e6,
            "realtime_latency": percentiles(mine["lat"][REALTIME]),
            "reliable_latency": percentiles(mine["lat"][RELIABLE]),
            "reliable_delivered": len(seen.get(mine["sender"], ())),
            "reliable_sent": expected[mine["sender"]] if mine["sender"] < len(expected) else 0})
    realtime_mbit = realtime_bytes_window * 8 / window / 1e6
    rss_values = [kib for at, kib in rss if at >= 0]
    after = [kib for at, kib in rss if start + 0.5 <= at <= end]
    return {
        "scenario": s.to_json(),
        "warmup_excluded_s": start,
        "per_sender_rates_from_s": shared,
        "realtime": {"delivered": totals[REALTIME], "payload_mbit": realtime_mbit,
                     "link_share": realtime_mbit / s.link_mbit,
                     "latency": percentiles(lat[REALTIME])},
        "reliable": {"sent": sent_reliable, "delivered": got_reliable,
                     "complete": got_reliable == sent_reliable, "duplicates": duplicates,
                     "in_order": out_of_order == 0, "out_of_order": out_of_order,
                     "latency": percentiles(lat[RELIABLE])},
        "per_sender": senders_out,
        "fairness": jain([p["delivered_rate"] for p in senders_out]),
        "phases": _phases(s, rec, t0_ns),
        "bins": series,
        "rss_kib": {"start": rss_values[0] if rss_values else None,
                    "after_warmup": after[0] if after else None,
                    "max": max(after) if after else None,
                    "end": after[-1] if after else None,
                    "growth_after_warmup": (max(after) - after[0]) if after else None},
        "drain_seconds": drained,
        "receiver_cpu_seconds": cpu_seconds,
    }


def _link_at(s: Scenario, t: float) -> float:
    rate = s.link_mbit
    for at, mbit in sorted(s.rate_schedule):
        if t >= at:
            rate = mbit
    return rate


def _phases(s: Scenario, rec: Records, t0_ns: int) -> list[Json]:
    """Per constant-rate stretch of the link: figures after ``settle`` (warm-up for the
    first), and how long the delivered REALTIME rate took to reach 75% of a higher rate."""
    edges = [(0.0, s.link_mbit), *sorted(s.rate_schedule)]
    out = []
    for i, (at, mbit) in enumerate(edges):
        stop = edges[i + 1][0] if i + 1 < len(edges) else s.duration
        begin = at + (s.warmup if i == 0 else s.settle)
        rt: list[float] = []
        rl: list[float] = []
        rt_bytes = 0
        recover: float | None = None
        step = 0.1
        buckets = [0] * max(1, math.ceil((stop - at) / step))
        for stamp, arrive, intent, size in zip(rec.stamp, rec.arrive, rec.intent, rec.size,
                                               strict=True):
            sent_at = (stamp - t0_ns) / 1e9
            got_at = (arrive - t0_ns) / 1e9
            if begin <= sent_at < stop:
                (rt if intent == REALTIME else rl).append((arrive - stamp) / 1e9)
            if intent == REALTIME:
                if begin <= got_at < stop:
                    rt_bytes += size
                if at <= got_at < stop:
                    buckets[min(len(buckets) - 1, int((got_at - at) / step))] += size
        for k in range(len(buckets) - 1):  # two consecutive 100 ms at >= 75% of the link
            if min(buckets[k], buckets[k + 1]) * 8 / step / 1e6 >= 0.75 * mbit:
                recover = k * step
                break
        seconds = max(stop - begin, 1e-9)
        out.append({"from": at, "to": stop, "link_mbit": mbit, "measured_from": begin,
                    "realtime_mbit": rt_bytes * 8 / seconds / 1e6,
                    "link_share": rt_bytes * 8 / seconds / 1e6 / mbit,
                    "realtime_latency": percentiles(rt), "reliable_latency": percentiles(rl),
                    "seconds_to_75pct": recover})
    return out


# ------------------------------------------------------------------ role side

class _Commands:
    """Commands from the parent on stdin, read by a thread, awaited in the loop."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Json] = asyncio.Queue()

        def read() -> None:
            for line in sys.stdin:
                if line.strip():
                    loop.call_soon_threadsafe(self.queue.put_nowait, json.loads(line))
            loop.call_soon_threadsafe(self.queue.put_nowait, {"cmd": "quit"})

        threading.Thread(target=read, daemon=True).start()

    async def expect(self, name: str) -> Json:
        command = await self.queue.get()
        if command.get("cmd") == "quit":
            raise SystemExit(0)
        if command.get("cmd") != name:
            raise RunError(f"expected command {name!r}, got {command!r}")
        return command

    async def wait_quit(self) -> None:
        """Return when the parent says quit (or closes stdin)."""
        while (await self.queue.get()).get("cmd") != "quit":
            pass


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _message(buf: bytearray, seq: int, sender: int, intent: int) -> bytes:
    HEAD.pack_into(buf, 0, time.monotonic_ns(), seq, sender, intent)
    return bytes(buf)


async def _pace(s: Scenario, t0: float, end: float, send_realtime: Callable[[int], None],
                send_reliable: Callable[[int], Awaitable[None]] | None,
                after_tick: Callable[[], None] | None = None) -> tuple[int, int, float]:
    """Paced traffic from ``t0`` until ``end``.

    Returns (REALTIME sent, RELIABLE sent, the longest a RELIABLE send call started
    after its schedule, seconds: a ``send`` that waits delays the next one, whose
    stamp is then its real call time).
    """
    rate = s.message_rate
    reliable = [0]
    lag = [0.0]

    async def reliable_loop() -> None:
        assert send_reliable is not None
        every = s.reliable_every_ms / 1e3
        k = 0
        while (due := t0 + k * every) < end:
            await _sleep_until(due)
            lag[0] = max(lag[0], time.monotonic() - due)
            await send_reliable(k)
            k += 1
            reliable[0] = k

    task = asyncio.ensure_future(reliable_loop()) if send_reliable and s.reliable_every_ms else None
    sent = 0
    await _sleep_until(t0)
    while (now := time.monotonic()) < end:
        due = int((now - t0) * rate)
        while sent < due:
            send_realtime(sent)
            sent += 1
        if after_tick is not None:
            after_tick()
        await asyncio.sleep(TICK)
    if task is not None:
        await task
    return sent, reliable[0], lag[0]


def _stats(transport: Any) -> Json:
    return {f.name: getattr(transport.endpoint.stats, f.name)
            for f in fields(transport.endpoint.stats)}


async def _sender(s: Scenario, args: Json, commands: _Commands) -> None:
    index = int(args["index"])
    target = ("127.0.0.1", int(args["port"]))
    buf = bytearray(s.size)
    if s.kind == "intentra":
        from intentra import Intent, PrivateKey, PublicKey, Transport  # noqa: PLC0415

        t = await Transport.bind("127.0.0.1:0", PrivateKey.generate())
        peer = await t.connect(target, server_key=PublicKey.from_base64(args["server_key"]))
        reply(ready=True)
        t0 = float((await commands.expect("start"))["t0"])
        dropped = [0]
        waited = [0.0]
        samples: list[Json] = []

        async def sample_status() -> None:
            # What the controller thought, every 100 ms: the JSON shows it beside
            # what the receiver measured.
            while True:
                await asyncio.sleep(0.1)
                st = peer.status()
                samples.append({"t": round(time.monotonic() - t0, 3),
                                "srtt_ms": round((st.rtt or 0.0) * 1e3, 2),
                                "min_rtt_ms": round((st.min_rtt or 0.0) * 1e3, 2),
                                "bandwidth_mbit": round(st.bandwidth * 8e-6, 3),
                                "pacing_mbit": round(st.pacing_rate * 8e-6, 3),
                                "cwnd": st.congestion_window, "in_flight": st.bytes_in_flight,
                                "queued_realtime": st.queued_realtime,
                                "queued_reliable": st.queued_reliable})

        sampler = asyncio.create_task(sample_status())

        def rt(seq: int) -> None:
            if not peer.send_nowait(_message(buf, seq, index, REALTIME), Intent.REALTIME):
                dropped[0] += 1

        async def rl(seq: int) -> None:
            started = time.monotonic()
            await peer.send(_message(buf, seq, index, RELIABLE), Intent.RELIABLE,
                            s.reliable_priority)
            waited[0] += time.monotonic() - started

        if index < s.bulk_senders:
            await _sleep_until(t0 + index * s.stagger)
            end = t0 + s.duration
            seq = 0
            while time.monotonic() < end:
                batch = []
                for _ in range(s.bulk_batch):
                    batch.append(_message(buf, seq, index, RELIABLE))
                    seq += 1
                started = time.monotonic()
                await peer.send_many(batch, Intent.RELIABLE, s.bulk_priority)
                waited[0] += time.monotonic() - started
            sent_rt, sent_rl, lag = 0, seq, 0.0
        else:
            sent_rt, sent_rl, lag = await _pace(s, t0 + index * s.stagger, t0 + s.duration,
                                                rt, rl)
        sampler.cancel()
        reply(sent={"realtime": sent_rt, "reliable": sent_rl}, dropped_at_sender=dropped[0],
               cpu_seconds=cpu_seconds(),
               send_wait_seconds=waited[0], reliable_lag_max_s=lag,
               bulk=index < s.bulk_senders, stats=_stats(t), status=samples)
        await commands.wait_quit()  # keep retransmitting until the parent quits
        t.abort()
    elif s.kind == "raw":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(target)
        reply(ready=True)
        t0 = float((await commands.expect("start"))["t0"])
        dropped = [0]

        def send_raw(seq: int, intent: int) -> None:
            try:
                sock.send(_message(buf, seq, index, intent))
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                dropped[0] += 1

        async def rl_raw(seq: int) -> None:
            send_raw(seq, RELIABLE)

        sent_rt, sent_rl, lag = await _pace(s, t0 + index * s.stagger, t0 + s.duration,
                                            lambda q: send_raw(q, REALTIME), rl_raw)
        reply(sent={"realtime": sent_rt, "reliable": sent_rl}, dropped_at_sender=dropped[0],
               cpu_seconds=cpu_seconds(),
               reliable_lag_max_s=lag)
        await commands.wait_quit()
    else:
        await _quic_sender(s, index, target, buf, commands)


async def _quic_sender(s: Scenario, index: int, target: tuple[str, int], buf: bytearray,
                       commands: _Commands) -> None:
    from aioquic.asyncio.client import connect  # noqa: PLC0415 - optional extra

    from intentra.bench.quic import _configuration  # noqa: PLC0415

    async with connect(target[0], target[1], configuration=_configuration(True)) as client:
        quic = client._quic
        stream_id = quic.get_next_available_stream_id()
        reply(ready=True, congestion_control=quic._configuration.congestion_control_algorithm)
        t0 = float((await commands.expect("start"))["t0"])
        dropped = [0]

        def rt(seq: int) -> None:
            if len(getattr(quic, "_datagrams_pending", ())) >= QUIC_PENDING_DATAGRAMS:
                dropped[0] += 1
                return
            quic.send_datagram_frame(_message(buf, seq, index, REALTIME))

        async def rl(seq: int) -> None:
            quic.send_stream_data(stream_id, _message(buf, seq, index, RELIABLE))
            client.transmit()

        sent_rt, sent_rl, lag = await _pace(s, t0 + index * s.stagger, t0 + s.duration,
                                            rt, rl, client.transmit)
        reply(sent={"realtime": sent_rt, "reliable": sent_rl}, dropped_at_sender=dropped[0],
               cpu_seconds=cpu_seconds(),
               reliable_lag_max_s=lag)
        await commands.wait_quit()


async def _receiver(s: Scenario, commands: _Commands) -> None:
    rec = Records()
    rss: list[tuple[float, int]] = []
    clock = time.monotonic_ns
    t0_box: list[float] = [math.inf]
    cleanup: list[Callable[[], None]] = []

    def see(data: bytes | memoryview) -> None:
        rec.add(data, clock())

    if s.kind == "intentra":
        from intentra import PrivateKey, Transport  # noqa: PLC0415
        from intentra.config import EndpointConfig  # noqa: PLC0415

        key = PrivateKey.generate()
        config = EndpointConfig()
        if s.receive_buffer:
            config = EndpointConfig(max_reorder_buffer=s.receive_buffer,
                                    max_message_size=s.receive_buffer - config.max_datagram)
        t = await Transport.bind("127.0.0.1:0", key, config=config)
        port, pub = t.local_address[1], key.public_key.to_base64()

        async def read() -> None:
            pause = s.reader_batch / s.reader_rate if s.reader_rate > 0 else 0.0
            n = 0
            while True:
                msg = await t.receive()
                see(msg.data)
                n += 1
                if pause and n % s.reader_batch == 0:
                    await asyncio.sleep(pause)

        reader = asyncio.ensure_future(read())

        def stop_reader() -> None:
            reader.cancel()
            t.abort()

        cleanup.append(stop_reader)
    elif s.kind == "raw":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port, pub = sock.getsockname()[1], ""

        def readable() -> None:
            while True:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    return
                see(data)

        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), readable)

        def unregister() -> None:
            loop.remove_reader(sock.fileno())
            sock.close()

        cleanup.append(unregister)
    else:
        port, pub, stop = await _quic_receiver(s, see)
        cleanup.append(stop)

    async def sample() -> None:
        while True:
            rss.append((time.monotonic() - t0_box[0], rss_kib()))
            await asyncio.sleep(BIN)

    reply(ready=True, port=port, key=pub)
    t0 = float((await commands.expect("start"))["t0"])
    t0_box[0] = t0
    sampler = asyncio.ensure_future(sample())
    expected = [int(n) for n in (await commands.expect("expect"))["reliable"]]
    stopped = time.monotonic()
    while time.monotonic() - stopped < s.drain and any(
            rec.reliable_count(i) < n for i, n in enumerate(expected)):
        await asyncio.sleep(0.05)
    drained = time.monotonic() - stopped
    cpu_used = cpu_seconds()
    await asyncio.sleep(0.1)  # REALTIME in flight behind the last RELIABLE
    sampler.cancel()
    result = analyse(s, rec, int(t0 * 1e9), expected, rss, drained, cpu_used)
    reply(**result)
    await commands.wait_quit()
    for undo in cleanup:
        undo()


async def _quic_receiver(s: Scenario, see: Callable[[bytes | memoryview], None]
                         ) -> tuple[int, str, Callable[[], None]]:
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from aioquic.asyncio.protocol import QuicConnectionProtocol  # noqa: PLC0415
    from aioquic.asyncio.server import serve  # noqa: PLC0415
    from aioquic.quic.events import (  # noqa: PLC0415
        DatagramFrameReceived,
        QuicEvent,
        StreamDataReceived,
    )

    from intentra.bench.quic import _certificate, _configuration  # noqa: PLC0415

    size = s.size

    class Server(QuicConnectionProtocol):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self._partial = bytearray()

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, DatagramFrameReceived):
                see(event.data)
            elif isinstance(event, StreamDataReceived):
                data = self._partial
                data += event.data
                whole = len(data) - len(data) % size
                for offset in range(0, whole, size):
                    see(bytes(data[offset:offset + size]))
                del data[:whole]

    with tempfile.TemporaryDirectory() as tmp:
        config = _configuration(client=False)
        config.load_cert_chain(*_certificate(Path(tmp)))
        server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Server)
    transport = server._transport
    if transport is None:
        raise RunError("aioquic server has no transport")
    return transport.get_extra_info("socket").getsockname()[1], "", server.close


def _role(role: str, args: Json) -> None:
    known = {f.name for f in fields(Scenario)}
    s = Scenario.from_json({k: v for k, v in args.items() if k in known})

    async def main() -> None:
        commands = _Commands()
        try:
            if role == "receiver":
                await _receiver(s, commands)
            else:
                await _sender(s, args, commands)
        except SystemExit:
            return
        except Exception as exc:
            reply(error=f"{type(exc).__name__}: {exc}")
            raise

    run_async(main)


def main(argv: Sequence[str] | None = None) -> int:
    """``receiver JSON`` / ``sender JSON`` (roles, inside a namespace) or ``run JSON``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) not in (1, 2) or argv[0] not in ("run", "receiver", "sender"):
        print("usage: python -m intentra.testing.bottleneck_run run|receiver|sender "
              "['JSON parameters']", file=sys.stderr)
        return 2
    if argv[0] != "run":
        _role(argv[0], json.loads(argv[1]))
        return 0
    try:
        args = json.loads(argv[1]) if len(argv) == 2 else {}
        if not isinstance(args, dict):
            raise ValueError(f"parameters must be a JSON object, got {argv[1]!r}")
        result = run(Scenario.from_json(args))
    except (ValueError, RunError, BottleneckError) as exc:
        print(f"bottleneck run failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
