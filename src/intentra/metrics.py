"""Prometheus metrics (docs/protocol.md section 11), read from the core's plain counters.

One registry per Transport; nothing is counted through prometheus_client on
the hot path: the collector reads :class:`intentra.core.stats.Stats` when
scraped.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from intentra.bus import Bridge
    from intentra.core.endpoint import Endpoint

# (metric name without _total, help, Stats field)
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("intentra_packets_received", "Datagrams received", "packets_received"),
    ("intentra_packets_sent", "Datagrams sent", "packets_sent"),
    ("intentra_packets_dropped_malformed", "Datagrams failing the header checks",
     "packets_dropped_malformed"),
    ("intentra_packets_dropped_unknown", "Datagrams for no session able to take them",
     "packets_dropped_unknown"),
    ("intentra_packets_dropped_rate_limit", "Datagrams refused by a session's token bucket",
     "packets_dropped_rate_limit"),
    ("intentra_packets_dropped_crypto", "Datagrams that failed to authenticate",
     "packets_dropped_crypto"),
    ("intentra_replay_rejections", "Packet numbers already seen or below the window",
     "replay_rejections"),
    ("intentra_handshakes_completed", "Handshakes completed", "handshakes_completed"),
    ("intentra_handshakes_rejected", "Handshakes refused by limits or authorisation",
     "handshakes_rejected"),
    ("intentra_handshakes_failed", "Handshakes this endpoint started that timed out",
     "handshakes_failed"),
    ("intentra_cookie_replies", "COOKIE replies sent", "cookie_replies"),
    ("intentra_strike_events", "Authenticated protocol violations", "strike_events"),
    ("intentra_connection_closes", "Established sessions closed", "connection_closes"),
    ("intentra_retransmissions", "Reliable messages retransmitted", "retransmissions"),
    ("intentra_messages_dropped_deadline", "REALTIME messages dropped past their deadline",
     "messages_dropped_deadline"),
    ("intentra_messages_dropped_queue_full", "REALTIME messages dropped on a full send queue",
     "messages_dropped_queue_full"),
    ("intentra_messages_dropped_reorder_full",
     "Out-of-order reliable messages dropped on a full reorder buffer",
     "messages_dropped_reorder_full"),
    ("intentra_roams", "Sessions that moved to a new peer address", "roams"),
    ("intentra_messages_dropped_congestion",
     "REALTIME messages dropped at the sender: the path could not take them in time",
     "messages_dropped_congestion"),
    ("intentra_messages_dropped_receive_queue",
     "REALTIME messages dropped because the application did not read them",
     "messages_dropped_receive_queue"),
    ("intentra_messages_dropped_reassembly",
     "Partial REALTIME messages discarded: late, or over the reassembly memory bounds",
     "messages_dropped_reassembly"),
)

#: Upper bounds of the smoothed-RTT histogram, seconds.
RTT_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                  0.25, 0.5, 1.0, 2.5)


class EndpointCollector(Collector):
    """Reads an Endpoint's counters and gauges at scrape time."""

    def __init__(self, endpoint: Endpoint,
                 extra: Callable[[], dict[str, tuple[str, int]]] | None = None,
                 info: Callable[[], dict[str, tuple[str, dict[str, str]]]] | None = None
                 ) -> None:
        self._endpoint = endpoint
        self._extra = extra
        self._info = info

    def collect(self) -> Iterator[Metric]:
        ep = self._endpoint
        stats = ep.stats
        for name, doc, field in _COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(stats, field))
        delivered = CounterMetricFamily("intentra_messages_delivered",
                                        "Messages delivered to the application", labels=["intent"])
        delivered.add_metric(["reliable"], stats.messages_delivered_reliable)
        delivered.add_metric(["realtime"], stats.messages_delivered_realtime)
        yield delivered
        sent = CounterMetricFamily("intentra_messages_sent", "Messages sent (first transmission)",
                                   labels=["intent"])
        sent.add_metric(["reliable"], stats.messages_sent_reliable)
        sent.add_metric(["realtime"], stats.messages_sent_realtime)
        yield sent
        updates = CounterMetricFamily("intentra_key_updates", "Key updates", labels=["direction"])
        updates.add_metric(["send"], stats.key_updates_send)
        updates.add_metric(["receive"], stats.key_updates_receive)
        yield updates
        yield GaugeMetricFamily("intentra_handshake_in_flight",
                                "Pending (cookie-verified) handshakes",
                                value=ep.handshakes_in_flight)
        yield GaugeMetricFamily("intentra_connections_active", "Established sessions",
                                value=ep.connections_active)
        yield GaugeMetricFamily("intentra_reorder_buffer_bytes",
                                "Out-of-order reliable bytes held", value=ep.reorder_buffer_bytes)
        yield self._rtt_histogram()
        if self._extra is not None:
            for name, (doc, value) in self._extra().items():
                yield CounterMetricFamily(name, doc, value=value)
        if self._info is not None:
            for name, (doc, labels) in self._info().items():
                yield InfoMetricFamily(name, doc, value=labels)


    def _rtt_histogram(self) -> Metric:
        """Smoothed RTT of every established session, one histogram: no per-peer series."""
        counts = [0] * len(RTT_BUCKETS)
        total = 0.0
        n = 0
        for session in list(self._endpoint.sessions.values()):
            srtt = session.rtt.srtt
            if srtt is None or session.recovery is None:
                continue
            n += 1
            total += srtt
            for i, bound in enumerate(RTT_BUCKETS):
                if srtt <= bound:
                    counts[i] += 1
                    break
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(RTT_BUCKETS, counts, strict=True):
            running += count
            buckets.append((repr(bound), running))
        buckets.append(("+Inf", n))
        return HistogramMetricFamily(
            "intentra_session_smoothed_rtt_seconds",
            "Smoothed RTT of the established sessions (one sample per session per scrape)",
            buckets=buckets, sum_value=total)


