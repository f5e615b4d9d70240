"""``intentra demo``: a hub and simulated peers on loopback, with a live display.

The hub is a real ``intentra serve`` process (state fan-out: every message
goes to all other peers). The peers live in this process, each with its own
socket, and send state updates at a fixed rate on lane 0: every Nth one RELIABLE
(priority 5), the rest REALTIME (priority 1). Once a second each peer also sends
one large RELIABLE message (``large_size`` bytes, fragmented; a map tile, say)
on lane 1 at priority 0, which the hub relays on lane 1 too: the state updates
keep their latency beside it. At the end: messages sent and delivered per
intent, delivery ratio, one-way latency p50/p99 of the state updates and of the
large messages, handshakes and the hub's key metrics (scraped from its /metrics
endpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import struct
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intentra.aio.peer import Message, Peer
from intentra.aio.transport import Transport
from intentra.constants import Intent
from intentra.errors import IntentraError, SendQueueFullError
from intentra.keys import PrivateKey
from intentra.status import PeerStatus

_STAMP = struct.Struct("!HIQ")  # sender index, sequence, send time (monotonic ns)
_KEY_METRICS = (
    "intentra_handshakes_completed_total",
    "intentra_cookie_replies_total",
    "intentra_packets_received_total",
    "intentra_packets_sent_total",
    "intentra_packets_dropped_malformed_total",
    "intentra_packets_dropped_crypto_total",
    "intentra_replay_rejections_total",
    "intentra_retransmissions_total",
    "intentra_messages_dropped_deadline_total",
    "intentra_messages_dropped_congestion_total",
    "intentra_messages_dropped_queue_full_total",
    "intentra_messages_dropped_receive_queue_total",
    "intentra_packets_dropped_rate_limit_total",
    "intentra_connection_closes_total",
)


@dataclass
class Tally:
    sent: dict[Intent, int] = field(default_factory=lambda: {Intent.RELIABLE: 0,
                                                             Intent.REALTIME: 0})
    delivered: dict[Intent, int] = field(default_factory=lambda: {Intent.RELIABLE: 0,
                                                                  Intent.REALTIME: 0})
    send_drops: int = 0
    latencies_us: list[int] = field(default_factory=list)
    reliable_order_errors: int = 0
    large_sent: int = 0
    large_delivered: int = 0
    large_corrupt: int = 0
    large_latencies_us: list[int] = field(default_factory=list)


def explain(n_peers: int) -> str:
    """The line that says how to read the figures and what a good run looks like."""
    fan = max(n_peers - 1, 1)
    return (f"the hub sends each update to the other {fan} peers, so delivered is about "
            f"{fan} x sent; good: reliable 100.00% delivered and in order, realtime close "
            "to 100% (drops are allowed, never late), p99 a few ms on loopback")


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return float(ordered[index])


async def _start_hub(workdir: Path, loop: str
                     ) -> tuple[asyncio.subprocess.Process, tuple[str, int], str, str]:
    key = PrivateKey.generate()
    key_path = workdir / "hub.key"
    key.save(key_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "intentra", "--loop", loop, "serve", "--bind", "127.0.0.1:0", "--key",
        str(key_path), "--metrics", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if proc.stdout is None:  # pragma: no cover - PIPE was asked for
        raise IntentraError("the hub process has no stdout pipe")
    address: tuple[str, int] | None = None
    metrics_url = ""
    while address is None or not metrics_url:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        if not line:
            err = (await proc.stderr.read()).decode() if proc.stderr else ""
            raise IntentraError(f"the hub process did not start: {err.strip()}")
        if m := re.match(r"intentra serving on (\S+):(\d+)", line):
            address = (m.group(1), int(m.group(2)))
        elif line.startswith("metrics: "):
            metrics_url = line.split(" ", 1)[1].strip()
    return proc, address, key.public_key.to_base64(), metrics_url


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback hub
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


class _Display:
    """A rich live panel when rich is installed and stdout is a terminal, else plain lines."""

    def __init__(self, plain: bool) -> None:
        self._live: Any = None
        if not plain and sys.stdout.isatty():
            try:
                from rich.live import Live  # noqa: PLC0415 - optional extra

                self._live = Live(refresh_per_second=4, transient=True)
                self._live.start()
            except ImportError:
                self._live = None

    def update(self, elapsed: float, duration: float, tally: Tally, peers: int,
               paths: str = "") -> None:
        sent = sum(tally.sent.values())
        delivered = sum(tally.delivered.values())
        recent = tally.latencies_us[-20000:]
        p99 = f"{percentile(recent, 0.99) / 1000:.2f} ms" if recent else "- (nothing yet)"
        if self._live is not None:
            from rich.progress_bar import ProgressBar  # noqa: PLC0415
            from rich.table import Table  # noqa: PLC0415

            table = Table.grid(padding=(0, 2))
            table.add_row(ProgressBar(total=duration, completed=min(elapsed, duration),
                                      width=40), f"{elapsed:5.1f}/{duration:g} s")
            table.add_row("peers", str(peers))
            table.add_row("sent", f"{sent:,}")
            table.add_row("delivered", f"{delivered:,}")
            table.add_row("latency p99 (recent)", p99)
            if paths:
                table.add_row("per peer", paths)
            self._live.update(table)
        else:
            print(f"[{elapsed:5.1f}/{duration:g} s] peers {peers}  sent {sent:,}  "
                  f"delivered {delivered:,}  p99 {p99}", flush=True)
            if paths:
                print(f"          per peer: {paths}", flush=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()


SETTLE = 5.0
"""Longest wait, seconds, for deliveries still in flight after the senders stop."""


LARGE_LANE = 1
"""The lane of the demo's large messages (the state updates use lane 0)."""


