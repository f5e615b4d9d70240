"""Run protocol version 1's bench harness on any intentra tree (issue 8's comparison).

Version 2 changed the bench as well as the protocol, so the two versions are
compared on version 1's harness: the ``intentra.bench`` package of commit 2115d91
copied into a copy of the tree under test. Usage::

    git worktree add /tmp/v1 2115d91
    cp -r src /tmp/v2src && rm -rf /tmp/v2src/intentra/bench
    cp -r /tmp/v1/src/intentra/bench /tmp/v2src/intentra/
    PYTHONPATH=/tmp/v1/src  python tools/v1_harness.py fan-in,stream,handshakes,latency v1.json
    PYTHONPATH=/tmp/v2src   python tools/v1_harness.py fan-in,stream,handshakes,latency v2.json
    python tools/summarize.py v1.json; python tools/summarize.py v2.json

Add ``--quick`` for a smoke run. Only version 1's harness API is used here.
"""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    from intentra import bench  # noqa: PLC0415 - whichever tree PYTHONPATH names
    from intentra.bench import report  # noqa: PLC0415

    options: Any = getattr(bench, "Options")  # noqa: B009 - version 1's API, untyped here
    make = options.quick if "--quick" in sys.argv else options
    result = getattr(bench, "run")(make(scenarios=tuple(sys.argv[1].split(",")),  # noqa: B009
                                        workers=(1,), baselines=()))
    report.print_table(result)
    report.write_json(result, sys.argv[2])


if __name__ == "__main__":
    main()
