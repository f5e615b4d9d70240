"""Test tooling for intentra and any UDP application.

:class:`UdpProxy` is a fault-injection UDP proxy (loss, duplication, reordering,
delay, jitter, truncation, corruption, blackholes) over real sockets, with
deterministic, seeded faults. See :mod:`intentra.testing.netem`.
"""

from intentra.testing.netem import Faults, UdpProxy, parse_duration

__all__ = ["Faults", "UdpProxy", "parse_duration"]
