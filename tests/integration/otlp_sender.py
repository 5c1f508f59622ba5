"""A process that instruments itself with the real OpenTelemetry SDK and sends its metrics to an OTLP/HTTP
endpoint with the real ``opentelemetry-exporter-otlp-proto-http`` (gzip, protobuf), once.

    python -m tests.integration.otlp_sender http://127.0.0.1:PORT/v1/metrics

Exit status 0 when the exporter reports success, 1 otherwise.
"""

from __future__ import annotations

import sys

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

RESOURCE = {
    "service.name": "infer",
    "service.namespace": "edge",
    "service.instance.id": "dev-7",
    "host.name": "jetson-1",
}
TTFT = (5, 12, 12.5, 80, 300, 300)
LATENCY = (0.01, 0.2, 0.2, 3.0, 9.0)


def main(endpoint: str) -> int:
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        resource=Resource.create(RESOURCE),
        metric_readers=[reader],
        views=[
            View(instrument_name="time_to_first_token", aggregation=ExponentialBucketHistogramAggregation(max_size=40))
        ],
    )
    meter = provider.get_meter("vllm.metrics", "0.6.0")
    meter.create_counter("requests", unit="{request}", description="Requests served.").add(
        3, {"model": "llama", "http.status_code": 200}
    )
    latency = meter.create_histogram(
        "request.duration", unit="s", description="Latency.", explicit_bucket_boundaries_advisory=[0.1, 0.5, 1, 5]
    )
    for v in LATENCY:
        latency.record(v, {"model": "llama"})
    ttft = meter.create_histogram("time_to_first_token", unit="ms")
    for v in TTFT:
        ttft.record(v)
    meter.create_gauge("gpu.temperature", unit="Cel").set(61.5, {"gpu": "0"})
    data = reader.get_metrics_data()
    exporter = OTLPMetricExporter(endpoint=endpoint, compression=Compression.Gzip, timeout=10)
    result = exporter.export(data) if data is not None else MetricExportResult.FAILURE
    exporter.shutdown()
    provider.shutdown()
    return 0 if result is MetricExportResult.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
