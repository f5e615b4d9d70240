"""How bench processes talk to the runner: one JSON object per line.

A role process reads commands on stdin and writes replies on stdout, one JSON
object per line each way. Nothing else may be printed to stdout by a role.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

Json = dict[str, Any]


class RoleError(RuntimeError):
    """A bench role process failed or answered nonsense."""


class Role:
    """A role running in its own process (``python -m intentra.bench.roles ROLE``).

    ``module`` is the module run as ``-m`` (another family of roles speaking this
    protocol, e.g. :mod:`intentra.testing.bottleneck_run`); ``wrap`` prefixes the
    command line (``Bottleneck.command``: run it inside a network namespace).
    """

    def __init__(self, role: str, args: Json, *, cpu: int | None = None,
                 pass_fds: tuple[int, ...] = (), module: str = "intentra.bench.roles",
                 wrap: Callable[..., list[str]] | None = None) -> None:
        self.name = role
        cmd = [sys.executable, "-m", module, role, json.dumps(args)]
        if wrap is not None:
            cmd = wrap(*cmd)
        if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
            cmd = ["taskset", "-c", str(cpu), *cmd] if _have_taskset() else cmd
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, pass_fds=pass_fds)
        self._buffer = ""

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RoleError(f"{self.name} exited: {self._stderr()}") from None

    def read(self, timeout: float = 60.0) -> Json:
        """The next reply; raises RoleError on exit, an ``error`` reply or timeout."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RoleError(f"{self.name}: no answer within {timeout:.0f} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if not ready:
                if self.proc.poll() is not None:
                    raise RoleError(f"{self.name} exited ({self.proc.returncode}): "
                                    f"{self._stderr()}")
                continue
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(5)
                raise RoleError(f"{self.name} exited ({self.proc.returncode}): {self._stderr()}")
            reply: Json = json.loads(line)
            if "error" in reply:
                raise RoleError(f"{self.name}: {reply['error']}")
            return reply

    def ask(self, timeout: float = 60.0, **command: Any) -> Json:
        self.send(**command)
        return self.read(timeout)

    def _stderr(self) -> str:
        if self.proc.stderr is None:
            return ""
        if self.proc.poll() is None:
            return ""
        text = self.proc.stderr.read().strip().splitlines()
        return text[-1] if text else "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(timeout)
            except (RoleError, subprocess.TimeoutExpired):
                self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _have_taskset() -> bool:
    return any(os.access(os.path.join(d, "taskset"), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep))


def reply(**fields: Any) -> None:
    """Write one reply line (role side)."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
