"""Median, min and max of each headline figure over several ``intentra bench --json`` runs.

One run on a 2-core machine that also runs its own load generator moves by 10-30%
from one run to the next; docs/performance.md reports the median of several.
Figures in ``core`` are a process's share of one core (CPU seconds per second) at
the figure above them: the side near 1.00 was the limit.

Usage:
    python tools/summarize.py run1.json run2.json run3.json [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

Json = dict[str, Any]


DEFAULTS = {"reader": "receive"}
"""Fields older runs lack, with the value they meant (fan-in read with receive())."""


def _row(rows: list[Json], **match: Any) -> Json | None:
    for row in rows:
        if all(row.get(k, DEFAULTS.get(k)) == v for k, v in match.items()):
            return row
    return None


def _latency(results: Json, kind: str, load: float, key: str) -> float | None:
    entry = _row(results.get("latency", []), kind=kind)
    if entry is None:
        return None
    for point in entry["points"]:
        if point["load"] == load and point["latency"]:
            value: float = point["latency"][key]
            return value
    return None


def _get(results: Json, scenario: str, field: str, **match: Any) -> float | None:
    row = _row(results.get(scenario, []), **match)
    return None if row is None or row.get(field) is None else float(row[field])


def _per_second(results: Json, scenario: str, field: str, **match: Any) -> float | None:
    """``field`` (CPU seconds) per second of the run: a share of one core."""
    row = _row(results.get(scenario, []), **match)
    if row is None or field not in row or not row.get("seconds"):
        return None
    return float(row[field]) / float(row["seconds"])


def _fan_in(name: str, **match: Any) -> list[tuple[str, str, Callable[[Json], float | None]]]:
    """The fan-in maximum of one server, and each side's share of a core at that rate."""
    return [
        (f"fan-in msg/s at >=99%, {name}", "msg/s",
         lambda r: _get(r, "fan-in", "max_rate_99", **match)),
        (f"  server CPU at that rate, {name}", "core",
         lambda r: _get(r, "fan-in", "server_cpu", **match)),
        (f"  generator CPU at that rate, {name}", "core",
         lambda r: _get(r, "fan-in", "generator_cpu", **match)),
        (f"  machine's busy cores at that rate, {name}", "core",
         lambda r: _get(r, "fan-in", "machine_cpu", **match)),
    ]


def _stream(intent: str) -> list[tuple[str, str, Callable[[Json], float | None]]]:
    """intentra's stream rate of one intent, and each side's share of a core."""
    name = f"stream {intent.upper()}, intentra"
    return [
        (name, "msg/s", lambda r: _get(r, "stream", "rate", kind="intentra", intent=intent)),
        (f"  receiver CPU, {name}", "core",
         lambda r: _get(r, "stream", "server_cpu", kind="intentra", intent=intent)),
        (f"  sender CPU, {name}", "core",
         lambda r: _get(r, "stream", "sender_cpu", kind="intentra", intent=intent)),
    ]


FIGURES: list[tuple[str, str, Callable[[Json], float | None]]] = [
    *_fan_in("intentra, 1 worker, receive()", kind="intentra", workers=1, reader="receive"),
    *_fan_in("intentra, 2 workers, receive()", kind="intentra", workers=2, reader="receive"),
    *_fan_in("intentra, receive_many()", kind="intentra", workers=1, reader="receive_many"),
    *_fan_in("intentra, serve --sink", kind="intentra", workers=1, reader="sink"),
    *_fan_in("raw UDP", kind="raw"),
    *_stream("realtime"),
    *_stream("reliable"),
    ("stream, raw UDP (1 message per datagram)", "msg/s",
     lambda r: _get(r, "stream", "rate", kind="raw")),
    ("stream DATAGRAM frames, aioquic", "msg/s",
     lambda r: _get(r, "stream", "rate", kind="quic", intent="realtime")),
    ("stream one stream, aioquic", "msg/s",
     lambda r: _get(r, "stream", "rate", kind="quic", intent="reliable")),
    ("handshakes/s, intentra", "1/s", lambda r: _get(r, "handshakes", "rate", kind="intentra")),
    ("  responder CPU, handshakes, intentra", "core",
     lambda r: _get(r, "handshakes", "server_cpu", kind="intentra")),
    ("  initiators' CPU, handshakes, intentra", "core",
     lambda r: _per_second(r, "handshakes", "cpu", kind="intentra")),
    ("handshakes/s, aioquic", "1/s", lambda r: _get(r, "handshakes", "rate", kind="quic")),
    ("latency p50 at 50% load, intentra", "ms",
     lambda r: _latency(r, "intentra", 0.5, "p50_ms")),
    ("latency p99 at 50% load, intentra", "ms",
     lambda r: _latency(r, "intentra", 0.5, "p99_ms")),
    ("latency p99 at 10% load, intentra", "ms",
     lambda r: _latency(r, "intentra", 0.1, "p99_ms")),
    ("latency p99 at 90% load, intentra", "ms",
     lambda r: _latency(r, "intentra", 0.9, "p99_ms")),
    ("latency p99 at 50% load, raw UDP", "ms", lambda r: _latency(r, "raw", 0.5, "p99_ms")),
    ("RSS per idle session (10,000)", "KiB",
     lambda r: r.get("sessions", {}).get("kib_per_session")),
]


def summarize(paths: list[Path]) -> list[tuple[str, str, float, float, float, int]]:
    runs = [json.loads(p.read_text())["results"] for p in paths]
    table = []
    for name, unit, get in FIGURES:
        values = [v for v in (get(r) for r in runs) if v is not None]
        if values:
            table.append((name, unit, statistics.median(values), min(values), max(values),
                          len(values)))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = summarize(args.runs)
    if args.markdown:
        print("| figure | median | min | max | runs |")
        print("|---|---:|---:|---:|---:|")
        for name, unit, med, lo, hi, n in rows:
            digits = 2 if unit in {"ms", "KiB", "core"} else 0
            print(f"| {name} ({unit}) | {med:,.{digits}f} | {lo:,.{digits}f} | {hi:,.{digits}f} "
                  f"| {n} |")
        return
    for name, unit, med, lo, hi, n in rows:
        print(f"{name:<58} {med:>12,.2f} {unit:<6} (min {lo:,.2f}, max {hi:,.2f}, {n} runs)")


if __name__ == "__main__":
    main()
