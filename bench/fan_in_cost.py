"""Server CPU per message in fan-in, at a fixed offered rate, for each way of reading.

The fan-in sweep of ``intentra bench`` finds the highest rate delivered at 99%,
which needs the cores to itself. This script asks a steadier question that a
busy machine still answers: at one rate every server keeps up with, how many
microseconds of CPU does the server process spend per message when its
application reads with ``receive()``, with ``receive_many()``, or not at all
(``serve --sink``), beside the plain-UDP ``recvfrom`` loop? The same bench
processes as ``intentra bench fan-in`` (1,000 peers, presealed datagrams in GSO
batches); the servers interleaved, several rounds, the median printed, with
each side's share of a core and the machine's busy cores. Usage:

    python bench/fan_in_cost.py [--rate 20000] [--seconds 3] [--rounds 3] [--peers 1000]
                                [--readers receive,receive_many,sink,raw] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from intentra.bench import Stack, measure_step, start_servers


def one(reader: str, args: argparse.Namespace) -> dict[str, Any]:
    kind = "raw" if reader == "raw" else "intentra"
    with Stack() as stack:
        servers, target, key = start_servers(stack, kind, 1, sink=reader == "sink",
                                             reader="receive" if kind == "raw" else reader)
        generator, _ = stack.start(f"{kind}-generator", {
            "target": target, "server_key": key, "peers": args.peers, "size": args.size,
            "segments": args.segments})
        measure_step(servers, generator, args.rate, 1.0)  # warm-up: caches, allocator
        step = measure_step(servers, generator, args.rate, args.seconds)
    delivered = step["delivered_rate"]
    step["server_us_per_message"] = 1e6 * step["server_cpu"] / delivered if delivered else None
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20_000.0, help="offered msg/s")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument("--readers", default="receive,receive_many,sink,raw")
    parser.add_argument("--json", help="write every step here")
    args = parser.parse_args()
    readers = args.readers.split(",")
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in readers}
    for round_ in range(args.rounds):  # interleaved: a burst of other load hits all alike
        for reader in readers:
            step = one(reader, args)
            runs[reader].append(step)
            print(f"round {round_ + 1} {reader:12} delivered {step['ratio']:.2%}, server "
                  f"{step['server_us_per_message'] or 0:.2f} us/msg (CPU {step['server_cpu']:.2f},"
                  f" waited {step['server_wait']:.2f}), generator {step['generator_cpu']:.2f}, "
                  f"machine {step['machine_cpu']:.2f}", flush=True)
    print(f"median of {args.rounds} rounds at {args.rate:,.0f} msg/s offered, {args.peers} peers:")
    for reader, steps in runs.items():
        def med(name: str, steps: list[dict[str, Any]] = steps) -> float:
            return statistics.median(s[name] or 0.0 for s in steps)
        print(f"  {reader:12} server {med('server_us_per_message'):6.2f} us/msg, CPU "
              f"{med('server_cpu'):.2f} (waited {med('server_wait'):.2f}); generator "
              f"{med('generator_cpu'):.2f}; machine {med('machine_cpu'):.2f}; "
              f"delivered {med('ratio'):.2%}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"options": vars(args), "runs": runs}, out, indent=2)


if __name__ == "__main__":
    main()
