"""Batch uploads (``backhaul_uplink_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class UplinkMetrics:
    """Args: registry: where the metrics are registered (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
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
