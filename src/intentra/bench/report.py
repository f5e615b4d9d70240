"""The bench report: a results table with ratios, JSON, and PNG plots."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from intentra.bench import Report

TARGETS = {
    "fan-in vs raw UDP": 0.6,
    "fan-in msg/s": 100_000,
    "fan-in receive_many msg/s": 800_000,
    "serve --sink msg/s": 1_000_000,
    "stream realtime vs quic": 5.0,
    "stream reliable vs quic": 5.0,
    "stream realtime msg/s": 500_000,
    "handshakes/s": 1_000,
    "latency p99 at 50% (ms)": 1.0,
    "KiB per idle session": 10.0,
}

Row = tuple[str, str, str, str, str]
"""(measure, intentra, baseline, CPU shares, target and verdict)."""

DEFAULTS = {"reader": "receive"}
"""Fields older reports lack, with the value they meant (fan-in read with receive())."""


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k, DEFAULTS.get(k)) == v for k, v in match.items()):
            return row
    return None


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fan_in_cpu(row: dict[str, Any] | None) -> str:
    """``server S / generator G / machine M`` at the row's best rate.

    S and G are shares of one core; several server processes (``--workers``)
    show each one's share, then the sum. A server that waited for a core
    (runnable, none free) says how long per second. M is how many cores the
    whole machine had busy (other work included): near all of them, the
    shares are not the processes' own limits.
    """
    if not row or row.get("server_cpu") is None:
        return ""
    cpus = row.get("server_cpus") or []
    server = _share(row["server_cpu"]) if len(cpus) < 2 else \
        "+".join(_share(c) for c in cpus) + f"={_share(row['server_cpu'])}"
    if (row.get("server_wait") or 0.0) >= 0.05:
        server += f" (waited {_share(row['server_wait'])})"
    text = f"server {server} / generator {_share(row.get('generator_cpu'))}"
    if row.get("machine_cpu") is not None:
        text += f" / machine {_share(row['machine_cpu'])}"
    return text


def summary(report: Report) -> list[Row]:
    """Rows of (measure, intentra, baseline, CPU shares, target and verdict).

    The CPU column gives each process's share of a core (CPU seconds per second
    of the measurement) at the figure shown, the intentra side first and then
    the baseline's after ``|``: a side near 1.00 was the limit.
    """
    r = report.results
    rows: list[Row] = []

    def verdict(name: str, value: float, lower_is_better: bool = False) -> str:
        target = TARGETS[name]
        met = value <= target if lower_is_better else value >= target
        sign = "<=" if lower_is_better else ">="
        return f"{sign} {target:,g}: {'met' if met else 'MISSED'}"

    fan = r.get("fan-in", [])
    ours = _find(fan, kind="intentra", workers=1, reader="receive")
    raw = _find(fan, kind="raw")
    raw_cpu = f" | raw {fan_in_cpu(raw)}" if raw else ""
    if ours:
        rows.append(("fan-in max msg/s at >=99%, receive()", f"{ours['max_rate_99']:,.0f}",
                     f"raw UDP {raw['max_rate_99']:,.0f}" if raw else "-",
                     fan_in_cpu(ours) + raw_cpu, verdict("fan-in msg/s", ours["max_rate_99"])))
        if raw and raw["max_rate_99"]:
            ratio = ours["max_rate_99"] / raw["max_rate_99"]
            rows.append(("fan-in vs raw UDP", f"{ratio:.2f}x", "1.00x", "",
                         verdict("fan-in vs raw UDP", ratio)))
    batch = _find(fan, kind="intentra", workers=1, reader="receive_many")
    if batch:
        rows.append(("fan-in max msg/s at >=99%, receive_many()", f"{batch['max_rate_99']:,.0f}",
                     f"receive() {ours['max_rate_99']:,.0f}" if ours else "-",
                     fan_in_cpu(batch), verdict("fan-in receive_many msg/s",
                                                batch["max_rate_99"])))
    sink = _find(fan, kind="intentra", workers=1, reader="sink")
    if sink:
        rows.append(("serve --sink msg/s at >=99%", f"{sink['max_rate_99']:,.0f}",
                     f"raw UDP {raw['max_rate_99']:,.0f}" if raw else "-",
                     fan_in_cpu(sink), verdict("serve --sink msg/s", sink["max_rate_99"])))
    for row in fan:
        if row["kind"] == "intentra" and row["workers"] > 1:
            rows.append((f"fan-in --workers {row['workers']}", f"{row['max_rate_99']:,.0f}",
                         f"x1 {ours['max_rate_99']:,.0f}" if ours else "-", fan_in_cpu(row),
                         "report"))
    streams = r.get("stream", [])
    for intent in ("realtime", "reliable"):
        mine = _find(streams, kind="intentra", intent=intent)
        quic = _find(streams, kind="quic", intent=intent)
        if not mine:
            continue
        cpu = f"receiver {_share(mine.get('server_cpu'))} / sender {_share(mine.get('sender_cpu'))}"
        if quic:
            cpu += (f" | aioquic {_share(quic.get('server_cpu'))} / "
                    f"{_share(quic.get('sender_cpu'))}")
        rows.append((f"stream {intent} msg/s", f"{mine['rate']:,.0f}",
                     f"aioquic {quic['rate']:,.0f}" if quic else "-", cpu,
                     verdict("stream realtime msg/s", mine["rate"])
                     if intent == "realtime" else ""))
        if quic and quic["rate"]:
            ratio = mine["rate"] / quic["rate"]
            rows.append((f"stream {intent} vs aioquic", f"{ratio:.1f}x", "1.0x", "",
                         verdict(f"stream {intent} vs quic", ratio)))
    big = r.get("large", [])
    mine = _find(big, kind="intentra")
    quic = _find(big, kind="quic")
    if mine:
        cpu = (f"receiver {_share(mine.get('server_cpu'))} / "
               f"sender {_share(mine.get('sender_cpu'))}")
        if quic:
            cpu += (f" | aioquic {_share(quic.get('server_cpu'))} / "
                    f"{_share(quic.get('sender_cpu'))}")
        rows.append((f"large {mine['size']:,}-byte RELIABLE MB/s", f"{mine['mb_per_s']:,.1f}",
                     f"aioquic stream {quic['mb_per_s']:,.1f}" if quic else "-", cpu,
                     "report"))
        if quic and quic["mb_per_s"]:
            rows.append(("large vs aioquic", f"{mine['mb_per_s'] / quic['mb_per_s']:.2f}x",
                         "1.00x", "", "report"))
    raw_stream = _find(streams, kind="raw")
    if raw_stream:
        rows.append(("stream raw UDP msg/s (1 msg/datagram)", "-",
                     f"{raw_stream['rate']:,.0f}",
                     f"receiver {_share(raw_stream.get('server_cpu'))} / sender "
                     f"{_share(raw_stream.get('sender_cpu'))}", ""))
    hs = r.get("handshakes", [])
    mine = _find(hs, kind="intentra")
    quic = _find(hs, kind="quic")
    if mine:
        cpu = _handshake_cpu(mine) + (f" | aioquic {_handshake_cpu(quic)}" if quic else "")
        rows.append(("handshakes/s", f"{mine['rate']:,.0f}",
                     f"aioquic {quic['rate']:,.0f}" if quic else "-", cpu,
                     verdict("handshakes/s", mine["rate"])))
    for entry in r.get("latency", []):
        for point in entry["points"]:
            lat = point["latency"] or {}
            label = f"latency {entry['kind']} at {point['load']:.0%} p50/p99/p99.9 ms"
            text = (f"{lat.get('p50_ms', 0):.3f} / {lat.get('p99_ms', 0):.3f} / "
                    f"{lat.get('p999_ms', 0):.3f}")
            cpu = (f"server {_share(point.get('server_cpu'))} / generator "
                   f"{_share(point.get('generator_cpu'))}")
            if entry["kind"] == "intentra":
                rows.append((label, text, "", cpu,
                             verdict("latency p99 at 50% (ms)", lat.get("p99_ms", 1e9), True)
                             if point["load"] == 0.5 else ""))
            else:
                rows.append((label, "", text, cpu, ""))
    sweep = r.get("bottleneck") or {}
    if sweep.get("points"):
        rows.append((f"bottleneck {sweep['link_mbit']:g} Mbit/s, per offered load",
                     "REALTIME Mbit/s | p50/p99 ms | RELIABLE p99 ms", "the same", "", ""))
    for point in sorted(sweep.get("points", []),
                        key=lambda p: (p["load"], p["kind"] != "intentra")):
        label = f"  {point['load']:g}x {_NAMES.get(point['kind'], point['kind'])}"
        if point["kind"] == "intentra":
            rows.append((label, _bottleneck_text(point), "", "", "report"))
        else:
            rows.append((label, "", _bottleneck_text(point), "", ""))
    cluster = r.get("cluster") or {}
    if cluster.get("layouts"):
        rows.append((f"cluster: {cluster['senders']} senders on hub 1, "
                     f"{cluster['receivers']} receivers over the hubs",
                     "delivered msg/s at >=99% | p50/p99 ms", "one hub alone", "", ""))
    alone = {row["intent"]: row for row in cluster.get("layouts", []) if not row["bus"]}
    for row in cluster.get("layouts", []):
        if not row["bus"]:
            continue
        base = alone.get(row["intent"])
        label = f"  {row['hubs']} hub{'s' if row['hubs'] > 1 else ''} on NATS, {row['intent']}"
        rows.append((label, _cluster_text(row), _cluster_text(base) if base else "-", "",
                     "report"))
    sessions = r.get("sessions")
    if sessions:
        rows.append((f"RSS per idle session ({sessions['sessions']:,} sessions)",
                     f"{sessions['kib_per_session']:.2f} KiB", "", "",
                     verdict("KiB per idle session", sessions["kib_per_session"], True)))
    return rows


def _handshake_cpu(row: dict[str, Any]) -> str:
    seconds = row.get("seconds") or 0.0
    initiators = row["cpu"] / seconds if seconds and "cpu" in row else None
    return f"responder {_share(row.get('server_cpu'))} / initiators {_share(initiators)}"


_NAMES = {"raw": "plain UDP", "quic": "aioquic"}


def _bottleneck_text(point: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}" if value < 10 else f"{value:,.0f}"

    rt, rl = point["realtime_latency"], point["reliable_latency"]
    return (f"{point['realtime_mbit']:.1f} | {ms(rt['p50_ms'])}/{ms(rt['p99_ms'])} | "
            f"{ms(rl['p99_ms'])}")


def _cluster_text(row: dict[str, Any]) -> str:
    lat = row["latency"] or {}
    return (f"{row['max_rate_99']:,.0f} | {lat.get('p50_ms', 0):.1f}/"
            f"{lat.get('p99_ms', 0):.1f}")


def print_table(report: Report, out: Any = None) -> None:
    rows = summary(report)
    try:
        from rich.console import Console  # noqa: PLC0415 - optional extra
        from rich.table import Table  # noqa: PLC0415
    except ImportError:
        width = max((len(r[0]) for r in rows), default=10)
        for row in rows:
            print(f"{row[0]:<{width}}  {row[1]:>22}  {row[2]:>24}  {row[4]:<18}  {row[3]}",
                  file=out)
    else:
        table = Table(title="intentra bench")
        for name in ("measure", "intentra", "baseline", "CPU, share of a core", "target"):
            table.add_column(name, justify="left" if name in ("measure", "CPU, share of a core")
                             else "right")
        for row in rows:
            table.add_row(*row)
        Console(file=out, width=max(160, Console(file=out).width)).print(table)
    print("CPU: each process's CPU seconds per second of the measurement (1.00 = one core "
          "busy), intentra first, the baseline after |; the side near 1.00 was the limit. "
          "'waited': runnable without a free core; 'machine': cores busy in all (other "
          f"work included) of {os.cpu_count()}.", file=out)
    for note in report.notes:
        print(f"note: {note}", file=out)


def write_json(report: Report, path: str | Path) -> None:
    Path(path).write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")


def plot(report: Report, path: str | Path) -> bool:
    """PNG of the fan-in sweep (and stream/handshake bars); False without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 - optional extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    results = report.results
    points = (results.get("bottleneck") or {}).get("points", [])
    layouts = (results.get("cluster") or {}).get("layouts", [])
    others = any(k not in ("bottleneck", "cluster") for k in results)
    rows = int(others) + int(bool(points)) + int(bool(layouts))
    if rows == 0:
        return False
    fig, grid = plt.subplots(rows, 3, figsize=(16, 4.8 * rows), squeeze=False)
    if points:
        _plot_bottleneck(grid[-1], points, (results.get("bottleneck") or {}))
    if layouts:
        _plot_cluster(grid[-1 - int(bool(points))], layouts)
    if not others:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True
    sweep, ratio, bars = grid[0]
    for row in report.results.get("fan-in", []):
        label = row["kind"] if row["workers"] == 1 else f"{row['kind']} x{row['workers']}"
        reader = row.get("reader", "receive")
        if row["kind"] == "intentra" and reader != "receive":
            label += " serve --sink" if reader == "sink" else f" {reader}()"
        offered = [s["sent_rate"] for s in row["steps"]]
        sweep.plot(offered, [s["delivered_rate"] for s in row["steps"]], "o-", label=label)
        ratio.plot([s["offered"] for s in row["steps"]], [s["ratio"] for s in row["steps"]],
                   "o-", label=label)
    top = max((s["sent_rate"] for row in report.results.get("fan-in", [])
               for s in row["steps"]), default=1.0)
    sweep.plot([0, top], [0, top], ":", color="grey", label="offered = delivered")
    sweep.set(title="fan-in: delivered vs offered", xlabel="offered msg/s",
              ylabel="delivered msg/s")
    ratio.axhline(0.99, color="grey", linestyle=":")
    ratio.set(title="fan-in: delivery ratio", xlabel="offered msg/s", ylabel="delivered / sent",
              xscale="log")
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    thousands = FuncFormatter(lambda v, _pos: f"{v / 1000:,.0f}k" if v else "0")
    for ax in (sweep, ratio):
        ax.legend()
        ax.grid(alpha=0.3)
    sweep.xaxis.set_major_formatter(thousands)
    sweep.yaxis.set_major_formatter(thousands)
    bars.yaxis.set_major_formatter(thousands)
    names, values = [], []
    for row in report.results.get("stream", []):
        names.append(f"{row['kind']}\n{row['intent']}")
        values.append(row["rate"])
    bars.bar(names, values, color=["C0" if n.startswith("intentra") else "C7" for n in names])
    bars.set(title="stream: messages/s in order (one peer)", ylabel="msg/s")
    bars.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_bottleneck(axes: Any, points: list[dict[str, Any]], sweep: dict[str, Any]) -> None:
    """Delivered REALTIME rate, REALTIME p50/p99 and RELIABLE p99 against offered load."""
    rate, realtime, reliable = axes
    link = sweep.get("link_mbit", 10.0)
    for kind in dict.fromkeys(p["kind"] for p in points):
        mine = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["load"])
        label = _NAMES.get(kind, kind)
        loads = [p["load"] for p in mine]
        rate.plot(loads, [p["realtime_mbit"] for p in mine], "o-", label=label)
        line = realtime.plot(loads, [p["realtime_latency"]["p99_ms"] or float("nan")
                                     for p in mine], "o-", label=f"{label} p99")
        realtime.plot(loads, [p["realtime_latency"]["p50_ms"] or float("nan") for p in mine],
                      "x:", color=line[0].get_color(), label=f"{label} p50")
        reliable.plot(loads, [p["reliable_latency"]["p99_ms"] or float("nan") for p in mine],
                      "o-", label=label)
    top = max(p["load"] for p in points)
    rate.plot([0, top], [0, top * link], ":", color="grey", label="offered")
    rate.axhline(link, color="grey", linestyle="--", label="link")
    rate.set(title=f"bottleneck {link:g} Mbit/s: delivered REALTIME payload",
             xlabel="offered load (x link)", ylabel="Mbit/s")
    realtime.set(title="REALTIME one-way latency", xlabel="offered load (x link)",
                 ylabel="ms", yscale="log")
    reliable.set(title="RELIABLE priority 7 p99 (1 per 10 ms)", xlabel="offered load (x link)",
                 ylabel="ms", yscale="log")
    for ax in axes:
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)


