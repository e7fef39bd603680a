"""Prometheus metrics of one server, read at scrape time from plain counters.

Theory of operation
-------------------
Counting must cost the hot path nothing it would notice: a message in or out is one
``+= 1`` on an int attribute of its :class:`~antiphon.engine.session.Session` (bytes: of
its wire), with no lock, no label lookup and no call. Everything else is counted once
per connection (a handshake's result, a close code) in plain dicts on
:class:`ServerCounters`. When a session ends its counts are added to the server's
totals; a scrape adds the live sessions' counts to those totals, so every counter is
monotonic and exact at the moment of the scrape.

:class:`ServerCollector` is a ``prometheus_client`` custom collector that builds the
metric families from those numbers when scraped. It is owned by the server, registered
in the server's own :class:`~prometheus_client.CollectorRegistry` (never the global
one), so two servers in one process - or one test after another - never share a
number. A face adds its own collector to that registry (the chat gateway's turns and
store latency: :class:`LatencyHistogram` is the histogram they use).

Labels carry no secret and no message text: ``face`` (one of the faces' names),
``result`` (``accepted``, an HTTP status, ``timeout``, ``invalid``, ``tls``), ``code``
(a close code antiphon knows, or ``other``, so a peer cannot mint label values).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from antiphon.proto.close import CloseCode

if TYPE_CHECKING:
    from antiphon.engine.session import Session

__all__ = [
    "HEALTH_PATH",
    "LATENCY_BUCKETS_S",
    "METRICS_CONTENT_TYPE",
    "METRICS_PATH",
    "LatencyHistogram",
    "ServerCollector",
    "ServerCounters",
    "close_code_label",
    "histogram_family",
    "new_registry",
    "render",
]

HEALTH_PATH: Final = "/healthz"
"""A plain ``GET`` here answers 200 while the server accepts connections, 503 while it drains."""
METRICS_PATH: Final = "/metrics"
"""A plain ``GET`` here answers the Prometheus text format (unless metrics are turned off)."""
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of what :func:`prometheus_client.generate_latest` writes."""

LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram bounds in seconds: a store commit (milliseconds) to a long agent turn (a minute)."""

_KNOWN_CODES: Final = frozenset(int(c) for c in CloseCode)


def close_code_label(code: int | None) -> str:
    """A close code as a label value: antiphon's codes by number, anything else ``other`` (bounded)."""
    if code is None:
        return str(int(CloseCode.ABNORMAL))
    return str(code) if code in _KNOWN_CODES else "other"


class LatencyHistogram:
    """A histogram of durations, in seconds: a bisect and two additions per observation, no lock."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        self.buckets = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus' cumulative buckets, ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*(repr(b) for b in self.bounds), "+Inf"), self.buckets, strict=True):
            running += n
            out.append((bound, running))
        return out


class ServerCounters:
    """What a :class:`~antiphon.engine.server.SessionServer` counts; see the module docstring."""

    def __init__(self) -> None:
        self.handshakes: dict[str, int] = {}
        """Handshakes by result: ``accepted``, an HTTP status (``"401"``), ``timeout``, ``invalid``, ``tls``."""
        self.closes: dict[str, int] = {}
        """Ended sessions by close code label (:func:`close_code_label`)."""
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        """Totals of the sessions that have ended; live sessions are added at scrape time."""

    def handshake(self, result: str) -> None:
        """Count one handshake's result."""
        self.handshakes[result] = self.handshakes.get(result, 0) + 1

    def session_ended(self, session: Session) -> None:
        """Fold an ended session's counts into the totals."""
        self.messages_in += session.messages_in
        self.messages_out += session.messages_out
        self.bytes_in += session.wire.bytes_in
        self.bytes_out += session.wire.bytes_out
        label = close_code_label(session.close_code)
        self.closes[label] = self.closes.get(label, 0) + 1


class ServerCollector:
    """The custom collector of one server: families built from its counters and live sessions at scrape time."""

    def __init__(
        self,
        face: str,
        counters: ServerCounters,
        sessions: Callable[[], Iterable[Session]],
        connections: Callable[[], int],
    ) -> None:
        self.face = face
        self.counters = counters
        self._sessions = sessions
        self._connections = connections

    def collect(self) -> Iterator[Metric]:
        """The families, per the Prometheus custom-collector protocol."""
        face, c = self.face, self.counters
        live = list(self._sessions())
        m_in, m_out, b_in, b_out, buffered = c.messages_in, c.messages_out, c.bytes_in, c.bytes_out, 0
        for s in live:
            m_in += s.messages_in
            m_out += s.messages_out
            wire = s.wire
            b_in += wire.bytes_in
            b_out += wire.bytes_out
            buffered += wire.buffered

        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        for kind, name, documentation, number in (
            (
                gauge,
                "antiphon_connections",
                "Connections being handled (handshaking or in a session).",
                self._connections(),
            ),
            (gauge, "antiphon_sessions", "Open WebSocket sessions.", len(live)),
            (counter, "antiphon_messages_received", "Whole messages received from peers.", m_in),
            (counter, "antiphon_messages_sent", "Messages sent to peers.", m_out),
            (counter, "antiphon_received_bytes", "Bytes sessions read, opening handshake and framing included.", b_in),
            (counter, "antiphon_sent_bytes", "Bytes sessions wrote, opening handshake and framing included.", b_out),
            (gauge, "antiphon_send_buffer_bytes", "Bytes buffered for peers that have not taken them yet.", buffered),
        ):
            family = kind(name, documentation, labels=["face"])
            family.add_metric([face], number)
            yield family
        handshakes = CounterMetricFamily(
            "antiphon_handshakes", "Opening handshakes by result.", labels=["face", "result"]
        )
        for result, n in sorted(c.handshakes.items()):
            handshakes.add_metric([face, result], n)
        yield handshakes
        closes = CounterMetricFamily("antiphon_closes", "Ended sessions by close code.", labels=["face", "code"])
        for code, n in sorted(c.closes.items()):
            closes.add_metric([face, code], n)
        yield closes


def histogram_family(
    name: str, documentation: str, label: str, histograms: dict[str, LatencyHistogram]
) -> HistogramMetricFamily:
    """A histogram family with one label, from :class:`LatencyHistogram` objects by label value."""
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, h in sorted(histograms.items()):
        family.add_metric([value], h.cumulative(), h.sum)
    return family


def new_registry() -> CollectorRegistry:
    """A registry of one's own, with this process' CPU, memory, file descriptors and GC collections."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (:data:`METRICS_CONTENT_TYPE`)."""
    return generate_latest(registry)
