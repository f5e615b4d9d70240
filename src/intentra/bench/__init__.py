"""``intentra bench``: load scenarios and baselines, side by side, on loopback.

Every scenario runs its server and its load generator in separate processes
(:mod:`intentra.bench.roles`), with the same message size and process layout
for intentra and for the baselines: plain unencrypted Python UDP (a blocking
``sendto`` loop into a receiver that only counts datagrams) and aioquic
(DATAGRAM frames, one stream, its handshake; optional extra ``bench``).

Scenarios:
    fan-in      P peers, REALTIME at a swept total rate, into one server process
                whose application reads with receive() (a sweep per --workers
                count), with receive_many(), or not at all (serve --sink)
    stream      one peer as fast as it can, REALTIME and RELIABLE
    large       one peer sending 1 MiB RELIABLE messages (fragmented, on lane 1) as
                fast as it can: MB/s delivered whole, against aioquic's stream
                moving the same messages
    handshakes  complete handshakes per second one responder serves
    latency     one-way latency at 10%, 50% and 90% of the fan-in maximum
    sessions    RSS per established idle session in one endpoint
    bottleneck  offered-load sweep through a real 10 Mbit/s link (root only; run
                only when named: ``intentra bench bottleneck``)
    cluster     cross-hub fan-out through a 3-node NATS cluster, 1, 2, 3 hubs against
                one hub alone (run only when named: ``intentra bench cluster``; see
                :mod:`intentra.bench.cluster`)

Every measurement reports each process's share of a core (CPU seconds per
second: the server processes, the load generator or sender), so a reader sees
which side was the limit. The fan-in generators send each step's datagrams in
GSO batches, one peer's run per ``sendmsg`` (intentra's sealed ahead with the
sessions' keys, see ``roles.intentra_generator``), and sleep between bursts.

``bottleneck`` differs from the rest: it runs the endpoints of
:mod:`intentra.testing.bottleneck_run` inside a network namespace whose
loopback is rate-limited with tbf (:mod:`intentra.testing.bottleneck`), and the
baselines are the same traffic as plain UDP (one datagram per message, no
control) and aioquic (DATAGRAM frames and one stream, its congestion control).
"""

from __future__ import annotations

import base64
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from intentra.bench.proto import Json, Role, RoleError

SCENARIOS = ("fan-in", "stream", "large", "handshakes", "latency", "sessions")
"""What ``intentra bench`` runs by default."""
EXTRA_SCENARIOS = ("bottleneck", "cluster")
"""Run only when named (bottleneck needs root; each is a minute or more of its own)."""
DELIVERY_TARGET = 0.99
STREAM_CONFIG = {"rate_limit_pps": 1e7, "rate_limit_burst": 1e6}
"""A single stream far exceeds the per-session token bucket (10,000 packets/s by
default): the stream server raises it, as an operator with one trusted heavy
peer would. Fan-in stays at the defaults."""


