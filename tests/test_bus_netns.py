"""Three "machines" in network namespaces on one switch: a NATS node, a hub and peers on each.

The test makes four namespaces: a switch (a Linux bridge) and three machines, each
joined to the switch by a veth pair, with an address in 192.0.2.0/24 (TEST-NET-1,
never routed: nothing leaves the namespaces). Each machine runs one node of a
3-node NATS cluster (JetStream on), one ``intentra serve --bus`` hub and a process of
peers that connect to the hub of the *next* machine, so that both the peers' UDP
sessions and the hubs' NATS traffic cross real interfaces. Every peer must get every
other peer's RELIABLE messages exactly once and in order. The namespaces (and what
runs in them) are removed at the end, also on failure. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from intentra.testing.nats import NatsCluster, unavailable_reason
from test_cli import keygen

MACHINES = 3
PEERS = 4
MESSAGES = 10
HERE = Path(__file__).resolve().parent


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add) and veth links"
    if shutil.which("ip") is None:
        return "needs iproute2's 'ip' on PATH"
    return unavailable_reason()


@pytest.fixture
def machines() -> Iterator[list[str]]:
    """Namespace names of the machines, joined by a bridge in a switch namespace."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    tag = f"ibus{os.getpid() % 100000}"
    switch = f"{tag}-sw"
    names = [f"{tag}-m{i}" for i in range(MACHINES)]
    made: list[str] = []
    try:
        for name in (switch, *names):
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, name in enumerate(names):
            _ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
                "netns", switch)
            _ip("-n", name, "addr", "add", f"192.0.2.{10 + i}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", switch, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", switch, "link", "set", f"p{i}", "up")
    except RuntimeError as exc:
        for name in made:
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", name)
        pytest.skip(f"cannot build the namespaces: {exc}")
    try:
        yield names
    finally:
        for name in made:
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", name)


def test_hubs_on_three_machines_joined_through_nats(machines: list[str],
                                                    tmp_path: Path) -> None:
    hosts = [f"192.0.2.{10 + i}" for i in range(MACHINES)]
    inside = [["ip", "netns", "exec", name] for name in machines]
    key_file = tmp_path / "hub.key"
    public = keygen(key_file)
    processes: list[subprocess.Popen[str]] = []
    with NatsCluster.start(tmp_path / "nats", MACHINES, hosts=hosts, prefixes=inside) as nats:
        try:
            for i in range(MACHINES):  # each hub joins the NATS node of its own machine
                processes.append(subprocess.Popen(
                    [*inside[i], sys.executable, "-m", "intentra", "serve", "--bind",
                     f"{hosts[i]}:9000", "--key", str(key_file), "--envelope",
                     "--bus", nats.urls[i]],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True))
            for hub in processes:
                assert hub.stdout is not None
                for line in hub.stdout:
                    if line.startswith("bus: hub"):
                        break
                else:
                    pytest.fail(f"a hub did not join the bus: {hub.stderr.read()}")  # type: ignore[union-attr]
            runners = []
            for i in range(MACHINES):  # peers of machine i use the hub of machine i+1
                args = {"bind": hosts[i], "hub": f"{hosts[(i + 1) % MACHINES]}:9000",
                        "key": public, "peers": PEERS, "messages": MESSAGES}
                runners.append(subprocess.Popen(
                    [*inside[i], sys.executable, str(HERE / "busnet_peers.py"),
                     json.dumps(args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True))
            processes += runners
            keys = []
            for runner in runners:
                assert runner.stdout is not None
                line = runner.stdout.readline()
                assert line, runner.stderr.read()  # type: ignore[union-attr]
                keys += json.loads(line)["keys"]
            everyone = MACHINES * PEERS
            for runner in runners:
                assert runner.stdin is not None
                runner.stdin.write(json.dumps({"expected": (everyone - 1) * MESSAGES}) + "\n")
                runner.stdin.flush()
            results = []
            for runner in runners:
                out, err = runner.communicate(timeout=40)
                assert runner.returncode == 0, err
                results.append(json.loads(out.splitlines()[-1]))
            got = [per for r in results for per in r["reliable"]]
            for i, per in enumerate(got):
                assert keys[i] not in per, "a peer got its own message back"
                for j, origin in enumerate(keys):
                    if j != i:
                        assert per.get(origin) == list(range(MESSAGES)), \
                            f"peer {i} from {j}: {per.get(origin)}"
            assert sum(n for r in results for n in r["realtime"]) > 0
        finally:
            for proc in processes:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=10)