def _plot_cluster(axes: Any, layouts: list[dict[str, Any]]) -> None:
    """Delivered fan-out against sent rate, and p99 latency, per layout and intent."""
    rate, latency, best = axes
    for row in layouts:
        label = f"{row['hubs']} hub{'s' if row['hubs'] > 1 else ''}" + \
            (" on NATS" if row["bus"] else " alone") + f", {row['intent']}"
        style = "o-" if row["intent"] == "realtime" else "s--"
        sent = [s["sent_rate"] for s in row["steps"]]
        rate.plot(sent, [s["delivered_rate"] for s in row["steps"]], style, label=label)
        latency.plot(sent, [(s["latency"] or {}).get("p99_ms", float("nan"))
                            for s in row["steps"]], style, label=label)
    names = [f"{r['hubs']}{'' if r['bus'] else ' alone'}\n{r['intent']}" for r in layouts]
    best.bar(names, [r["max_rate_99"] for r in layouts],
             color=["C7" if not r["bus"] else "C0" for r in layouts])
    rate.set(title="cluster: delivered fan-out vs sent", xlabel="sent msg/s",
             ylabel="delivered msg/s", xscale="log", yscale="log")
    latency.set(title="cluster: p99 one-way latency (cross-hub)", xlabel="sent msg/s",
                ylabel="ms", xscale="log", yscale="log")
    best.set(title="cluster: delivered msg/s at >= 99%", ylabel="msg/s")
    for ax in axes:
        ax.grid(alpha=0.3)
    rate.legend(fontsize="x-small")
    latency.legend(fontsize="x-small")
