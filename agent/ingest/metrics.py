"""What remote write and the agent's own sources refused or received (``backhaul_ingest_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class IngestMetrics:
    """Args: registry: where the metrics are registered (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "backhaul_ingest_requests", "Remote-write requests answered, by HTTP status", ["code"], registry=r
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
        self.label_cache = Gauge(
            "backhaul_ingest_label_cache_entries",
            "What the remote-write label cache holds, by kind (sets, pairs); both are bounded",
            ["kind"],
            registry=r,
        )
