"""Decoding an OTLP/HTTP metrics request (``ExportMetricsServiceRequest``) and writing the answer.

``Content-Type: application/x-protobuf`` or ``application/json`` (OTLP/JSON: lowerCamelCase or
original field names, 64-bit integers as strings or numbers, enums as integers, trace and span ids
in hex, unknown fields ignored); ``Content-Encoding: gzip`` or none. The decompressed size is capped
before anything is parsed. Anything else is :class:`Unsupported` (415); a body that does not parse is
a :class:`WireError` (400). The answer is an ``ExportMetricsServiceResponse`` in the request's
encoding, with ``partial_success`` when points were refused.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from backhaul.wire import remote_write as rw
from backhaul.wire.errors import TooLarge, Unsupported, WireError
from backhaul.wire.jsonpart import json_part
from backhaul.wire.otlp.mapping import to_prometheus
from backhaul.wire.otlp.model import Mapped, Options

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ExportMetricsServiceRequest = metrics_service_pb2.ExportMetricsServiceRequest
ExportMetricsServiceResponse = metrics_service_pb2.ExportMetricsServiceResponse


def media_type(content_type: str | None) -> str:
    """``PROTOBUF`` or ``JSON`` for a request's Content-Type; :class:`Unsupported` for anything else."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in (PROTOBUF, JSON):
        raise Unsupported(f"Content-Type must be {PROTOBUF} or {JSON}, not {content_type or ''!r}")
    return kind


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body as sent (no encoding) or gunzipped, never more than ``limit`` bytes of it."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(body) > limit:
            raise TooLarge("OTLP body", limit)
        return body
    if encoding != "gzip":
        raise Unsupported(f"Content-Encoding must be gzip or none, not {encoding!r}")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise WireError(f"gzip: {exc}") from exc
    if len(out) > limit:
        raise TooLarge("decompressed OTLP body", limit)
    if not inflater.eof:
        raise WireError("gzip: the body ends before its gzip stream does")
    if inflater.unused_data:
        # A second gzip member (or trailing bytes): refused rather than silently left unread.
        raise WireError("gzip: the body goes on after its gzip stream")
    return out


def parse(body: bytes, kind: str) -> Any:
    """An ``ExportMetricsServiceRequest`` from protobuf or OTLP/JSON bytes."""
    request = ExportMetricsServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise WireError(f"protobuf: not an ExportMetricsServiceRequest ({exc})") from exc
        return request
    raw = json_part(body, "OTLP/JSON: the body", dict)
    try:
        _hex_ids_to_base64(raw)
        json_format.ParseDict(raw, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise WireError(f"OTLP/JSON: not an ExportMetricsServiceRequest ({exc})") from exc
    return request


_DATA_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "exponential_histogram", "summary")


def _hex_ids_to_base64(raw: dict[str, Any]) -> None:
    """OTLP/JSON writes trace and span ids in hex, where protobuf's JSON mapping expects base64."""
    for rm in _items(raw, "resourceMetrics", "resource_metrics"):
        for sm in _items(rm, "scopeMetrics", "scope_metrics"):
            for metric in _items(sm, "metrics"):
                for kind in _DATA_KINDS:
                    data = metric.get(kind)
                    for point in _items(data, "dataPoints", "data_points"):
                        for ex in _items(point, "exemplars"):
                            for key in ("traceId", "trace_id", "spanId", "span_id"):
                                value = ex.get(key)
                                if isinstance(value, str) and value:
                                    try:
                                        ex[key] = base64.b64encode(bytes.fromhex(value)).decode()
                                    except ValueError:
                                        raise ValueError(f"exemplar {key} {value!r} is not hex") from None


def _items(obj: Any, *keys: str) -> list[dict[str, Any]]:
    if not isinstance(obj, dict):
        return []
    for key in keys:
        value = obj.get(key)
        if isinstance(value, list):
            return [v for v in value if isinstance(v, dict)]
    return []


def decode(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    limits: rw.Limits,
    options: Options | None = None,
) -> Mapped:
    """Negotiate, decompress, parse and map one OTLP/HTTP metrics request."""
    kind = media_type(content_type)
    raw = decompress(body, content_encoding, limits.max_decompressed_bytes)
    return to_prometheus(parse(raw, kind), limits, options or Options())


def response(mapped: Mapped, kind: str) -> bytes:
    """The ``ExportMetricsServiceResponse`` body (protobuf or JSON, as the request was)."""
    answer = ExportMetricsServiceResponse()
    if mapped.rejected:
        answer.partial_success.rejected_data_points = mapped.rejected_points
        answer.partial_success.error_message = mapped.error_message()
    if kind == JSON:
        return str(json_format.MessageToJson(answer, indent=None)).encode()
    return bytes(answer.SerializeToString())
