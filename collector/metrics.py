"""The collector's own metrics, plus per-device figures read from the store at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from collector.store.records import DeviceState, IngestResult


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "backhaul_collector_requests", "Batch requests answered, by HTTP status", ["code"], registry=r
        )
        self.remote_write_requests = Counter(
            "backhaul_collector_remote_write_requests",
            "Plain remote-write requests answered, by HTTP status",
            ["code"],
            registry=r,
        )
        self.batches = Counter("backhaul_collector_batches", "Batches received, by outcome", ["outcome"], registry=r)
        self.samples = Counter("backhaul_collector_stored_samples", "New samples stored", registry=r)
        self.duplicate_samples = Counter(
            "backhaul_collector_duplicate_samples", "Samples received again and stored once", registry=r
        )
        self.body_bytes = Counter("backhaul_collector_received_bytes", "Batch body bytes received", registry=r)
        self.table_references = Counter(
            "backhaul_collector_chunks_by_table_reference",
            "Chunks that came without their series table, naming one the store keeps",
            registry=r,
        )
        self.decompressed_bytes = Counter(
            "backhaul_collector_decompressed_bytes", "Chunk bytes after decompression", registry=r
        )
        self.alert_requests = Counter(
            "backhaul_collector_alert_requests", "Alert POSTs answered, by HTTP status", ["code"], registry=r
        )
        self.alerts = Counter(
            "backhaul_collector_alerts",
            "Alert messages received, by transport (http, mqtt) and outcome (stored, duplicate, malformed,"
            " bad_mac, unsigned, unknown_device, error)",
            ["via", "outcome"],
            registry=r,
        )
        self.alert_times_clamped = Counter(
            "backhaul_collector_alert_times_clamped",
            "Alert messages whose device time was replaced by the arrival time, by reason (future, unset_clock)",
            ["reason"],
            registry=r,
        )
        self.dropped_samples = Counter(
            "backhaul_collector_dropped_samples",
            "Samples refused one series at a time (labels that break the rules, ...), by device and reason",
            ["device", "reason"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "backhaul_collector_ingest_duration_seconds", "Time to decode and durably store one batch", registry=r
        )
        self.duplicate_checks_capped = Counter(
            "backhaul_collector_duplicate_checks_capped",
            "Batches and remote-write requests whose duplicate check reached its bound, by device: held chunks"
            " past it were not compared, so duplicates they hold were counted as new samples (and kept)",
            ["device"],
            registry=r,
        )

    def stored(self, device: str, result: IngestResult) -> None:
        """Count what storing one batch or request did (not a repeated batch)."""
        self.samples.inc(result.samples)
        self.duplicate_samples.inc(result.duplicate_samples)
        if result.capped:
            self.duplicate_checks_capped.labels(device).inc()


class DeviceCollector(Collector):
    """Per-device series, from the store's device table (which survives restarts).

    Args: a callable returning the store's last known state of every device (``Store.devices``).
    """

    def __init__(self, devices: Callable[[], dict[str, DeviceState]]) -> None:
        self._devices = devices

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        devices = list(self._devices().values())
        last_seen = GaugeMetricFamily(
            "backhaul_collector_device_last_seen_timestamp_seconds",
            "When the device's last batch was stored",
            labels=["device"],
        )
        received = CounterMetricFamily(
            "backhaul_collector_device_received_samples", "Samples stored for the device", labels=["device"]
        )
        batches = CounterMetricFamily(
            "backhaul_collector_device_batches", "Batches stored for the device", labels=["device"]
        )
        duplicates = CounterMetricFamily(
            "backhaul_collector_device_duplicate_samples",
            "Samples the device sent again (a sender's retry) and that were stored once",
            labels=["device"],
        )
        duplicate_batches = CounterMetricFamily(
            "backhaul_collector_device_duplicate_batches",
            "Batches the device sent again (its reply was lost) and that were recognised, not stored twice",
            labels=["device"],
        )
        corrected = GaugeMetricFamily(
            "backhaul_collector_device_corrected_samples",
            "Samples the device's agent corrected the timestamps of, its clock being wrong (over all its buffers)",
            labels=["device"],
        )
        lost = GaugeMetricFamily(
            "backhaul_collector_device_reported_lost_samples",
            "Samples the device's agent reports it lost (cumulative over all its buffers), by cause",
            labels=["device", "cause"],
        )
        for d in devices:
            last_seen.add_metric([d.device], d.last_seen_ms / 1000)
            received.add_metric([d.device], d.samples)
            batches.add_metric([d.device], d.batches)
            duplicates.add_metric([d.device], d.duplicate_samples)
            duplicate_batches.add_metric([d.device], d.duplicate_batches)
            corrected.add_metric([d.device], d.corrected_samples)
            for field, value in d.losses().items():
                lost.add_metric([d.device, field.removesuffix("_samples")], value)
        yield from (last_seen, received, batches, duplicates, duplicate_batches, lost, corrected)
