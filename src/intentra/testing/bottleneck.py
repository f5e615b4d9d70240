"""A real bottleneck link: a private network namespace whose loopback is rate-limited.

:class:`Bottleneck` owns one network namespace from creation to deletion: it
makes a uniquely named namespace (``ip netns add``), brings its ``lo`` up, puts a
token bucket filter on it (``tc qdisc add dev lo root tbf rate R burst 20kb
latency 300ms``), changes the rate mid-run on request (``tc qdisc change``) and
deletes the namespace when it is closed, also when the code inside the ``with``
block raised, and at interpreter exit as a last resort. Processes started with
:meth:`Bottleneck.command` run inside the namespace; their traffic to 127.0.0.1
crosses the limited ``lo`` (both directions share its egress queue, as DATA and
ACKs share a real access link's queue in the direction of the data)::

    with Bottleneck.create(rate_mbit=10) as link:
        subprocess.run(link.command(sys.executable, "-m", "intentra.testing.bottleneck_run"))
        link.set_rate(3)

It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's ``ip`` and ``tc``
with the ``tbf`` qdisc; :func:`unavailable_reason` tries to create one and says
why it cannot. ``netem`` is deliberately not used (not available on the kernels
this is tested on).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import subprocess
from types import TracebackType

__all__ = ["BURST", "LATENCY", "Bottleneck", "BottleneckError", "unavailable_reason"]

BURST = "20kb"
"""tbf bucket depth: a burst the link passes at line speed."""
LATENCY = "300ms"
"""tbf queue bound, as the longest a packet may wait in it (the rest are dropped)."""
PREFIX = "intentra-bn"
_TIMEOUT = 10.0
_counter = itertools.count()
_live: set[str] = set()


class BottleneckError(RuntimeError):
    """A namespace or qdisc could not be made, changed or deleted (the reason is included)."""


def _run(*args: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True,  # noqa: S603 - fixed tools
                              timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise BottleneckError(f"{args[0]!r} not found: install iproute2") from None
    except subprocess.TimeoutExpired:
        raise BottleneckError(f"{' '.join(args)!r} did not finish in {_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise BottleneckError(f"{' '.join(args)!r} failed: {detail}")
    return done.stdout


def _delete(name: str) -> None:
    if name in _live:
        _live.discard(name)
        _run("ip", "netns", "del", name)


@atexit.register
def _delete_leftovers() -> None:
    for name in list(_live):
        with contextlib.suppress(BottleneckError):
            _delete(name)


def _rate(mbit: float) -> str:
    if not mbit > 0:
        raise BottleneckError(f"link rate must be > 0 Mbit/s, got {mbit!r}")
    return f"{round(mbit * 1000)}kbit"


class Bottleneck:
    """One private network namespace with a rate-limited loopback. Make with :meth:`create`."""

    def __init__(self, name: str, rate_mbit: float) -> None:
        self.name = name
        self.rate_mbit = rate_mbit

    @classmethod
    def create(cls, rate_mbit: float = 10.0) -> Bottleneck:
        """A new namespace ``intentra-bn-PID-N`` with ``lo`` up and tbf at ``rate_mbit``.

        Raises:
            BottleneckError: not root, no ``ip``/``tc``, or the kernel refused
                (the namespace is deleted again if it was half made).
        """
        rate = _rate(rate_mbit)
        name = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        _run("ip", "netns", "add", name)
        _live.add(name)
        link = cls(name, rate_mbit)
        try:
            _run("ip", "-n", name, "link", "set", "lo", "up")
            link._tc("add", rate)
        except BaseException:
            _delete(name)
            raise
        return link

    def _tc(self, verb: str, rate: str) -> None:
        _run("ip", "netns", "exec", self.name, "tc", "qdisc", verb, "dev", "lo", "root", "tbf",
             "rate", rate, "burst", BURST, "latency", LATENCY)

    def set_rate(self, rate_mbit: float) -> None:
        """Change the link's rate now (``tc qdisc change``); queued packets stay queued."""
        self._tc("change", _rate(rate_mbit))
        self.rate_mbit = rate_mbit

    def qdisc_stats(self) -> str:
        """``tc -s qdisc show dev lo`` in the namespace: bytes sent, drops, overlimits."""
        return _run("ip", "netns", "exec", self.name, "tc", "-s", "qdisc", "show", "dev", "lo")

    def command(self, *argv: str) -> list[str]:
        """``argv`` prefixed to run inside the namespace (``ip netns exec NAME ...``)."""
        return ["ip", "netns", "exec", self.name, *argv]

    @property
    def alive(self) -> bool:
        return self.name in _live

    def close(self) -> None:
        """Delete the namespace (idempotent). Processes still inside keep running but lose
        their link, so stop them first."""
        _delete(self.name)

    def __enter__(self) -> Bottleneck:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Bottleneck({self.name!r}, {self.rate_mbit:g} Mbit/s)"


def unavailable_reason() -> str | None:
    """None if a bottleneck can be made here, else why not (one probe namespace is made and
    deleted: being root is not enough inside some containers)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add) and qdiscs"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs iproute2's {tool!r} on PATH"
    try:
        Bottleneck.create(10.0).close()
    except BottleneckError as exc:
        return f"cannot create a namespace with a tbf qdisc: {exc}"
    return None
