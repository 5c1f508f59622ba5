"""OTLP/HTTP metrics: ``ExportMetricsServiceRequest`` (protobuf or JSON, optionally gzip) mapped to
Prometheus series, per OpenTelemetry's "Prometheus and OpenMetrics compatibility" specification.

Decoding: ``Content-Type: application/x-protobuf`` or ``application/json`` (OTLP/JSON: lowerCamelCase
or original field names, 64-bit integers as strings or numbers, enums as integers, trace and span ids
in hex, unknown fields ignored); ``Content-Encoding: gzip`` or none. The decompressed size is capped
before anything is parsed. Anything else is :class:`Unsupported` (415); a body that does not parse is
a :class:`WireError` (400).

Mapping (:func:`to_prometheus`), OTLP metric -> Prometheus:
- names: characters outside ``[a-zA-Z0-9_:]`` become ``_``, runs of ``_`` one; the unit, converted
  to Prometheus' words (``ms`` -> ``milliseconds``, ``By`` -> ``bytes``, ``1/s`` -> ``per_second``,
  ``{packet}`` dropped, ``1`` -> ``ratio`` for gauges), is appended unless the name has it; monotonic
  sums end in ``_total``. Attribute keys become label names the same way (``:`` excluded); keys that
  collide have their values joined with ``;`` in the order of the original keys.
- resource: ``job`` is ``service.namespace/service.name`` (or ``service.name``), ``instance`` is
  ``service.instance.id``; the other resource attributes go to one ``target_info`` gauge (value 1)
  per resource, labelled with them and ``job``/``instance``. ``otel_scope_name`` and
  ``otel_scope_version`` label every point (``Options.scope_labels``).
- gauges -> gauges; cumulative monotonic sums -> counters; cumulative non-monotonic sums -> gauges;
  cumulative histograms -> classic ``_bucket{le}`` / ``_sum`` / ``_count`` series; cumulative
  exponential histograms -> native histograms (scale = schema, bucket index + 1, scales above 8
  merged down to 8); summaries -> ``{quantile}`` / ``_sum`` / ``_count``.
- **Delta temporality is refused**, every such point counted under ``otlp_delta_temporality`` and
  reported back as rejected (OTLP partial success). Converting deltas to cumulative needs state per
  series that survives restarts and tolerates reordering, which a buffering agent cannot keep
  honestly; the OpenTelemetry SDKs send cumulative by default.
- a point flagged "no recorded value" becomes a stale marker; a point's start time becomes the
  series' created timestamp; exemplars of sums and histograms are kept (``trace_id``/``span_id``).
- the description is the HELP, the converted unit the UNIT, the type the TYPE metadata of the family.

Points that cannot be mapped are rejected one by one (counted by reason in ``Mapped.rejected``),
never the whole request; :func:`response` writes the OTLP answer with ``partial_success``.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from backhaul.wire import histogram as hist
from backhaul.wire import remote_write as rw
from backhaul.wire.errors import TooLarge, Unsupported, WireError
from backhaul.wire.metadata import TYPES, Metadata
from backhaul.wire.series import Exemplar, Labels

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ExportMetricsServiceRequest = metrics_service_pb2.ExportMetricsServiceRequest
ExportMetricsServiceResponse = metrics_service_pb2.ExportMetricsServiceResponse

STALE_NAN = struct.unpack("<d", rw.STALE_NAN_BYTES)[0]
_NO_RECORDED_VALUE = 1  # DataPointFlags.FLAG_NO_RECORDED_VALUE_MASK
_CUMULATIVE, _DELTA = 2, 1  # AggregationTemporality
_RESOURCE_IDENTITY = ("service.name", "service.namespace", "service.instance.id")


@dataclass
class Options:
    """How OTLP is mapped to Prometheus.

    Args:
        unit_suffixes: append the (converted) unit to metric names, and ``_total`` to counters.
        scope_labels: label every point with ``otel_scope_name`` / ``otel_scope_version``.
        target_info: write one ``target_info`` series per resource with its other attributes.
        promote_resource_attributes: resource attributes also copied onto every series of the resource.
    """

    unit_suffixes: bool = True
    scope_labels: bool = True
    target_info: bool = True
    promote_resource_attributes: tuple[str, ...] = ()


@dataclass
class Mapped:
    """A request mapped to Prometheus shapes.

    Args:
        decoded: the series, native histograms, exemplars, metadata and created timestamps, with
            samples dropped by the receiver's limits counted in ``decoded.dropped``.
        points: OTLP data points in the request.
        rejected: data points refused, by reason (what OTLP's partial success reports).
    """

    decoded: rw.Decoded = field(default_factory=rw.Decoded)
    points: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, points: int = 1) -> None:
        if points:
            self.rejected[reason] = self.rejected.get(reason, 0) + points

    @property
    def rejected_points(self) -> int:
        return sum(self.rejected.values())

    def error_message(self) -> str:
        """What partial success says: the reasons and how many points each refused; "" if none."""
        if not self.rejected:
            return ""
        parts = ", ".join(f"{reason} ({n})" for reason, n in sorted(self.rejected.items()))
        return f"{self.rejected_points} of {self.points} data points refused: {parts}"


# -- decoding ---------------------------------------------------------------------------------------


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
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"OTLP/JSON: not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise WireError("OTLP/JSON: the body is not a JSON object")
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


# -- names ------------------------------------------------------------------------------------------

_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tebibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_BAD_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_:]+")
_BAD_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]+")
_UNDERSCORES = re.compile(r"__+")
_CURLY = re.compile(r"\{[^}]*\}")


def prometheus_unit(unit: str, metric_type: str) -> str:
    """The Prometheus word for an OTLP (UCUM) unit: "" when there is none or it is a "count of"."""
    unit = _CURLY.sub("", unit).strip()
    if not unit:
        return ""
    if unit == "1":
        return "ratio" if metric_type == "gauge" else ""
    main, slash, per = unit.partition("/")
    words = _unit_word(main, _UNITS) if main != "1" else ""
    if slash and per:
        per_word = _unit_word(per, _PER_UNITS)
        words = f"{words}_per_{per_word}" if words else f"per_{per_word}"
    return _UNDERSCORES.sub("_", words).strip("_")


def _unit_word(unit: str, table: dict[str, str]) -> str:
    return table.get(unit) or re.sub(r"[^a-zA-Z0-9]", "", unit)


def metric_name(name: str, unit: str, metric_type: str, options: Options) -> str:
    """The Prometheus name of an OTLP metric of ``metric_type`` (a :data:`TYPES` entry)."""
    base = _UNDERSCORES.sub("_", _BAD_METRIC_CHARS.sub("_", name)).strip("_")
    counter = metric_type == "counter"
    if options.unit_suffixes:
        if counter and base.endswith("_total"):
            base = base[: -len("_total")]
        word = prometheus_unit(unit, metric_type)
        if word and f"_{word}_" not in f"_{base}_":
            base = f"{base}_{word}" if base else word
        if counter:
            base = f"{base}_total" if base else "total"
    if not base or base[0].isdigit():
        base = "_" + base
    return base


def label_name(key: str) -> str:
    """An attribute key as a Prometheus label name."""
    name = _UNDERSCORES.sub("_", _BAD_LABEL_CHARS.sub("_", key))
    if not name:
        return "_"
    return "key_" + name if name[0].isdigit() else name


def attribute_value(value: Any) -> str:
    """An OTLP ``AnyValue`` as a label value: strings as they are, others as OpenTelemetry's
    attribute spec writes them (booleans lower case, arrays and maps as JSON, bytes as base64)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return str(value.string_value)
    return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind) if kind else None


