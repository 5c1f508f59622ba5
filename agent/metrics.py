"""The agent's own metrics (``backhaul_*``), created against a registry passed in (tests pass a fresh one)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from agent.buffer.store import Totals


class AgentMetrics:
    """Every metric the agent exports, grouped by the component that moves it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.info = Info("backhaul_agent", "Agent version and identity", registry=r)
        # ingest
        self.requests = Counter(
            "backhaul_ingest_requests", "Remote-write requests answered, by HTTP status", ["code"], registry=r
        )
        self.samples_ingested = Counter(
            "backhaul_ingest_samples", "Samples committed to the buffer and acknowledged", registry=r
        )
        self.samples_dropped = Counter(
            "backhaul_ingest_dropped_samples",
            "Samples refused at ingest (kept out of the buffer), by reason",
            ["reason"],
            registry=r,
        )
        self.metadata_received = Counter(
            "backhaul_ingest_metadata", "Metric metadata entries received (accepted, not stored)", registry=r
        )
        # buffer
        self.commits = Counter("backhaul_buffer_commits", "Group commits to the buffer", registry=r)
        self.commit_seconds = Histogram(
            "backhaul_buffer_commit_duration_seconds",
            "Time to encode and durably commit one group of requests",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.commit_failures = Counter(
            "backhaul_buffer_commit_failures", "Group commits that failed (senders got 503)", registry=r
        )
        self.evicted = Counter(
            "backhaul_buffer_evicted_samples",
            "Samples evicted (oldest first) to keep the buffer within its byte budget",
            registry=r,
        )
        self.expired = Counter(
            "backhaul_buffer_expired_samples", "Samples dropped for being older than buffer.max_age", registry=r
        )
        self.compacted = Counter(
            "backhaul_buffer_compacted_chunks", "Small chunks merged away by compaction", registry=r
        )
        self.buffer_bytes = Gauge("backhaul_buffer_bytes", "Compressed bytes of buffered chunks", registry=r)
        self.buffer_chunks = Gauge("backhaul_buffer_chunks", "Chunks in the buffer", registry=r)
        self.buffer_samples = Gauge(
            "backhaul_buffer_samples", "Samples in the buffer (not yet acknowledged)", registry=r
        )
        self.budget = Gauge("backhaul_buffer_budget_bytes", "The buffer's byte budget", registry=r)
        self.disk_free = Gauge(
            "backhaul_buffer_filesystem_free_bytes", "Free space on the buffer's filesystem", registry=r
        )
        self.disk_floor = Gauge(
            "backhaul_buffer_filesystem_floor_bytes", "Free space the buffer leaves alone (min_free_bytes)", registry=r
        )
        self.oldest_age = Gauge(
            "backhaul_buffer_oldest_unsent_sample_age_seconds",
            "Age of the oldest sample not yet acknowledged by the collector (0 when empty)",
            registry=r,
        )
        # uplink
        self.batches = Counter("backhaul_uplink_batches", "Batch upload attempts, by outcome", ["outcome"], registry=r)
        self.uploaded_samples = Counter("backhaul_uplink_samples", "Samples acknowledged by the collector", registry=r)
        self.uploaded_bytes = Counter(
            "backhaul_uplink_bytes", "Batch body bytes acknowledged by the collector", registry=r
        )
        self.upload_failures = Counter(
            "backhaul_uplink_failures", "Failed upload attempts, by reason", ["reason"], registry=r
        )
        self.rejected = Counter(
            "backhaul_uplink_rejected_samples",
            "Samples dropped because the collector refused them as malformed (4xx)",
            registry=r,
        )
        self.last_success = Gauge(
            "backhaul_uplink_last_success_timestamp_seconds",
            "When the collector last acknowledged a batch",
            registry=r,
        )
        self.clock_skew = Gauge(
            "backhaul_uplink_clock_skew_seconds",
            "Agent clock minus the collector's Date header at the last reply (1 s resolution)",
            registry=r,
        )
        self.upload_seconds = Histogram(
            "backhaul_uplink_request_duration_seconds", "Duration of batch upload requests", registry=r
        )

        # alerts (their own lane: see agent/alerts/)
        self.alerts_sent = Counter(
            "backhaul_alerts_sent", "Alert messages acknowledged, by channel", ["channel"], registry=r
        )
        self.alert_failures = Counter(
            "backhaul_alerts_failures",
            "Alert delivery attempts that failed, by channel and reason",
            ["channel", "reason"],
            registry=r,
        )
        self.alerts_dropped = Counter(
            "backhaul_alerts_dropped",
            "Alert messages given up: queue_full (oldest resolved/low severity first) or refused as malformed",
            ["reason"],
            registry=r,
        )
        self.alerts_queued = Gauge(
            "backhaul_alerts_queued", "Alert messages waiting for an acknowledgement", registry=r
        )
        self.alerts_firing = Gauge("backhaul_alerts_firing", "Alert instances firing now", registry=r)
        self.alert_transitions = Counter(
            "backhaul_alerts_transitions", "Alert messages queued, by state (firing, resolved)", ["state"], registry=r
        )
        self.alert_ignored_series = Gauge(
            "backhaul_alerts_ignored_series",
            "Series a rule did not track because it already tracks alerts.max_series_per_rule",
            registry=r,
        )
        self.alert_delivery_seconds = Histogram(
            "backhaul_alerts_delivery_seconds",
            "Time from an alert's state change to its acknowledgement",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
            registry=r,
        )

    def watch_disk(self, path: Path, floor: int) -> None:
        """The buffer filesystem's free space, read at scrape time, next to the floor the buffer keeps."""
        self.disk_floor.set(floor)

        def free() -> float:
            stat = os.statvfs(path)
            return float(stat.f_bavail * stat.f_frsize)

        self.disk_free.set_function(free)

    def watch_buffer(self, totals: Callable[[], Totals], budget: int, clock: Callable[[], float] = time.time) -> None:
        """Read the buffer's gauges from its live totals at scrape time."""
        self.budget.set(budget)
        self.buffer_bytes.set_function(lambda: totals().bytes)
        self.buffer_chunks.set_function(lambda: totals().chunks)
        self.buffer_samples.set_function(lambda: totals().samples)

        def oldest_age() -> float:
            oldest = totals().oldest_ts
            return 0.0 if oldest is None else max(0.0, clock() - oldest / 1000)

        self.oldest_age.set_function(oldest_age)