@dataclass
class Options:
    scenarios: tuple[str, ...] = SCENARIOS
    peers: int = 1000
    size: int = 128
    step_seconds: float = 2.0
    stream_seconds: float = 3.0
    large_seconds: float = 3.0
    large_size: int = 1 << 20
    handshake_seconds: float = 3.0
    latency_seconds: float = 3.0
    sessions: int = 10_000
    start_rate: float = 10_000.0
    growth: float = 1.3
    max_rate: float = 2_000_000.0
    workers: tuple[int, ...] = (1,)
    readers: tuple[str, ...] = ("receive", "receive_many", "sink")
    """intentra fan-in servers: the application reads with receive() (one sweep per
    ``workers`` entry), with receive_many() and without an application (serve --sink),
    one worker each."""
    segments: int = 16
    """Datagrams per GSO send in the generators' throughput steps (1: one sendto each)."""
    baselines: tuple[str, ...] = ("raw", "quic")
    progress: Callable[[str], None] = print
    smoke: bool = False  # set by quick(): the verdicts need a full run
    bottleneck_mbit: float = 10.0
    bottleneck_loads: tuple[float, ...] = (0.4, 0.8, 1.2, 2.4)
    bottleneck_seconds: float = 4.0
    bottleneck_size: int = 200
    cluster_hubs: tuple[int, ...] = (1, 2, 3)
    cluster_senders: int = 4
    cluster_receivers: int = 12
    cluster_start_rate: float = 500.0
    cluster_growth: float = 2.0
    cluster_max_rate: float = 64_000.0

    @classmethod
    def quick(cls, **overrides: Any) -> Options:
        """Seconds, not minutes: the smoke run of ``make test``."""
        values: dict[str, Any] = {
            "peers": 20, "step_seconds": 0.4, "stream_seconds": 0.5, "large_seconds": 0.5,
            "large_size": 256 * 1024,
            "handshake_seconds": 0.5, "latency_seconds": 0.4, "sessions": 100,
            "start_rate": 2000.0, "growth": 4.0, "max_rate": 40_000.0, "smoke": True,
            "bottleneck_loads": (0.4, 2.4), "bottleneck_seconds": 0.8,
            "cluster_max_rate": 500.0, "cluster_senders": 2, "cluster_receivers": 6}
        values.update(overrides)
        return cls(**values)