class BusCollector(Collector):
    """Reads a :class:`intentra.bus.Bridge`'s counters at scrape time (docs/scaling.md)."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def collect(self) -> Iterator[Metric]:
        bridge = self._bridge
        stats = bridge.stats
        names = ("reliable", "realtime")  # by intent value
        published = CounterMetricFamily(
            "intentra_bus_published", "Messages of this hub's peers put on the bus (RELIABLE: "
            "stored by the stream)", labels=["intent"])
        received = CounterMetricFamily(
            "intentra_bus_received", "Messages from other hubs fanned out to this hub's peers",
            labels=["intent"])
        for value, name in enumerate(names):
            published.add_metric([name], stats.published[value])
            received.add_metric([name], stats.received[value])
        yield published
        yield received
        dropped = CounterMetricFamily(
            "intentra_bus_dropped", "Messages dropped on the way through the bus, by cause",
            labels=["intent", "cause"])
        for (intent, cause), count in sorted(stats.dropped.items()):
            dropped.add_metric([intent, cause], count)
        yield dropped
        yield CounterMetricFamily("intentra_bus_duplicates",
                                  "RELIABLE messages the stream delivered again, dropped by seq",
                                  value=stats.duplicates)
        yield CounterMetricFamily("intentra_bus_retransmissions",
                                  "RELIABLE publishes sent again (no stream acknowledgement)",
                                  value=stats.retransmissions)
        yield CounterMetricFamily("intentra_bus_reconnects",
                                  "Times the NATS connection was re-established",
                                  value=stats.reconnects)
        yield GaugeMetricFamily("intentra_bus_connected", "1 while connected to NATS, else 0",
                                value=1 if bridge.connected else 0)
        yield GaugeMetricFamily("intentra_bus_hubs", "Other hubs heard from recently",
                                value=bridge.hubs)
        yield GaugeMetricFamily("intentra_bus_reliable_backlog",
                                "RELIABLE messages not yet stored by the stream",
                                value=bridge.backlog)
        if stats.rtt is not None:
            yield GaugeMetricFamily("intentra_bus_rtt_seconds",
                                    "Round trip to the NATS server (PING to PONG), last measured",
                                    value=stats.rtt)
        from intentra.bus import ACK_BUCKETS  # noqa: PLC0415

        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(ACK_BUCKETS, stats.ack_buckets, strict=True):
            running += count
            buckets.append((repr(bound), running))
        buckets.append(("+Inf", stats.ack_count))
        yield HistogramMetricFamily(
            "intentra_bus_reliable_ack_seconds",
            "RELIABLE publish to the stream's acknowledgement (stored on its replicas)",
            buckets=buckets, sum_value=stats.ack_sum)


def make_registry(endpoint: Endpoint,
                  extra: Callable[[], dict[str, tuple[str, int]]] | None = None,
                  info: Callable[[], dict[str, tuple[str, dict[str, str]]]] | None = None
                  ) -> CollectorRegistry:
    """A registry reading ``endpoint``; ``extra`` adds counters, ``info`` info metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EndpointCollector(endpoint, extra, info))
    return registry


def render(registry: CollectorRegistry) -> str:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry).decode("utf-8")


class _MetricsHandler(BaseHTTPRequestHandler):
    """``GET /metrics`` (query string ignored): the exposition; any other path: 404."""

    registry: CollectorRegistry  # set on the subclass made per server

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if path != "/metrics":
            payload = b"not found: the metrics are at /metrics\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        else:
            payload = generate_latest(self.registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a scrape every few seconds must not fill stderr."""


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True


def serve_http(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve ``/metrics`` on a background thread; returns the server (``.shutdown()``).

    Every other path answers 404 (a probe of ``/`` must not look like a metrics page).
    """
    handler = type("Handler", (_MetricsHandler,), {"registry": registry})
    server_class = type("Server", (_MetricsServer,), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    server = server_class((host, port), handler)
    threading.Thread(target=server.serve_forever, name="intentra-metrics",
                     daemon=True).start()
    return server