async def run_demo(peers: int = 30, rate: float = 50.0, duration: float = 10.0, size: int = 64,
                   reliable_every: int = 10, plain: bool = False, loop: str = "auto",
                   large_size: int = 2048) -> int:
    """Run the demo and print its summary. Returns the exit status.

    ``large_size`` is the size of the large message each peer sends once a second on
    lane 1 (0: none).
    """
    size = max(size, _STAMP.size)
    padding = bytes(size - _STAMP.size)
    large = bytes(i & 0xFF for i in range(large_size - _STAMP.size)) if large_size else b""
    with tempfile.TemporaryDirectory(prefix="intentra-demo-") as tmp:
        proc, hub_address, hub_key, metrics_url = await _start_hub(Path(tmp), loop)
        try:
            return await _drive(proc, hub_address, hub_key, metrics_url, peers, rate, duration,
                                padding, reliable_every, plain, large)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def _drive(proc: asyncio.subprocess.Process, hub_address: tuple[str, int], hub_key: str,
                 metrics_url: str, n_peers: int, rate: float, duration: float, padding: bytes,
                 reliable_every: int, plain: bool, large: bytes = b"") -> int:
    from intentra.keys import PublicKey  # noqa: PLC0415

    server_key = PublicKey.from_base64(hub_key)
    print(f"hub pid {proc.pid} on {hub_address[0]}:{hub_address[1]}; "
          f"{n_peers} peers x {rate:g} Hz for {duration:g} s"
          + (f", and one {len(large) + _STAMP.size:,}-byte message each per second on lane "
             f"{LARGE_LANE}" if large else "")
          + f"; event loop: {type(asyncio.get_running_loop()).__module__.split('.')[0]}",
          flush=True)
    print(explain(n_peers), flush=True)
    transports = [await Transport.bind("127.0.0.1:0", PrivateKey.generate())
                  for _ in range(n_peers)]
    t0 = time.perf_counter()
    # Every simulated peer shares 127.0.0.1, and the hub admits at most
    # MAX_HANDSHAKES_PER_IP pending handshakes per address: connect below it.
    gate = asyncio.Semaphore(4)

    async def connect(transport: Transport) -> Peer:
        async with gate:
            return await transport.connect(hub_address, server_key=server_key)

    links: list[Peer] = list(await asyncio.gather(*(connect(t) for t in transports)))
    handshake_time = time.perf_counter() - t0
    tally = Tally()
    last_reliable: dict[tuple[int, int], int] = {}

    async def receive(index: int, transport: Transport) -> None:
        delivered = tally.delivered
        latencies = tally.latencies_us
        unpack = _STAMP.unpack_from
        while True:
            try:
                first = await transport.receive()
            except IntentraError:
                return
            msg: Message | None = first
            now_ns = time.monotonic_ns()
            while msg is not None:  # drain what is queued without a loop turn each
                sender, seq, sent_ns = unpack(msg.data)
                if msg.lane == LARGE_LANE:
                    tally.large_delivered += 1
                    tally.large_latencies_us.append((now_ns - sent_ns) // 1000)
                    if msg.data[_STAMP.size:] != large:
                        tally.large_corrupt += 1
                    msg = transport.receive_nowait()
                    continue
                delivered[msg.intent] += 1
                latencies.append((now_ns - sent_ns) // 1000)
                if msg.intent is Intent.RELIABLE:
                    key = (index, sender)
                    if seq <= last_reliable.get(key, -1):
                        tally.reliable_order_errors += 1
                    last_reliable[key] = seq
                msg = transport.receive_nowait()

    receivers = [asyncio.create_task(receive(i, t)) for i, t in enumerate(transports)]
    # Give the hub a moment to see every peer before counting expected deliveries.
    await asyncio.sleep(0.2)
    display = _Display(plain)
    loop = asyncio.get_running_loop()
    start = loop.time()
    interval = 1.0 / rate
    per_second = max(round(rate), 1)
    tick = 0
    next_report = start
    try:
        while (now := loop.time()) - start < duration:
            if large:
                # once a second per peer, spread over the ticks of that second
                for index in range(tick % per_second, n_peers, per_second):
                    try:
                        links[index].send_nowait(
                            _STAMP.pack(index, tick, time.monotonic_ns()) + large,
                            Intent.RELIABLE, 0, lane=LARGE_LANE)
                        tally.large_sent += 1
                    except SendQueueFullError:
                        tally.send_drops += 1
            for index, link in enumerate(links):
                intent = Intent.RELIABLE if tick % reliable_every == 0 else Intent.REALTIME
                data = _STAMP.pack(index, tick, time.monotonic_ns()) + padding
                try:
                    link.send_nowait(data, intent, 5 if intent is Intent.RELIABLE else 1)
                    tally.sent[intent] += 1
                except SendQueueFullError:
                    tally.send_drops += 1
            tick += 1
            if now >= next_report:
                display.update(now - start, duration, tally, n_peers, _paths(links))
                next_report = now + (0.25 if display._live else 1.0)
            await asyncio.sleep(max(0.0, start + tick * interval - loop.time()))
        # Let retransmissions and the last of the hub's (paced) fan-out land: wait
        # until nothing more arrives for 0.3 s, at most SETTLE seconds.
        settle_end = loop.time() + SETTLE
        seen = -1
        while loop.time() < settle_end:
            now_seen = sum(tally.delivered.values())
            if now_seen == seen:
                break
            seen = now_seen
            await asyncio.sleep(0.3)
    finally:
        display.stop()
    metrics = _scrape(metrics_url)
    statuses = _statuses(links)
    for t in transports:
        await t.close()
    for task in receivers:
        task.cancel()
    proc.send_signal(signal.SIGINT)
    hub_status = await asyncio.wait_for(proc.wait(), 10)
    _summary(tally, n_peers, handshake_time, metrics, hub_status, statuses, len(large))
    ok = hub_status == 0 and tally.reliable_order_errors == 0 and tally.large_corrupt == 0
    return 0 if ok else 1


def _statuses(links: list[Peer]) -> list[PeerStatus]:
    """Each peer's session to the hub, as ``peer.status()`` reports it (closed ones left out)."""
    found = []
    for link in links:
        with contextlib.suppress(IntentraError):
            found.append(link.status())
    return found


def _paths(links: list[Peer]) -> str:
    """One line on the peers' sessions: RTT and send rate, median and worst."""
    statuses = _statuses(links)
    rtts = sorted(s.rtt for s in statuses if s.rtt is not None)
    rates = sorted(s.send_rate for s in statuses)
    if not rtts or not rates:
        return ""
    return (f"rtt p50 {rtts[len(rtts) // 2] * 1e3:.2f} ms, max {rtts[-1] * 1e3:.2f} ms; "
            f"send rate p50 {rates[len(rates) // 2] / 1e3:.1f} kB/s, "
            f"min {rates[0] / 1e3:.1f} kB/s")


def _summary(tally: Tally, n_peers: int, handshake_time: float, metrics: dict[str, float],
             hub_status: int | None, statuses: list[PeerStatus] | None = None,
             large_size: int = 0) -> None:
    fan = max(n_peers - 1, 1)
    lines = ["", "intentra demo summary",
             f"  peers: {n_peers}, handshakes completed in {handshake_time * 1000:.0f} ms"]
    lines.append(f"  {'intent':<10}{'sent':>10}{'expected':>12}{'delivered':>12}{'ratio':>9}")
    for intent in (Intent.RELIABLE, Intent.REALTIME):
        sent = tally.sent[intent]
        expected = sent * fan
        got = tally.delivered[intent]
        ratio = got / expected if expected else float("nan")
        lines.append(f"  {intent.name.lower():<10}{sent:>10,}{expected:>12,}{got:>12,}"
                     f"{ratio:>9.2%}")
    if tally.large_sent:
        expected = tally.large_sent * fan
        lines.append(f"  {'large':<10}{tally.large_sent:>10,}{expected:>12,}"
                     f"{tally.large_delivered:>12,}{tally.large_delivered / expected:>9.2%}"
                     f"  ({large_size + _STAMP.size:,} B, RELIABLE, lane {LARGE_LANE})")
    lat = tally.latencies_us
    lines.append(f"  latency one-way: p50 {percentile(lat, 0.5) / 1000:.2f} ms, "
                 f"p99 {percentile(lat, 0.99) / 1000:.2f} ms, over {len(lat):,} deliveries"
                 + (" (state updates, lane 0)" if tally.large_sent else ""))
    if tally.large_sent:
        big = tally.large_latencies_us
        lines.append(f"  large messages (lane {LARGE_LANE}): p50 "
                     f"{percentile(big, 0.5) / 1000:.2f} ms, p99 "
                     f"{percentile(big, 0.99) / 1000:.2f} ms, {tally.large_corrupt} corrupt")
    lines.append(f"  reliable order errors: {tally.reliable_order_errors}, "
                 f"send drops (full queue): {tally.send_drops}")
    if statuses:
        # peer.status() of each simulated peer's session to the hub: what an
        # application reads to lower its rate when the path is full.
        lines.append(f"  per peer (peer.status(), {len(statuses)} sessions): "
                     f"{'':<1}min / p50 / max")
        for label, values, scale, unit in (
                ("smoothed rtt", [s.rtt for s in statuses if s.rtt is not None], 1e3, "ms"),
                ("send rate", [s.send_rate for s in statuses], 1e-3, "kB/s"),
                ("path estimate", [s.bandwidth for s in statuses], 8e-6, "Mbit/s"),
                ("dropped congestion", [float(s.dropped_congestion) for s in statuses], 1, "")):
            if values:
                values.sort()
                lines.append(f"    {label:<20}{values[0] * scale:,.2f} / "
                             f"{values[len(values) // 2] * scale:,.2f} / "
                             f"{values[-1] * scale:,.2f} {unit}")
    lines.append("  hub metrics:")
    for name in _KEY_METRICS:
        if name in metrics:
            lines.append(f"    {name} {metrics[name]:,.0f}")
    lines.append(f"  hub exit status after SIGINT: {hub_status}")
    print("\n".join(lines), flush=True)


if os.name != "posix":  # pragma: no cover
    raise ImportError("the demo needs a POSIX system (signals, loopback UDP)")
