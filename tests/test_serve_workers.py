"""``intentra serve --workers N`` in real processes on one port.

Clients reach the workers through a NAT-like proxy (:class:`UdpProxy`); after
a rebind every session arrives from a new source port, which the kernel's
4-tuple hash would send to an arbitrary worker. The conn_id steering keeps each
session on the worker that holds it: every client's messages still echo back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

from aiohelp import run
from intentra import Intent, PrivateKey, PublicKey, Transport
from intentra.testing import UdpProxy
from test_cli import Server, keygen

CLIENTS = 12


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in the scrape"
    return float(found.group(1))


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def test_sessions_stay_on_their_worker_across_a_rebind(tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    keygen(key)
    server = Server(["--bind", "127.0.0.1:0", "--key", str(key), "--echo", "--workers", "2",
                     "--metrics", "127.0.0.1:0"], tmp_path)
    try:
        match = server.expect(r"^intentra serving on (127\.0\.0\.1):(\d+)$")
        port = int(match.group(2))
        public = server.expect(r"^public key: (\S+)$").group(1)
        assert server.expect(r"^mode: (.*)$").group(1) == \
            "echo, 2 workers, sessions steered by conn_id: yes"
        urls = sorted(server.expect(r"^worker \d: metrics: (\S+)$").group(1) for _ in range(2))

        async def scenario() -> None:
            async with await UdpProxy.start(("127.0.0.1", port)) as proxy:
                transports = [await Transport.bind("127.0.0.1:0", PrivateKey.generate())
                              for _ in range(CLIENTS)]
                try:
                    peers = [await t.connect(proxy.address, server_key=PublicKey.from_base64(
                        public)) for t in transports]

                    async def round_trip(tag: bytes) -> None:
                        for i, peer in enumerate(peers):
                            await peer.send(tag + b"%d" % i, Intent.RELIABLE)
                        for i, t in enumerate(transports):
                            msg = await asyncio.wait_for(t.receive(), 5)
                            assert msg.data == tag + b"%d" % i

                    await round_trip(b"before ")
                    assert proxy.rebind() == CLIENTS
                    await round_trip(b"after ")
                finally:
                    for t in transports:
                        await t.close(flush_timeout=0)

        run(scenario(), timeout=60)
        scrapes = [scrape(url) for url in urls]
        handshakes = [metric(s, "intentra_handshakes_completed_total") for s in scrapes]
        roams = [metric(s, "intentra_roams_total") for s in scrapes]
        unknown = [metric(s, "intentra_packets_dropped_unknown_total") for s in scrapes]
        assert sum(handshakes) == CLIENTS and all(handshakes), \
            f"both workers hold sessions: {handshakes}"
        assert sum(roams) == CLIENTS, f"each session roamed once on its own worker: {roams}"
        assert sum(unknown) == 0, "no datagram reached a worker that did not know its session"
        assert server.interrupt() == 0, server.stderr_lines
        assert sum(1 for line in server.stdout_lines if "closed" in line) == 2
    finally:
        server.kill()


def test_workers_refuse_hub_mode(tmp_path: Path) -> None:
    from test_cli import assert_usage_error, intentra  # noqa: PLC0415

    key = tmp_path / "server.key"
    keygen(key)
    result = intentra("serve", "--bind", "127.0.0.1:0", "--key", str(key), "--workers", "2",
                      cwd=tmp_path)
    assert "--workers needs --echo, --sink or --bus" in assert_usage_error(result)
    result = intentra("serve", "--bind", "127.0.0.1:0", "--key", str(key), "--echo", "--sink",
                      cwd=tmp_path)
    assert "choose one of --echo and --sink" in assert_usage_error(result)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def test_a_worker_dying_stops_the_supervisor_and_the_other_workers(tmp_path: Path) -> None:
    """Whichever worker dies (here the last one), the supervisor notices at once,
    stops the others and exits non-zero: the port's steering order is gone."""
    key = tmp_path / "server.key"
    keygen(key)
    server = Server(["--bind", "127.0.0.1:0", "--key", str(key), "--sink", "--workers", "3"],
                    tmp_path)
    try:
        server.expect(r"^mode: sink, 3 workers")
        deadline = time.monotonic() + 10
        while len(workers := _children(server.proc.pid)) < 3:
            assert time.monotonic() < deadline, "three workers never started"
            time.sleep(0.05)
        os.kill(max(workers), signal.SIGKILL)
        assert server.proc.wait(10) == 1
        time.sleep(0.2)
        assert not [w for w in workers if Path(f"/proc/{w}").exists()
                    and "Z" not in (Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1][:3])]
    finally:
        server.kill()
