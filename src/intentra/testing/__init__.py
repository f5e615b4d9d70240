"""Test tooling for intentra and any UDP application.

:class:`UdpProxy` is a fault-injection UDP proxy (loss, duplication, reordering,
delay, jitter, truncation, corruption, blackholes) over real sockets, with
deterministic, seeded faults. See :mod:`intentra.testing.faultproxy`.

:mod:`intentra.testing.bottleneck` makes a real slow link (a network namespace
whose loopback is limited by tbf; root only) and
:mod:`intentra.testing.bottleneck_run` runs and measures endpoints through it.
They are not imported here: import them by name.
"""

from intentra.testing.faultproxy import Faults, UdpProxy, parse_duration

__all__ = ["Faults", "UdpProxy", "parse_duration"]
