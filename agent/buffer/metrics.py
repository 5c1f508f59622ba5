"""The buffer's commits, losses and size (``backhaul_buffer_*``, ``backhaul_ingest_samples``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.buffer.store import Totals


class BufferMetrics:
    """Args: registry: where the metrics are registered (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.samples_ingested = Counter(
            "backhaul_ingest_samples", "Samples committed to the buffer and acknowledged", registry=r
        )
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

        self.waiting = Gauge(
            "backhaul_buffer_source_samples_waiting",
            "Samples of the agent's own sources waiting in memory for their commit"
            " (buffer.source_commit_interval; a crash or power cut would lose these)",
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
