"""Smoke runs of ``intentra bench``: every scenario and baseline, seconds each.

These check that the benchmark runs end to end from the CLI in real processes
and that its figures hang together; they assert no speed (targets are shown by
full runs, see docs/performance.md).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def test_quick_bench_runs_every_scenario_with_baselines(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, "-m", "intentra", "bench", "--quick", "--json", str(out),
         "--plot", str(png)], capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(out.read_text())
    r = report["results"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    kinds = {(row["kind"], row["workers"], row["reader"]) for row in r["fan-in"]}
    assert kinds == {("intentra", 1, "receive"), ("intentra", 1, "receive_many"),
                     ("intentra", 1, "sink"), ("raw", 1, "recvfrom")}
    for row in r["fan-in"]:
        assert row["steps"], row
        for step in row["steps"]:
            assert 0.0 <= step["ratio"] <= 1.0 + 1e-9
            assert step["delivered_rate"] <= step["sent_rate"] * 1.001
            # Each process's share of a core; the generators sleep between bursts.
            assert len(step["server_cpus"]) == row["workers"]
            assert 0.0 <= step["server_cpu"] <= 2.5 and 0.0 <= step["generator_cpu"] <= 1.5
            if row["kind"] == "intentra":  # presealed packets authenticate, none twice
                assert step["refused"] and not any(step["refused"].values()), step["refused"]
        assert row["max_rate_99"] > 0, "loopback at a few thousand msg/s delivers >= 99%"
        assert row["server_cpu"] is not None and row["generator_cpu"] is not None

    points = r["latency"][0]["points"]
    assert [p["load"] for p in points] == [0.1, 0.5, 0.9]
    for p in points:
        lat = p["latency"]
        assert lat["count"] > 0
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["p999_ms"] <= lat["max_ms"]

    streams = {(row["kind"], row["intent"]): row for row in r["stream"]}
    assert set(streams) == {("intentra", "realtime"), ("intentra", "reliable"),
                            ("raw", "realtime"), ("quic", "realtime"), ("quic", "reliable")}
    reliable = streams[("intentra", "reliable")]
    assert reliable["delivered"] == reliable["sent"] == reliable["in_order"] > 0, \
        "RELIABLE: every message, once, in order"
    for row in streams.values():
        assert 0 < row["in_order"] <= row["delivered"] <= row["sent"]

    large = {row["kind"]: row for row in r["large"]}
    assert set(large) == {"intentra", "quic"}
    mine = large["intentra"]
    assert mine["delivered"] == mine["sent"] == mine["in_order"] > 0, \
        "large RELIABLE: every message, whole, once, in order"
    assert mine["mb_per_s"] > 0 and large["quic"]["in_order"] > 0

    hs = {row["kind"]: row for row in r["handshakes"]}
    assert hs["intentra"]["handshakes"] > 0 and hs["intentra"]["failed"] == 0
    assert hs["quic"]["handshakes"] > 0

    sessions = r["sessions"]
    assert sessions["sessions"] == report["options"]["sessions"]
    assert sessions["rss_after_kib"] >= sessions["rss_before_kib"]
    assert "intentra bench" in result.stdout
    assert "CPU, share of a core" in result.stdout and "serve --sink" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["bench", "nonsense"], "unknown scenario"),
    (["bench", "--workers", "0"], "positive integers"),
    (["bench", "--peers", "-3"], "--peers"),
    (["bench", "--readers", "receive,nope"], "unknown reader"),
    (["bench", "bottleneck", "--loads", "0,1"], "positive multiples of the link"),
])
def test_bad_bench_arguments_are_one_line(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "intentra", *args], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr


def test_presealed_gso_generator_sends_each_packet_once_and_authentic() -> None:
    """The fan-in generator seals ahead with the sessions' real keys and sends each
    peer's datagrams in GSO batches: the server authenticates every one (no AEAD
    failure, no replay: no packet number twice under one key, also across two
    steps), delivers them all, and several datagrams leave per send."""
    from intentra.aio.datapath import probe_gso  # noqa: PLC0415
    from intentra.bench import Stack, measure_step, start_servers  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        gso = probe_gso(probe)
    with Stack() as stack:
        servers, target, key = start_servers(stack, "intentra", 1, reader="receive_many")
        generator, _ = stack.start("intentra-generator", {
            "target": target, "server_key": key, "peers": 4, "size": 100, "segments": 8})
        steps = [measure_step(servers, generator, 3000.0, 0.3) for _ in range(2)]
        total = servers[0].ask(cmd="stats")
    for step in steps:
        assert step["ratio"] == pytest.approx(1.0, abs=0.01)
        assert step["refused"]["replay_rejections"] == 0
        assert step["refused"]["packets_dropped_crypto"] == 0
        assert not any(step["refused"].values()), step["refused"]
        assert step["datagrams_per_send"] > (4.0 if gso else 0.99), step
        assert 0.0 < step["generator_cpu"] < 1.0
    assert total["refused"]["replay_rejections"] == 0
    assert total["datapath"] in {"gso+gro", "gro", "gso", "plain"}


def test_sink_server_counts_without_delivering(tmp_path: Path) -> None:
    from intentra.bench import Options, Stack, measure_step, start_servers  # noqa: PLC0415

    with Stack() as stack:
        servers, target, key = start_servers(stack, "intentra", 1, sink=True)
        generator, _ = stack.start("intentra-generator", {
            "target": target, "server_key": key, "peers": 5, "size": 64})
        step = measure_step(servers, generator, 2000.0, 0.3)
    assert step["ratio"] == pytest.approx(1.0, abs=0.01)
    assert Options().peers == 1000


def test_quick_bottleneck_sweep_or_its_skip_reason(tmp_path: Path) -> None:
    """``intentra bench bottleneck --quick``: two loads through a real 10 Mbit/s link for
    intentra, plain UDP and aioquic (about 13 s), or a clear skip where no namespace can
    be made. Asserts only that the figures hang together, not the capacity bounds (those
    are tests/test_bottleneck.py)."""
    from intentra.testing.bottleneck import unavailable_reason  # noqa: PLC0415

    out = tmp_path / "bottleneck.json"
    png = tmp_path / "bottleneck.png"
    result = subprocess.run(
        [sys.executable, "-m", "intentra", "bench", "bottleneck", "--quick", "--json", str(out),
         "--plot", str(png)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(out.read_text())
    sweep = report["results"]["bottleneck"]
    reason = unavailable_reason()
    if reason is not None:
        assert sweep == {"skipped": reason}
        assert f"bottleneck: skipped: {reason}" in result.stdout
        return
    points = {(p["kind"], p["load"]): p for p in sweep["points"]}
    assert set(points) == {(k, x) for k in ("intentra", "raw", "quic") for x in (0.4, 2.4)}
    for p in points.values():
        assert 0 < p["realtime_delivered"] <= p["realtime_sent"]
        assert 0 < p["realtime_mbit"] <= p["link_mbit"] * 1.05, "the link caps what arrives"
        lat = p["realtime_latency"]
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert p["reliable_delivered"] <= p["reliable_sent"]
    for kind in ("intentra", "quic"):  # retransmitted: complete and in order
        for load in (0.4, 2.4):
            p = points[(kind, load)]
            assert p["reliable_delivered"] == p["reliable_sent"] > 0 and p["reliable_in_order"]
    light = points[("intentra", 0.4)]
    assert light["realtime_mbit"] == pytest.approx(4.0, rel=0.1), "0.4x of 10 Mbit/s fits"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bottleneck" in result.stdout


def test_quick_cluster_bench_or_its_skip_reason(tmp_path: Path) -> None:
    """``intentra bench cluster --quick --hubs 2``: one hub alone against two hubs on a
    real 3-node NATS cluster, one light step per intent (about 12 s). Asserts that the
    figures hang together (every message delivered at that load), not a speed."""
    from intentra.bench.cluster import unavailable_reason  # noqa: PLC0415

    out = tmp_path / "cluster.json"
    result = subprocess.run(
        [sys.executable, "-m", "intentra", "bench", "cluster", "--quick", "--hubs", "2",
         "--json", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(out.read_text())
    cluster = report["results"]["cluster"]
    reason = unavailable_reason()
    if reason is not None:
        assert cluster == {"skipped": reason}
        return
    rows = {(row["hubs"], row["bus"], row["intent"]): row for row in cluster["layouts"]}
    assert set(rows) == {(h, bus, i) for h, bus in ((1, False), (2, True))
                         for i in ("realtime", "reliable")}
    for row in rows.values():
        step = row["steps"][0]
        assert step["sent_rate"] > 0 and step["delivered_rate"] > 0
        assert step["ratio"] <= 1.0 + 1e-9
        lat = step["latency"]
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    for hubs, bus in ((1, False), (2, True)):  # RELIABLE: every message to every receiver
        assert rows[(hubs, bus, "reliable")]["steps"][0]["ratio"] == 1.0
    assert "2 hubs on NATS" in result.stdout
