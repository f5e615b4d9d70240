"""The bench report: a results table with ratios, JSON, and PNG plots."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from intentra.bench import Report

TARGETS = {
    "fan-in vs raw UDP": 0.6,
    "fan-in msg/s": 100_000,
    "stream realtime vs quic": 5.0,
    "stream reliable vs quic": 5.0,
    "stream realtime msg/s": 500_000,
    "handshakes/s": 1_000,
    "latency p99 at 50% (ms)": 1.0,
    "KiB per idle session": 10.0,
}


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def summary(report: Report) -> list[tuple[str, str, str, str]]:
    """Rows of (measure, intentra, baseline, target and verdict)."""
    r = report.results
    rows: list[tuple[str, str, str, str]] = []

    def verdict(name: str, value: float, lower_is_better: bool = False) -> str:
        target = TARGETS[name]
        met = value <= target if lower_is_better else value >= target
        sign = "<=" if lower_is_better else ">="
        return f"{sign} {target:,g}: {'met' if met else 'MISSED'}"

    fan = r.get("fan-in", [])
    ours = _find(fan, kind="intentra", workers=1)
    raw = _find(fan, kind="raw")
    if ours:
        rows.append(("fan-in max msg/s at >=99%", f"{ours['max_rate_99']:,.0f}",
                     f"raw UDP {raw['max_rate_99']:,.0f}" if raw else "-",
                     verdict("fan-in msg/s", ours["max_rate_99"])))
        if raw and raw["max_rate_99"]:
            ratio = ours["max_rate_99"] / raw["max_rate_99"]
            rows.append(("fan-in vs raw UDP", f"{ratio:.2f}x", "1.00x",
                         verdict("fan-in vs raw UDP", ratio)))
    for row in fan:
        if row["kind"] == "intentra" and row["workers"] > 1:
            rows.append((f"fan-in --workers {row['workers']}", f"{row['max_rate_99']:,.0f}",
                         f"x1 {ours['max_rate_99']:,.0f}" if ours else "-", "report"))
    streams = r.get("stream", [])
    for intent in ("realtime", "reliable"):
        mine = _find(streams, kind="intentra", intent=intent)
        quic = _find(streams, kind="quic", intent=intent)
        if not mine:
            continue
        rows.append((f"stream {intent} msg/s", f"{mine['rate']:,.0f}",
                     f"aioquic {quic['rate']:,.0f}" if quic else "-",
                     verdict("stream realtime msg/s", mine["rate"])
                     if intent == "realtime" else ""))
        if quic and quic["rate"]:
            ratio = mine["rate"] / quic["rate"]
            rows.append((f"stream {intent} vs aioquic", f"{ratio:.1f}x", "1.0x",
                         verdict(f"stream {intent} vs quic", ratio)))
    big = r.get("large", [])
    mine = _find(big, kind="intentra")
    quic = _find(big, kind="quic")
    if mine:
        rows.append((f"large {mine['size']:,}-byte RELIABLE MB/s", f"{mine['mb_per_s']:,.1f}",
                     f"aioquic stream {quic['mb_per_s']:,.1f}" if quic else "-", "report"))
        if quic and quic["mb_per_s"]:
            rows.append(("large vs aioquic", f"{mine['mb_per_s'] / quic['mb_per_s']:.2f}x",
                         "1.00x", "report"))
    raw_stream = _find(streams, kind="raw")
    if raw_stream:
        rows.append(("stream raw UDP msg/s (1 msg/datagram)", "-",
                     f"{raw_stream['rate']:,.0f}", ""))
    hs = r.get("handshakes", [])
    mine = _find(hs, kind="intentra")
    quic = _find(hs, kind="quic")
    if mine:
        rows.append(("handshakes/s", f"{mine['rate']:,.0f}",
                     f"aioquic {quic['rate']:,.0f}" if quic else "-",
                     verdict("handshakes/s", mine["rate"])))
    for entry in r.get("latency", []):
        for point in entry["points"]:
            lat = point["latency"] or {}
            label = f"latency {entry['kind']} at {point['load']:.0%} p50/p99/p99.9 ms"
            text = (f"{lat.get('p50_ms', 0):.3f} / {lat.get('p99_ms', 0):.3f} / "
                    f"{lat.get('p999_ms', 0):.3f}")
            if entry["kind"] == "intentra":
                rows.append((label, text, "",
                             verdict("latency p99 at 50% (ms)", lat.get("p99_ms", 1e9), True)
                             if point["load"] == 0.5 else ""))
            else:
                rows.append((label, "", text, ""))
    sweep = r.get("bottleneck") or {}
    if sweep.get("points"):
        rows.append((f"bottleneck {sweep['link_mbit']:g} Mbit/s, per offered load",
                     "REALTIME Mbit/s | p50/p99 ms | RELIABLE p99 ms", "the same", ""))
    for point in sorted(sweep.get("points", []),
                        key=lambda p: (p["load"], p["kind"] != "intentra")):
        label = f"  {point['load']:g}x {_NAMES.get(point['kind'], point['kind'])}"
        if point["kind"] == "intentra":
            rows.append((label, _bottleneck_text(point), "", "report"))
        else:
            rows.append((label, "", _bottleneck_text(point), ""))
    sessions = r.get("sessions")
    if sessions:
        rows.append((f"RSS per idle session ({sessions['sessions']:,} sessions)",
                     f"{sessions['kib_per_session']:.2f} KiB", "",
                     verdict("KiB per idle session", sessions["kib_per_session"], True)))
    return rows


_NAMES = {"raw": "plain UDP", "quic": "aioquic"}


def _bottleneck_text(point: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}" if value < 10 else f"{value:,.0f}"

    rt, rl = point["realtime_latency"], point["reliable_latency"]
    return (f"{point['realtime_mbit']:.1f} | {ms(rt['p50_ms'])}/{ms(rt['p99_ms'])} | "
            f"{ms(rl['p99_ms'])}")


def print_table(report: Report, out: Any = None) -> None:
    rows = summary(report)
    try:
        from rich.console import Console  # noqa: PLC0415 - optional extra
        from rich.table import Table  # noqa: PLC0415
    except ImportError:
        width = max((len(r[0]) for r in rows), default=10)
        for row in rows:
            print(f"{row[0]:<{width}}  {row[1]:>22}  {row[2]:>24}  {row[3]}", file=out)
    else:
        table = Table(title="intentra bench")
        for name in ("measure", "intentra", "baseline", "target"):
            table.add_column(name, justify="left" if name == "measure" else "right")
        for row in rows:
            table.add_row(*row)
        Console(file=out).print(table)
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
    others = any(k != "bottleneck" for k in results)
    rows = int(others) + int(bool(points))
    if rows == 0:
        return False
    fig, grid = plt.subplots(rows, 3, figsize=(16, 4.8 * rows), squeeze=False)
    if points:
        _plot_bottleneck(grid[-1], points, (results.get("bottleneck") or {}))
    if not others:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True
    sweep, ratio, bars = grid[0]
    for row in report.results.get("fan-in", []):
        label = row["kind"] if row["workers"] == 1 else f"{row['kind']} x{row['workers']}"
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
