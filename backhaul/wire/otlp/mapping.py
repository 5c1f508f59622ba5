"""Mapping a parsed OTLP metrics request to Prometheus series, metric kind by metric kind.

Per OpenTelemetry's "Prometheus and OpenMetrics compatibility" specification (names and labels:
``otlp.naming``):
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
never the whole request.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

from backhaul.wire import histogram as hist
from backhaul.wire import remote_write as rw
from backhaul.wire.metadata import TYPES, Metadata
from backhaul.wire.otlp.model import Mapped, Options
from backhaul.wire.otlp.naming import attribute_value, format_float, label_name, labels_of, metric_name, prometheus_unit
from backhaul.wire.series import Exemplar, Labels

STALE_NAN = struct.unpack("<d", rw.STALE_NAN_BYTES)[0]
_NO_RECORDED_VALUE = 1  # DataPointFlags.FLAG_NO_RECORDED_VALUE_MASK
_CUMULATIVE, _DELTA = 2, 1  # AggregationTemporality
_RESOURCE_IDENTITY = ("service.name", "service.namespace", "service.instance.id")


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
                labels = {**labels_of(others), **common, "__name__": "target_info"}
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
            labels = {**labels_of(point.attributes), **common}
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
            labels = labels_of(ex.filtered_attributes)
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
