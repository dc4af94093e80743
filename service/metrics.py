"""The engine's metrics in Prometheus' format (``/metrics`` of the operator service).

The counters and gauges are read, at each scrape, from the same counters the retained status
message publishes (one source: they cannot disagree); the histograms are observed by the
decision loop as it works (prometheus-client's histograms are safe across threads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "proximity_"
#: Fixes the engine set aside (not rejections: valid messages it did not use), by why.
SET_ASIDE = ("late", "duplicate", "implausible", "clock_ahead")

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000)


#: (metric, help, status field) of the counters and gauges read from the status counters.
_COUNTERS = (
    ("messages_received", "Messages taken from the broker and the HTTP input", "messages_received"),
    ("fixes_processed", "Fixes the engine used", "fixes_processed"),
    ("batches", "Batches decided", "batches"),
    ("sweeps", "Periodic sweeps decided", "sweeps"),
    ("alarm_messages", "Alarm messages published (every state change)", "alarms_published"),
    ("notices", "Notices published to offenders' devices", "notices_published"),
)
_GAUGES = (
    (
        "messages_undelivered",
        "Journalled messages the broker has not acknowledged",
        "messages_undelivered",
    ),
    ("open_alarms", "Alarms neither ended nor closed", "open_alarms"),
    (
        "alarms_unacknowledged",
        "Open alarms no operator has acknowledged since they opened or rose",
        "alarms_awaiting_operator",
    ),
    (
        "intake_unacknowledged",
        "Messages taken whose acknowledgement to the broker waits for their effect on disk",
        "intake_unacknowledged",
    ),
    ("queue_depth", "Messages waiting for the decision loop", "queue_depth"),
    ("last_fix_age_seconds", "Age of the newest fix taken", "last_fix_age_s"),
)


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        s = self._status()

        def counter(name: str, doc: str, value: object) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, doc, value=float(value or 0))  # type: ignore[arg-type]

        def gauge(name: str, doc: str, value: object) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=float(value or 0))  # type: ignore[arg-type]

        for name, doc, key in _COUNTERS[:3]:
            yield counter(name, doc, s.get(key))
        rejected = CounterMetricFamily(
            PREFIX + "messages_rejected", "Messages rejected, by reason code", labels=["reason"]
        )
        for reason, n in sorted((s.get("rejected") or {}).items()):
            rejected.add_metric([reason], float(n))
        yield rejected
        aside = CounterMetricFamily(
            PREFIX + "fixes_set_aside", "Valid fixes not used, by why", labels=["why"]
        )
        for why in SET_ASIDE:
            aside.add_metric([why], float(s.get(f"fixes_{why}") or 0))
        yield aside
        for name, doc, key in _COUNTERS[3:]:
            yield counter(name, doc, s.get(key))
        by = CounterMetricFamily(
            PREFIX + "alarm_messages_by_type",
            "Alarm messages published since the start, by type, level and state",
            labels=["type", "level", "state"],
        )
        for (t, lv, st), n in sorted((s.get("_by_type") or {}).items()):
            by.add_metric([t, lv, st], float(n))
        yield by
        for name, doc, key in _GAUGES:
            yield gauge(name, doc, s.get(key))
        yield gauge(
            "storage_fault",
            "1 while the disk refuses the engine's writes",
            1 if s.get("storage") == "fault" else 0,
        )


class Metrics:
    """The registry of one engine's metrics, and the histograms its loop observes."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StatusCollector(status))
        self.batch_size = Histogram(
            PREFIX + "batch_size_fixes",
            "Fixes per batch decided",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.decision_latency = Histogram(
            PREFIX + "decision_latency_seconds",
            "From a message's arrival to the decision it led to (alarm messages caused by a fix"
            " or event)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.publication_latency = Histogram(
            PREFIX + "fix_to_publication_seconds",
            "From a fix's arrival to the publication of the alarm message it caused",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)
