"""OTLP/HTTP metrics: ``ExportMetricsServiceRequest`` (protobuf or JSON, optionally gzip) mapped to
Prometheus series, per OpenTelemetry's "Prometheus and OpenMetrics compatibility" specification.

One module per concern:

- ``decoding``: Content-Type and Content-Encoding, the capped decompression, protobuf and OTLP/JSON
  parsing, and the answer with ``partial_success`` (:func:`decode`, :func:`response`).
- ``naming``: metric names, units, label names and values (:func:`metric_name`, :func:`label_name`).
- ``mapping``: each metric kind to Prometheus series, native histograms, exemplars and metadata
  (:func:`to_prometheus`); delta temporality is refused, point by point.
- ``model``: what mapping takes (:class:`Options`) and gives (:class:`Mapped`).

Callers import this package (``from backhaul.wire import otlp``); the names below are its API.
"""

from backhaul.wire.otlp.decoding import (
    JSON,
    PROTOBUF,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
    decode,
    decompress,
    media_type,
    parse,
    response,
)
from backhaul.wire.otlp.mapping import STALE_NAN, to_prometheus
from backhaul.wire.otlp.model import Mapped, Options
from backhaul.wire.otlp.naming import attribute_value, format_float, label_name, metric_name, prometheus_unit

__all__ = [
    "JSON",
    "PROTOBUF",
    "STALE_NAN",
    "ExportMetricsServiceRequest",
    "ExportMetricsServiceResponse",
    "Mapped",
    "Options",
    "attribute_value",
    "decode",
    "decompress",
    "format_float",
    "label_name",
    "media_type",
    "metric_name",
    "parse",
    "prometheus_unit",
    "response",
    "to_prometheus",
]
