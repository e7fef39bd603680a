"""The chat gateway's own metrics: turns by status, turn latency, transcript store latency.

Counted once per turn and once per store write - never per frame - in plain attributes
of a :class:`ChatMetrics` that the gateway owns, and turned into Prometheus families at
scrape time by :meth:`ChatMetrics.collect` (registered in the gateway's own registry
next to the engine's, see :mod:`antiphon.engine.metrics`). Labels are bounded: a turn's
status (``completed``, ``cancelled``, ``failed``) and a store operation's name. Durations
are real time (``time.perf_counter``, half the cost of Trio's clock, and what an operator
means by latency even under a test clock).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from antiphon.engine.metrics import LatencyHistogram, histogram_family
from antiphon.proto.chat.messages import TurnStatus

__all__ = ["ChatMetrics"]


class ChatMetrics:
    """Turn and store numbers of one gateway; a ``prometheus_client`` custom collector."""

    def __init__(self) -> None:
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        """Finished turns by final status (plain attributes: a turn is as frequent as a message)."""
        self.turn_latency = LatencyHistogram()
        """Seconds from a turn's start (its agent called) to its final event, for turns that ran."""
        self.store_latency: dict[str, LatencyHistogram] = {}
        """Seconds a store operation took as the gateway waited for it (group commit included), by operation."""

    def turn_ended(self, status: TurnStatus, ran_s: float | None) -> None:
        """Count a finished turn; ``ran_s`` is None for a turn that was cancelled before it started."""
        if status is TurnStatus.COMPLETED:
            self.completed += 1
        elif status is TurnStatus.CANCELLED:
            self.cancelled += 1
        else:
            self.failed += 1
        if ran_s is not None:
            self.turn_latency.observe(ran_s)

    def store_op(self, op: str, seconds: float) -> None:
        """Count one store operation that took ``seconds`` (successful or not)."""
        histogram = self.store_latency.get(op)
        if histogram is None:
            histogram = self.store_latency[op] = LatencyHistogram()
        histogram.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        """The families, per the Prometheus custom-collector protocol."""
        turns = CounterMetricFamily("antiphon_chat_turns", "Finished chat turns by final status.", labels=["status"])
        for status, n in (("cancelled", self.cancelled), ("completed", self.completed), ("failed", self.failed)):
            turns.add_metric([status], n)
        yield turns
        latency = HistogramMetricFamily(
            "antiphon_chat_turn_duration_seconds", "Seconds from a turn's start to its final event."
        )
        latency.add_metric([], self.turn_latency.cumulative(), self.turn_latency.sum)
        yield latency
        yield histogram_family(
            "antiphon_chat_store_duration_seconds",
            "Seconds the gateway waited for a transcript store operation.",
            "op",
            self.store_latency,
        )