@dataclass
class Report:
    machine: Json = field(default_factory=dict)
    options: Json = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def machine() -> Json:
    info: Json = {"python": platform.python_version(), "platform": platform.platform(),
                  "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import uvloop  # noqa: PLC0415, F401 - optional extra
        info["loop"] = "uvloop"
    except ImportError:
        info["loop"] = "asyncio"
    return info


def quic_available() -> bool:
    try:
        import aioquic  # noqa: PLC0415, F401 - optional extra
    except ImportError:
        return False
    return True


class Stack:
    """Role processes started for one measurement, stopped together."""

    def __init__(self) -> None:
        self.roles: list[Role] = []

    def start(self, role: str, args: Json, timeout: float = 300.0,
              pass_fds: tuple[int, ...] = ()) -> tuple[Role, Json]:
        process = Role(role, args, pass_fds=pass_fds)
        self.roles.append(process)
        return process, process.read(timeout)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        for role in reversed(self.roles):
            role.stop()


# ---------------------------------------------------------------- servers

def start_servers(stack: Stack, kind: str, workers: int, config: Json | None = None,
                  sink: bool = False, reader: str = "receive") -> tuple[list[Role], str, str]:
    """``workers`` server processes of ``kind`` on one port; returns (roles, target, key).

    ``reader`` is how an intentra server's application reads (``"receive"``,
    ``"receive_many"``; ``sink=True`` has none: ``serve --sink``).
    """
    if sink:
        reader = "sink"
    if kind != "intentra" or workers == 1:
        args: Json = {"config": config or {}, "sink": sink, "reader": reader}
        role, ready = stack.start(f"{kind}-server", args)
        return [role], f"127.0.0.1:{ready['port']}", ready["key"]
    from intentra.keys import PrivateKey  # noqa: PLC0415
    from intentra.workers import reuseport_sockets  # noqa: PLC0415

    # As serve --workers does: the sockets in group order, conn_id steering, one
    # key and one cookie master; each worker process gets its socket by fd.
    key = PrivateKey.generate()
    master = base64.b64encode(os.urandom(32)).decode()
    sockets, _ = reuseport_sockets("127.0.0.1", 0, workers)
    roles: list[Role] = []
    try:
        for index, sock in enumerate(sockets):
            args = {"config": config or {}, "sink": sink, "reader": reader, "fd": sock.fileno(),
                    "conn_id_class": [index, workers], "key": key.to_base64(),
                    "cookie_master": master}
            role, _ = stack.start("intentra-server", args, pass_fds=(sock.fileno(),))
            roles.append(role)
        port = sockets[0].getsockname()[1]
    finally:
        for sock in sockets:
            sock.close()  # the workers hold their own copies
    return roles, f"127.0.0.1:{port}", key.public_key.to_base64()


def server_stats(servers: Iterable[Role], base_ns: int = 0) -> Json:
    """The servers' counts summed; ``cpus`` and ``refused`` per process and summed."""
    total: Json = {"messages": 0, "in_order": 0, "handshakes": 0, "cpu": 0.0, "rss_kib": 0,
                   "cpus": [], "waits": [], "refused": {}}
    latency = None
    for server in servers:
        stats = server.ask(cmd="stats", base_ns=base_ns)
        for name in ("messages", "in_order", "handshakes", "cpu", "rss_kib"):
            total[name] += stats[name]
        total["cpus"].append(stats["cpu"])
        total["waits"].append(stats.get("wait", 0.0))
        for name, value in stats.get("refused", {}).items():
            total["refused"][name] = total["refused"].get(name, 0) + value
        latency = stats.get("latency") or latency
    total["latency"] = latency
    return total


def settle(servers: list[Role], timeout: float = 5.0) -> None:
    """Wait until the servers' message counts stop moving (their sockets are drained).

    A server that fell behind still works through its socket buffer after a
    step: that backlog must not be counted in the next step.
    """
    deadline = time.monotonic() + timeout
    last = sum(server.ask(cmd="count")["messages"] for server in servers)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        count = sum(server.ask(cmd="count")["messages"] for server in servers)
        if count == last:
            return
        last = count


def reset(servers: Iterable[Role], latency: bool = False) -> None:
    for server in servers:
        server.ask(cmd="reset", latency=latency)


# ---------------------------------------------------------------- scenarios

def measure_step(servers: list[Role], generator: Role, rate: float, duration: float,
                 latency: bool = False) -> Json:
    """One offered rate for ``duration`` seconds.

    Throughput steps send packets the intentra generator sealed before the
    clock started, in GSO batches (see ``roles.intentra_generator``). Latency
    steps seal each message as it goes, stamped just before: one-way latency
    from the sender's ``send`` to the receiving application, the generator's
    pacing excluded. The step records each process's share of a core and its
    wait for one, the machine's busy cores while the generator sent, and what
    the intentra servers' receive path refused (all zero for genuine packets).
    """
    reset(servers, latency)
    before = server_stats(servers)
    sent = generator.ask(cmd="go", rate=rate, duration=duration, intent="realtime",
                         presealed=not latency, timeout=duration * 20 + 60)
    time.sleep(0.25)  # datagrams in flight and queued in the server land
    stats = server_stats(servers, 0 if latency else int(sent.get("start_ns", 0)))
    settle(servers)  # what lands later counts in no step
    seconds = sent["seconds"]
    # CPU shares: seconds of CPU per second of the step (1.0 = one core busy). The
    # servers' include the 0.25 s of landing above, spread over the step. "wait"
    # is the time a process was ready to run but had no core (a shared machine).
    cpus = [(b - a) / seconds for a, b in zip(before["cpus"], stats["cpus"], strict=True)]
    waits = [(b - a) / seconds for a, b in zip(before["waits"], stats["waits"], strict=True)]
    return {
        "offered": rate,
        "sent_rate": sent["sent"] / seconds,
        "delivered_rate": stats["messages"] / seconds,
        "ratio": stats["messages"] / sent["sent"] if sent["sent"] else 0.0,
        "server_cpu": sum(cpus),
        "server_cpus": cpus,
        "server_wait": sum(waits),
        "generator_cpu": sent["cpu"] / seconds,
        "generator_wait": sent.get("wait", 0.0) / seconds,
        "machine_cpu": sent.get("machine", 0.0) / seconds,
        "datagrams_per_send": sent["sent"] / sent["sends"] if sent.get("sends") else 1.0,
        "refused": {k: v - before["refused"].get(k, 0) for k, v in stats["refused"].items()},
        "latency": stats["latency"],
    }


def fan_in(options: Options, kind: str, workers: int = 1, reader: str = "receive",
           start_rate: float | None = None) -> Json:
    """Sweep the offered rate up until delivery falls below 99% or the generator saturates.

    ``reader`` (intentra only): the server application reads with ``receive()``,
    with ``receive_many()``, or there is none (``"sink"``: ``serve --sink``).
    Every step records each process's share of a core, and the result the
    shares at the best rate (``server_cpu``, ``server_cpus``, ``generator_cpu``).
    """
    if kind != "intentra":
        reader = "recvfrom"  # the baselines' servers: a plain loop, no application API
    label = f"{kind} {reader}" if reader in ("receive_many", "sink") else f"{kind} x{workers}"
    with Stack() as stack:
        servers, target, key = start_servers(stack, kind, workers, sink=reader == "sink",
                                             reader=reader)
        generator, ready = stack.start(f"{kind}-generator", {
            "target": target, "server_key": key, "peers": options.peers, "size": options.size,
            "segments": options.segments})
        steps: list[Json] = []
        rate = start_rate or options.start_rate
        below = 0
        while rate <= options.max_rate:
            step = measure_step(servers, generator, rate, options.step_seconds)
            steps.append(step)
            options.progress(f"  fan-in {label}: offered {rate:>10,.0f}/s  "
                             f"sent {step['sent_rate']:>10,.0f}/s  delivered "
                             f"{step['delivered_rate']:>10,.0f}/s  ({step['ratio']:.2%})  "
                             f"CPU server {step['server_cpu']:.2f} (waited "
                             f"{step['server_wait']:.2f}) generator {step['generator_cpu']:.2f} "
                             f"machine {step['machine_cpu']:.2f}/{os.cpu_count()}")
            if step["ratio"] < DELIVERY_TARGET:
                below += 1
                if below >= 2:
                    break
            if step["sent_rate"] < 0.9 * rate:
                break  # the generator cannot offer more: the sweep is generator-bound
            rate *= options.growth
        good = [s for s in steps if s["ratio"] >= DELIVERY_TARGET]
        best = max(good, key=lambda s: s["delivered_rate"]) if good else None
        saturated = bool(steps) and steps[-1]["sent_rate"] < 0.9 * steps[-1]["offered"]
        at_best = best or {}
        return {"kind": kind, "workers": workers, "reader": reader, "peers": options.peers,
                "segments": options.segments,
                "connect_seconds": ready["connect_seconds"], "steps": steps,
                "max_rate_99": best["delivered_rate"] if best else 0.0,
                "server_cpu": at_best.get("server_cpu"),
                "server_cpus": at_best.get("server_cpus"),
                "server_wait": at_best.get("server_wait"),
                "generator_cpu": at_best.get("generator_cpu"),
                "machine_cpu": at_best.get("machine_cpu"),
                "generator_bound": saturated and (best is steps[-1] if best else False)}


def latency(options: Options, kind: str, maximum: float) -> Json:
    with Stack() as stack:
        servers, target, key = start_servers(stack, kind, 1)
        generator, _ = stack.start(f"{kind}-generator", {
            "target": target, "server_key": key, "peers": options.peers, "size": options.size})
        points = []
        for fraction in (0.1, 0.5, 0.9):
            step = measure_step(servers, generator, fraction * maximum,
                                options.latency_seconds, latency=True)
            step["load"] = fraction
            points.append(step)
            lat = step["latency"] or {}
            options.progress(f"  latency {kind} at {fraction:.0%} ({fraction * maximum:,.0f}/s): "
                             f"p50 {lat.get('p50_ms', 0):.3f} ms  p99 {lat.get('p99_ms', 0):.3f} "
                             f"ms  p99.9 {lat.get('p999_ms', 0):.3f} ms")
        return {"kind": kind, "maximum": maximum, "points": points}


def stream(options: Options, kind: str, intent: str) -> Json:
    with Stack() as stack:
        if kind == "quic":
            server, ready = stack.start("quic-server", {"size": options.size})
            client, _ = stack.start("quic-client", {
                "target": f"127.0.0.1:{ready['port']}", "size": options.size})
            servers = [server]
        else:
            servers, target, key = start_servers(stack, kind, 1, config=STREAM_CONFIG)
            # The stream's one peer is a real client: congestion control on.
            client, _ = stack.start(f"{kind}-generator", {
                "target": target, "server_key": key, "peers": 1, "size": options.size,
                "config": {**STREAM_CONFIG, "congestion_control": True}})
        reset(servers)
        sent = client.ask(cmd="blast", duration=options.stream_seconds, intent=intent,
                          timeout=options.stream_seconds + 60)
        time.sleep(0.3)
        stats = server_stats(servers)
        seconds = sent["seconds"]
        result = {"kind": kind, "intent": intent, "sent": sent["sent"],
                  "delivered": stats["messages"], "in_order": stats["in_order"],
                  "rate": stats["in_order"] / seconds, "sender_cpu": sent["cpu"] / seconds,
                  "server_cpu": stats["cpu"] / seconds}
        options.progress(f"  stream {kind} {intent}: {result['rate']:>10,.0f} msg/s in order "
                         f"({stats['in_order']:,} of {sent['sent']:,} sent)")
        return result


def large(options: Options, kind: str) -> Json:
    """``large_size`` RELIABLE messages from one peer for ``large_seconds``: MB/s of
    whole messages delivered (intentra: fragments on lane 1; aioquic: one stream)."""
    size = options.large_size
    with Stack() as stack:
        if kind == "quic":
            server, ready = stack.start("quic-server", {"size": size})
            client, _ = stack.start("quic-client", {
                "target": f"127.0.0.1:{ready['port']}", "size": size})
            servers = [server]
        else:
            config = {**STREAM_CONFIG, "max_message_size": max(size, 1 << 20),
                      "max_reorder_buffer": max(size, 1 << 20) + (256 << 10),
                      "max_send_queue_bytes": 4 * max(size, 1 << 20)}
            servers, target, key = start_servers(stack, kind, 1, config=config)
            client, _ = stack.start(f"{kind}-generator", {
                "target": target, "server_key": key, "peers": 1, "size": size,
                "config": {**config, "congestion_control": True}})
        reset(servers)
        sent = client.ask(cmd="bulk", duration=options.large_seconds,
                          timeout=options.large_seconds + 120)
        time.sleep(0.3)
        stats = server_stats(servers)
        seconds = sent["seconds"]
        result = {"kind": kind, "size": size, "sent": sent["sent"],
                  "delivered": stats["messages"], "in_order": stats["in_order"],
                  "mb_per_s": stats["in_order"] * size / seconds / 1e6,
                  "sender_cpu": sent["cpu"] / seconds, "server_cpu": stats["cpu"] / seconds}
        options.progress(f"  large {kind}: {result['mb_per_s']:>8.1f} MB/s of {size:,}-byte "
                         f"messages ({stats['in_order']:,} of {sent['sent']:,} whole, in order)")
        return result


def handshakes(options: Options, kind: str) -> Json:
    with Stack() as stack:
        if kind == "quic":
            server, ready = stack.start("quic-server", {})
            client, _ = stack.start("quic-client", {"target": f"127.0.0.1:{ready['port']}"})
            cpu0 = server.ask(cmd="stats")["cpu"]
            done = client.ask(cmd="handshakes", duration=options.handshake_seconds,
                              concurrency=64, timeout=options.handshake_seconds + 60)
        else:
            servers, target, key = start_servers(stack, "intentra", 1)
            server = servers[0]
            client, _ = stack.start("intentra-handshaker", {
                "target": target, "server_key": key, "sockets": 64})
            cpu0 = server.ask(cmd="stats")["cpu"]
            done = client.ask(cmd="go", duration=options.handshake_seconds,
                              timeout=options.handshake_seconds + 60)
        server_cpu = (server.ask(cmd="stats")["cpu"] - cpu0) / done["seconds"]
        rate = done["handshakes"] / done["seconds"]
        options.progress(f"  handshakes {kind}: {rate:,.0f}/s ({done['handshakes']:,} done, "
                         f"{done['failed']} failed; responder CPU {server_cpu:.0%}, "
                         f"initiators' CPU {done['cpu'] / done['seconds']:.0%})")
        return {"kind": kind, "rate": rate, "server_cpu": server_cpu, **done}


def sessions(options: Options) -> Json:
    with Stack() as stack:
        servers, target, key = start_servers(stack, "intentra", 1)
        before = server_stats(servers)["rss_kib"]
        _, ready = stack.start("intentra-generator", {
            "target": target, "server_key": key, "peers": options.sessions,
            "size": options.size}, timeout=max(300.0, options.sessions / 20))
        time.sleep(0.5)
        stats = servers[0].ask(cmd="stats")
        per = (stats["rss_kib"] - before) / options.sessions
        options.progress(f"  sessions: {stats['sessions']:,} idle sessions, RSS {before:,} -> "
                         f"{stats['rss_kib']:,} KiB = {per:.2f} KiB per session "
                         f"(set up in {ready['connect_seconds']:.1f} s)")
        return {"sessions": stats["sessions"], "rss_before_kib": before,
                "rss_after_kib": stats["rss_kib"], "kib_per_session": per,
                "setup_seconds": ready["connect_seconds"]}


def bottleneck(options: Options, baselines: list[str]) -> Json:
    """Offered-load sweep through a real link, for intentra and each baseline.

    Per load and stack: delivered REALTIME payload rate, REALTIME p50/p99 and
    RELIABLE p99 (one RELIABLE priority-7 message every 10 ms beside the
    REALTIME load), warm-up (the first 0.5 s, or a quarter of a short run)
    excluded. Returns ``{"skipped": reason}`` where no namespace can be made.
    """
    from intentra.testing.bottleneck import Bottleneck, unavailable_reason  # noqa: PLC0415
    from intentra.testing.bottleneck_run import Scenario  # noqa: PLC0415
    from intentra.testing.bottleneck_run import run as run_scenario  # noqa: PLC0415

    reason = unavailable_reason()
    if reason is not None:
        return {"skipped": reason}
    seconds = options.bottleneck_seconds
    points: list[Json] = []
    with Bottleneck.create(options.bottleneck_mbit) as link:
        for kind in ("intentra", *baselines):
            for load in options.bottleneck_loads:
                scenario = Scenario(
                    kind=kind, link_mbit=options.bottleneck_mbit, size=options.bottleneck_size,
                    load=load, duration=seconds, warmup=min(0.5, seconds / 4),
                    # plain UDP never resends: waiting for its lost RELIABLE is pointless
                    drain=0.3 if kind == "raw" else 3.0)
                r = run_scenario(scenario, link)
                sender = r["senders"][0]
                point = {
                    "kind": kind, "load": load, "link_mbit": options.bottleneck_mbit,
                    "offered_mbit": load * options.bottleneck_mbit,
                    "realtime_mbit": r["realtime"]["payload_mbit"],
                    "link_share": r["realtime"]["link_share"],
                    "realtime_latency": r["realtime"]["latency"],
                    "reliable_latency": r["reliable"]["latency"],
                    "reliable_sent": r["reliable"]["sent"],
                    "reliable_delivered": r["reliable"]["delivered"],
                    "reliable_in_order": r["reliable"]["in_order"],
                    "realtime_sent": sender["sent"]["realtime"],
                    "realtime_delivered": r["realtime"]["delivered"],
                    "dropped_at_sender": sender["dropped_at_sender"],
                    "qdisc": r["qdisc"]}
                points.append(point)
                rt, rl = point["realtime_latency"], point["reliable_latency"]
                options.progress(
                    f"  bottleneck {kind} at {load:g}x of {options.bottleneck_mbit:g} Mbit/s: "
                    f"REALTIME {point['realtime_mbit']:.2f} Mbit/s, p50 {_ms(rt['p50_ms'])} "
                    f"p99 {_ms(rt['p99_ms'])}; RELIABLE p99 {_ms(rl['p99_ms'])} "
                    f"({point['reliable_delivered']}/{point['reliable_sent']})")
    return {"link_mbit": options.bottleneck_mbit, "size": options.bottleneck_size,
            "seconds": seconds, "points": points}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# ---------------------------------------------------------------- the whole run

def run(options: Options) -> Report:
    report = Report(machine=machine(), options={
        k: v for k, v in vars(options).items() if k != "progress"})
    results = report.results
    baselines = [b for b in options.baselines if b != "quic" or quic_available()]
    if "quic" in options.baselines and "quic" not in baselines:
        report.notes.append("aioquic is not installed (pip install 'intentra[bench]'): "
                            "no QUIC baseline")
    say = options.progress
    if options.smoke:
        report.notes.append("a --quick smoke run: small loads and sub-second steps; the target "
                            "verdicts need a full run")
    wanted = set(options.scenarios)
    if wanted & {"fan-in", "latency"}:
        say("fan-in")
        readers = options.readers if "fan-in" in wanted else ("receive",)
        results["fan-in"] = [fan_in(options, "intentra", w) for w in options.workers] \
            if "receive" in readers or "latency" in wanted else []
        base = max((r["max_rate_99"] for r in results["fan-in"] if r["workers"] == 1),
                   default=0.0)
        for reader in ("receive_many", "sink"):
            if reader in readers:
                # Both read more than receive(): the sweep starts at half its maximum.
                results["fan-in"].append(fan_in(options, "intentra", 1, reader,
                                                max(options.start_rate, base / 2)))
        if "raw" in baselines:
            results["fan-in"].append(fan_in(options, "raw"))
    if "latency" in wanted:
        say("latency")
        best = max((r["max_rate_99"] for r in results["fan-in"]
                    if r["kind"] == "intentra" and r["workers"] == 1
                    and r["reader"] == "receive"), default=0.0)
        if best <= 0:
            report.notes.append("latency: no fan-in rate reached 99% delivery")
        else:
            results["latency"] = [latency(options, "intentra", best)]
            if "raw" in baselines:
                results["latency"].append(latency(options, "raw", best))
    if "stream" in wanted:
        say("stream")
        results["stream"] = [stream(options, "intentra", i) for i in ("realtime", "reliable")]
        if "raw" in baselines:
            results["stream"].append(stream(options, "raw", "realtime"))
        if "quic" in baselines:
            results["stream"] += [stream(options, "quic", i) for i in ("realtime", "reliable")]
    if "large" in wanted:
        say("large")
        results["large"] = [large(options, "intentra")]
        if "quic" in baselines:
            results["large"].append(large(options, "quic"))
    if "handshakes" in wanted:
        say("handshakes")
        results["handshakes"] = [handshakes(options, "intentra")]
        if "quic" in baselines:
            results["handshakes"].append(handshakes(options, "quic"))
    if "sessions" in wanted:
        say("sessions")
        results["sessions"] = sessions(options)
    if "cluster" in wanted:
        from intentra.bench.cluster import cluster  # noqa: PLC0415

        say("cluster")
        results["cluster"] = cluster(options)
        if "skipped" in results["cluster"]:
            report.notes.append(f"cluster: skipped: {results['cluster']['skipped']}")
    if "bottleneck" in wanted:
        say("bottleneck")
        results["bottleneck"] = bottleneck(options, baselines)
        if "skipped" in results["bottleneck"]:
            report.notes.append(f"bottleneck: skipped: {results['bottleneck']['skipped']}")
    return report


__all__ = ["EXTRA_SCENARIOS", "SCENARIOS", "Options", "Report", "RoleError", "run"]
