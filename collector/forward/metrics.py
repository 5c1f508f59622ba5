"""Forwarding metrics, one set for all targets (label ``target``); queue gauges read at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from collector.forward.spool import Totals


class ForwardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sent_samples = Counter(
            "backhaul_collector_forward_sent_samples", "Samples a target acknowledged (2xx)", ["target"], registry=r
        )
        self.sent_requests = Counter(
            "backhaul_collector_forward_sent_requests",
            "Remote-write requests a target acknowledged",
            ["target"],
            registry=r,
        )
        self.sent_bytes = Counter(
            "backhaul_collector_forward_sent_bytes",
            "Remote-write body bytes a target acknowledged",
            ["target"],
            registry=r,
        )
        self.failures = Counter(
            "backhaul_collector_forward_failures",
            "Failed attempts that will be retried (timeout, connection, http_5xx, http_429, auth ...), by reason",
            ["target", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            "backhaul_collector_forward_rejected_samples",
            "Samples a target refused for good with a 4xx (out_of_bounds, too_old, ...): kept in the collector's"
            " store, not retried",
            ["target", "reason"],
            registry=r,
        )
        self.dropped = Counter(
            "backhaul_collector_forward_dropped_samples",
            "Samples taken out of the forward spool unsent (spool_full: over spool_max_bytes)",
            ["target", "reason"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "backhaul_collector_forward_request_duration_seconds",
            "Duration of remote-write requests to a target",
            ["target"],
            registry=r,
        )


class QueueCollector(Collector):
    """The spools' backlog: entries, bytes, samples and the age of the oldest entry, per target."""

    def __init__(self, spools: Callable[[], dict[str, Totals]], clock: Callable[[], float] = time.time) -> None:
        self._spools = spools
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        entries = GaugeMetricFamily(
            "backhaul_collector_forward_queued_entries", "Stored requests not yet forwarded", labels=["target"]
        )
        size = GaugeMetricFamily(
            "backhaul_collector_forward_queued_bytes", "Bytes of stored requests not yet forwarded", labels=["target"]
        )
        samples = GaugeMetricFamily(
            "backhaul_collector_forward_queued_samples", "Samples not yet forwarded", labels=["target"]
        )
        age = GaugeMetricFamily(
            "backhaul_collector_forward_oldest_queued_age_seconds",
            "How long the oldest entry not yet forwarded has waited (0 when none)",
            labels=["target"],
        )
        now_ms = self._clock() * 1000
        for target, t in self._spools().items():
            entries.add_metric([target], t.entries)
            size.add_metric([target], t.bytes)
            samples.add_metric([target], t.samples)
            age.add_metric([target], 0.0 if t.oldest_ms is None else max(0.0, (now_ms - t.oldest_ms) / 1000))
        yield from (entries, size, samples, age)