def _labels_of(attributes: Iterable[Any]) -> dict[str, str]:
    """Attributes as labels; keys that map to the same name have their values joined with ";",
    ordered by the original keys, as the compatibility spec requires."""
    by_name: dict[str, list[tuple[str, str]]] = {}
    for kv in attributes:
        by_name.setdefault(label_name(kv.key), []).append((kv.key, attribute_value(kv.value)))
    return {name: ";".join(v for _, v in sorted(pairs)) for name, pairs in by_name.items()}


def format_float(v: float) -> str:
    """A bucket bound or quantile as the ``le``/``quantile`` label value: shortest digits, no
    exponent, no trailing ``.0`` (as Prometheus' OTLP translator writes them), ``+Inf``/``-Inf``."""
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    text = format(Decimal(repr(v)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# -- mapping ----------------------------------------------------------------------------------------


def to_prometheus(request: Any, limits: rw.Limits, options: Options | None = None) -> Mapped:
    """Map a parsed ``ExportMetricsServiceRequest`` to Prometheus series (see the module docstring)."""
    return _Mapper(limits, options or Options()).run(request)


def _ms(nanos: int) -> int:
    return nanos // 1_000_000


class _Mapper:
    def __init__(self, limits: rw.Limits, options: Options) -> None:
        self.limits = limits
        self.options = options
        self.mapped = Mapped()
        self.out = self.mapped.decoded

    def run(self, request: Any) -> Mapped:
        for rm in request.resource_metrics:
            resource = {kv.key: attribute_value(kv.value) for kv in rm.resource.attributes}
            common: dict[str, str] = {}
            name, namespace = resource.get("service.name", ""), resource.get("service.namespace", "")
            job = f"{namespace}/{name}" if namespace and name else name
            if job:
                common["job"] = job
            if resource.get("service.instance.id"):
                common["instance"] = resource["service.instance.id"]
            for key in self.options.promote_resource_attributes:
                if key in resource and key not in _RESOURCE_IDENTITY:
                    common[label_name(key)] = resource[key]
            newest = 0
            for sm in rm.scope_metrics:
                scope: dict[str, str] = {}
                if self.options.scope_labels:
                    if sm.scope.name:
                        scope["otel_scope_name"] = sm.scope.name
                    if sm.scope.version:
                        scope["otel_scope_version"] = sm.scope.version
                for metric in sm.metrics:
                    newest = max(newest, self.metric(metric, {**scope, **common}))
            others = [kv for kv in rm.resource.attributes if kv.key not in _RESOURCE_IDENTITY]
            if self.options.target_info and others and newest:
                labels = {**_labels_of(others), **common, "__name__": "target_info"}
                self.sample(labels, newest, 1.0)
                self.out.families["target_info"] = Metadata("gauge", "Target metadata", "")
        return self.mapped

    # Returns the newest timestamp (ms) among the metric's points that were kept.
    def metric(self, metric: Any, common: dict[str, str]) -> int:
        kind = metric.WhichOneof("data")
        if kind is None:
            return 0
        data = getattr(metric, kind)
        points = list(data.data_points)
        self.mapped.points += len(points)
        temporality = getattr(data, "aggregation_temporality", _CUMULATIVE)
        if temporality == _DELTA:
            self.mapped.reject("otlp_delta_temporality", len(points))
            return 0
        if temporality != _CUMULATIVE:
            self.mapped.reject("otlp_temporality_unspecified", len(points))
            return 0
        hints = getattr(metric, "metadata", ())  # Metric.metadata is recent (OTLP 1.1)
        declared = next((attribute_value(kv.value) for kv in hints if kv.key == "prometheus.type"), "")
        if kind == "gauge":
            metric_type = "unknown" if declared == "unknown" else "gauge"
        elif kind == "sum":
            metric_type = (
                "counter" if data.is_monotonic else (declared if declared in ("info", "stateset") else "gauge")
            )
        elif kind in ("histogram", "exponential_histogram"):
            metric_type = "histogram"
        else:
            metric_type = "summary"
        name = metric_name(metric.name, metric.unit, metric_type, self.options)
        self.out.families[name] = Metadata(
            metric_type if metric_type in TYPES else "unknown",
            metric.description[:4096],
            prometheus_unit(metric.unit, metric_type),
        )
        newest = 0
        for point in points:
            labels = {**_labels_of(point.attributes), **common}
            t = _ms(point.time_unix_nano)
            if kind in ("gauge", "sum"):
                kept = self.number(name, labels, point, is_counter=metric_type == "counter")
            elif kind == "histogram":
                kept = self.classic_histogram(name, labels, point)
            elif kind == "exponential_histogram":
                kept = self.native_histogram(name, labels, point)
            else:
                kept = self.summary(name, labels, point)
            if kept:
                newest = max(newest, t)
        return newest

    def number(self, name: str, labels: dict[str, str], point: Any, is_counter: bool) -> bool:
        which = point.WhichOneof("value")
        if point.flags & _NO_RECORDED_VALUE:
            value = STALE_NAN
        elif which == "as_int":
            value = float(point.as_int)
        elif which == "as_double":
            value = point.as_double
        else:
            self.mapped.reject("otlp_no_value")
            return False
        # Only a counter has a start time worth keeping, and exemplars (the compatibility spec).
        series = self.sample(
            {**labels, "__name__": name}, _ms(point.time_unix_nano), value, point if is_counter else None
        )
        if series is not None and is_counter:
            self.exemplars(series, point.exemplars)
        return series is not None

    def classic_histogram(self, name: str, labels: dict[str, str], point: Any) -> bool:
        bounds = list(point.explicit_bounds)
        counts = list(point.bucket_counts)
        if counts and len(counts) != len(bounds) + 1:
            self.mapped.reject("otlp_invalid_histogram")
            return False
        if any(not math.isfinite(b) for b in bounds) or any(a >= b for a, b in pairwise(bounds)):
            self.mapped.reject("otlp_invalid_histogram")
            return False
        if sum(counts) > point.count:
            self.mapped.reject("otlp_invalid_histogram")
            return False
        t = _ms(point.time_unix_nano)
        stale = bool(point.flags & _NO_RECORDED_VALUE)
        if self.out_of_window(t, 2 + len(counts)):
            return False
        cumulative = 0
        first: Labels | None = None
        bucket_series: list[tuple[float, Labels]] = []
        if not counts:  # a histogram without buckets: only count, sum and the +Inf bucket
            bounds = []
        for bound, count in zip([*bounds, math.inf], counts or [point.count], strict=True):
            cumulative += count
            value = STALE_NAN if stale else float(cumulative if math.isfinite(bound) else point.count)
            series = self.sample({**labels, "__name__": f"{name}_bucket", "le": format_float(bound)}, t, value, point)
            if series is not None:
                bucket_series.append((bound, series))
                first = first or series
        self.sample({**labels, "__name__": f"{name}_count"}, t, STALE_NAN if stale else float(point.count), point)
        if point.HasField("sum"):
            self.sample({**labels, "__name__": f"{name}_sum"}, t, STALE_NAN if stale else point.sum, point)
        # Each exemplar goes with the bucket that holds its value.
        for ex in point.exemplars:
            value = _exemplar_value(ex)
            target = next((s for bound, s in bucket_series if value <= bound), None)
            if target is not None:
                self.exemplars(target, [ex])
        return first is not None

    def native_histogram(self, name: str, labels: dict[str, str], point: Any) -> bool:
        scale = point.scale
        if scale < hist.MIN_SCHEMA:
            self.mapped.reject("otlp_exponential_scale_too_low")
            return False
        stale = bool(point.flags & _NO_RECORDED_VALUE)

        def buckets(b: Any) -> list[tuple[int, float]]:
            # OTLP indexes a bucket by its lower bound, Prometheus by its upper bound: one apart.
            return [(b.offset + 1 + i, c) for i, c in enumerate(b.bucket_counts)]

        positive = buckets(point.positive)
        negative = buckets(point.negative)
        pos_spans, pos_deltas = hist.from_indexed(positive, is_float=False)
        neg_spans, neg_deltas = hist.from_indexed(negative, is_float=False)
        h = hist.Histogram(
            count=0 if stale else point.count,
            sum=STALE_NAN if stale else (point.sum if point.HasField("sum") else math.nan),
            schema=scale,
            zero_threshold=point.zero_threshold if point.zero_threshold else 1e-128,
            zero_count=0 if stale else point.zero_count,
            positive_spans=() if stale else pos_spans,
            positive=() if stale else pos_deltas,
            negative_spans=() if stale else neg_spans,
            negative=() if stale else neg_deltas,
        )
        if hist.problem(h):
            self.mapped.reject("otlp_invalid_histogram")
            return False
        if h.schema > hist.MAX_SCHEMA:
            h = hist.reduce_schema(h)
        if h.bucket_count() > self.limits.max_histogram_buckets:
            self.out.drop("too_many_buckets", 1)
            self.mapped.reject("too_many_buckets")
            return False
        t = _ms(point.time_unix_nano)
        if self.out_of_window(t, 1):
            return False
        series = self.labels({**labels, "__name__": name}, 1)
        if series is None:
            return False
        entry = self.out.histograms.setdefault(series, ([], []))
        entry[0].append(t)
        entry[1].append(h)
        self.out.histogram_samples += 1
        self.created(series, point)
        self.exemplars(series, point.exemplars)
        return True

    def summary(self, name: str, labels: dict[str, str], point: Any) -> bool:
        t = _ms(point.time_unix_nano)
        stale = bool(point.flags & _NO_RECORDED_VALUE)
        if self.out_of_window(t, 2 + len(point.quantile_values)):
            return False
        kept = False
        for q in point.quantile_values:
            labels_q = {**labels, "__name__": name, "quantile": format_float(q.quantile)}
            kept |= self.sample(labels_q, t, STALE_NAN if stale else q.value, point) is not None
        kept |= (
            self.sample({**labels, "__name__": f"{name}_count"}, t, STALE_NAN if stale else float(point.count), point)
            is not None
        )
        kept |= (
            self.sample({**labels, "__name__": f"{name}_sum"}, t, STALE_NAN if stale else point.sum, point) is not None
        )
        return kept

    # -- helpers --

    def out_of_window(self, t: int, samples: int) -> bool:
        if t < self.limits.min_timestamp_ms:
            self.out.drop("too_old", samples)
            self.mapped.reject("too_old")
            return True
        if t > self.limits.max_timestamp_ms:
            self.out.drop("too_far_in_future", samples)
            self.mapped.reject("too_far_in_future")
            return True
        return False

    def labels(self, labels: dict[str, str], samples: int) -> Labels | None:
        pairs = [(k, v) for k, v in labels.items() if v]  # an empty value is no label in Prometheus
        problem = rw.label_problem(pairs, self.limits)
        if problem:
            self.out.drop(problem, samples)
            self.mapped.reject(problem)
            return None
        return tuple(sorted(pairs))

    def sample(self, labels: dict[str, str], t: int, value: float, point: Any = None) -> Labels | None:
        if self.out_of_window(t, 1):
            return None
        series = self.labels(labels, 1)
        if series is None:
            return None
        entry = self.out.series.get(series)
        if entry is None:
            self.out.series[series] = ([t], [value])
        else:
            entry[0].append(t)
            entry[1].append(value)
        self.out.samples += 1
        if point is not None:
            self.created(series, point)
        return series

    def created(self, series: Labels, point: Any) -> None:
        start = getattr(point, "start_time_unix_nano", 0)
        if start:
            self.out.created[series] = _ms(start)

    def exemplars(self, series: Labels, exemplars: Iterable[Any]) -> None:
        kept = []
        for ex in exemplars:
            labels = _labels_of(ex.filtered_attributes)
            if ex.trace_id:
                labels["trace_id"] = ex.trace_id.hex()
            if ex.span_id:
                labels["span_id"] = ex.span_id.hex()
            if not ex.time_unix_nano:
                continue  # Prometheus requires a timestamp on an exemplar
            kept.append(Exemplar(tuple(sorted(labels.items())), _exemplar_value(ex), _ms(ex.time_unix_nano)))
        if kept:
            self.out.exemplars.setdefault(series, []).extend(kept)
            self.out.exemplar_count += len(kept)


def _exemplar_value(ex: Any) -> float:
    return float(ex.as_int) if ex.WhichOneof("value") == "as_int" else float(ex.as_double)
