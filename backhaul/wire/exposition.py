"""The Prometheus protobuf exposition format: what a target serves for
``Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited``.

A page is a sequence of ``io.prometheus.client.MetricFamily`` messages, each preceded by its length
as a varint. It is the only exposition format that carries native histograms (the text formats do
not), so a scraper that wants them asks for it first.

Message fields (``prometheus/client_model io/prometheus/client/metrics.proto``)::

    MetricFamily  name 1, help 2, type 3 (COUNTER 0, GAUGE 1, SUMMARY 2, UNTYPED 3, HISTOGRAM 4,
                  GAUGE_HISTOGRAM 5), metric 4, unit 5
    Metric        label 1 (LabelPair name 1, value 2), gauge 2, counter 3, summary 4, untyped 5,
                  histogram 7, timestamp_ms 6
    Gauge, Counter, Untyped   value 1
    Summary       sample_count 1, sample_sum 2, quantile 3 (quantile 1, value 2)
    Histogram     sample_count 1, sample_count_float 4, sample_sum 2, bucket 3 (cumulative_count 1,
                  cumulative_count_float 4, upper_bound 2); native: schema 5, zero_threshold 6,
                  zero_count 7, zero_count_float 8, negative_span 9, negative_delta 10,
                  negative_count 11, positive_span 12, positive_delta 13, positive_count 14

A histogram with native buckets (any span -- an empty one has the no-op span ``(0, 0)`` -- or a zero
bucket) is taken as a native histogram, as Prometheus does by default with native histograms on; one
with classic buckets only becomes ``_bucket``/``_sum``/``_count`` series (``le="+Inf"`` added when
the target leaves it out, as the format allows). Created timestamps and exemplars are not read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from backhaul.wire import histogram as hist
from backhaul.wire import protodesc
from backhaul.wire.errors import WireError
from backhaul.wire.metadata import Metadata, MetadataMap
from backhaul.wire.protodesc import Field, T
from backhaul.wire.series import Labels, SeriesMap

CONTENT_TYPE = "application/vnd.google.protobuf"
MEDIA_TYPE = f"{CONTENT_TYPE};proto=io.prometheus.client.MetricFamily;encoding=delimited"
COUNTER, GAUGE, SUMMARY, UNTYPED, HISTOGRAM, GAUGE_HISTOGRAM = range(6)
_TYPE_NAMES = {
    COUNTER: "counter",
    GAUGE: "gauge",
    SUMMARY: "summary",
    UNTYPED: "unknown",
    HISTOGRAM: "histogram",
    GAUGE_HISTOGRAM: "gaugehistogram",
}


def _build() -> dict[str, Any]:
    value = [Field("value", 1, T.TYPE_DOUBLE)]
    return protodesc.build(
        "backhaul_prom_client.proto",
        "io.prometheus.client",
        {
            "LabelPair": [Field("name", 1, T.TYPE_STRING), Field("value", 2, T.TYPE_STRING)],
            "Gauge": value,
            "Counter": value,
            "Untyped": value,
            "Quantile": [Field("quantile", 1, T.TYPE_DOUBLE), Field("value", 2, T.TYPE_DOUBLE)],
            "Summary": [
                Field("sample_count", 1, T.TYPE_UINT64),
                Field("sample_sum", 2, T.TYPE_DOUBLE),
                Field("quantile", 3, T.TYPE_MESSAGE, repeated=True, message="Quantile"),
            ],
            "Bucket": [
                Field("cumulative_count", 1, T.TYPE_UINT64),
                Field("upper_bound", 2, T.TYPE_DOUBLE),
                Field("cumulative_count_float", 4, T.TYPE_DOUBLE),
            ],
            "BucketSpan": [Field("offset", 1, T.TYPE_SINT32), Field("length", 2, T.TYPE_UINT32)],
            "Histogram": [
                Field("sample_count", 1, T.TYPE_UINT64),
                Field("sample_sum", 2, T.TYPE_DOUBLE),
                Field("bucket", 3, T.TYPE_MESSAGE, repeated=True, message="Bucket"),
                Field("sample_count_float", 4, T.TYPE_DOUBLE),
                Field("schema", 5, T.TYPE_SINT32),
                Field("zero_threshold", 6, T.TYPE_DOUBLE),
                Field("zero_count", 7, T.TYPE_UINT64),
                Field("zero_count_float", 8, T.TYPE_DOUBLE),
                Field("negative_span", 9, T.TYPE_MESSAGE, repeated=True, message="BucketSpan"),
                Field("negative_delta", 10, T.TYPE_SINT64, repeated=True),
                Field("negative_count", 11, T.TYPE_DOUBLE, repeated=True),
                Field("positive_span", 12, T.TYPE_MESSAGE, repeated=True, message="BucketSpan"),
                Field("positive_delta", 13, T.TYPE_SINT64, repeated=True),
                Field("positive_count", 14, T.TYPE_DOUBLE, repeated=True),
            ],
            "Metric": [
                Field("label", 1, T.TYPE_MESSAGE, repeated=True, message="LabelPair"),
                Field("gauge", 2, T.TYPE_MESSAGE, message="Gauge"),
                Field("counter", 3, T.TYPE_MESSAGE, message="Counter"),
                Field("summary", 4, T.TYPE_MESSAGE, message="Summary"),
                Field("untyped", 5, T.TYPE_MESSAGE, message="Untyped"),
                Field("timestamp_ms", 6, T.TYPE_INT64),
                Field("histogram", 7, T.TYPE_MESSAGE, message="Histogram"),
            ],
            "MetricFamily": [
                Field("name", 1, T.TYPE_STRING),
                Field("help", 2, T.TYPE_STRING),
                Field("type", 3, T.TYPE_INT32),
                Field("metric", 4, T.TYPE_MESSAGE, repeated=True, message="Metric"),
                Field("unit", 5, T.TYPE_STRING),
            ],
        },
    )


_MESSAGES = _build()
MetricFamily = _MESSAGES["MetricFamily"]


def is_protobuf(content_type: str) -> bool:
    """Whether a scrape answer's Content-Type is the delimited protobuf format."""
    media, _, params = content_type.partition(";")
    return media.strip().lower() == CONTENT_TYPE and "io.prometheus.client.MetricFamily" in params


@dataclass
class Page:
    """A scraped page: float series, native histograms, metadata per family, and what was dropped."""

    series: SeriesMap = field(default_factory=dict)
    histograms: hist.HistogramSeriesMap = field(default_factory=dict)
    metadata: MetadataMap = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


def families(body: bytes) -> Iterator[Any]:
    """The ``MetricFamily`` messages of a delimited page; :class:`WireError` if it is not one."""
    pos, end = 0, len(body)
    while pos < end:
        length = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise WireError("protobuf exposition: a length prefix runs past the page")
            byte = body[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if pos + length > end:
            raise WireError("protobuf exposition: a message runs past the page")
        family = MetricFamily()
        try:
            family.ParseFromString(body[pos : pos + length])
        except DecodeError as exc:
            raise WireError(f"protobuf exposition: not a MetricFamily ({exc})") from exc
        pos += length
        yield family


def le(v: float) -> str:
    """A bucket bound or quantile as the text format writes it (``0.25``, ``1``, ``1e-05``, ``+Inf``)."""
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    text = repr(v)
    return text[:-2] if text.endswith(".0") else text


def parse(body: bytes, base: dict[str, str], default_ms: int) -> Page:
    """A delimited protobuf page as a :class:`Page`, with the target's labels ``base`` attached (a
    scraped label of the same name becomes ``exported_<name>``); samples without a timestamp get
    ``default_ms``."""
    page = Page()
    for family in families(body):
        name = family.name
        if not name:
            raise WireError("protobuf exposition: a metric family has no name")
        kind = _TYPE_NAMES.get(family.type, "unknown")
        meta = Metadata(kind, family.help[:4096], family.unit[:128])
        if not meta.is_empty():
            page.metadata[name] = meta
        for metric in family.metric:
            pairs = {"__name__": name}
            for pair in metric.label:
                if pair.value:  # an empty label is an absent label
                    pairs[f"exported_{pair.name}" if pair.name in base else pair.name] = pair.value
            pairs.update(base)
            ms = metric.timestamp_ms or default_ms
            _metric(page, family.type, name, pairs, metric, ms)
    return page


def _add(page: Page, pairs: dict[str, str], ms: int, value: float) -> None:
    labels: Labels = tuple(sorted(pairs.items()))
    entry = page.series.get(labels)
    if entry is None:
        page.series[labels] = ([ms], [value])
    else:
        entry[0].append(ms)
        entry[1].append(value)


def _metric(page: Page, kind: int, name: str, pairs: dict[str, str], metric: Any, ms: int) -> None:
    if kind == COUNTER:
        _add(page, pairs, ms, metric.counter.value)
    elif kind == GAUGE:
        _add(page, pairs, ms, metric.gauge.value)
    elif kind == SUMMARY:
        s = metric.summary
        for q in s.quantile:
            _add(page, {**pairs, "quantile": le(q.quantile)}, ms, q.value)
        _add(page, {**pairs, "__name__": f"{name}_sum"}, ms, s.sample_sum)
        _add(page, {**pairs, "__name__": f"{name}_count"}, ms, float(s.sample_count))
    elif kind in (HISTOGRAM, GAUGE_HISTOGRAM):
        _histogram(page, kind, name, pairs, metric.histogram, ms)
    else:
        _add(page, pairs, ms, metric.untyped.value)


def _histogram(page: Page, kind: int, name: str, pairs: dict[str, str], h: Any, ms: int) -> None:
    count = h.sample_count_float or float(h.sample_count)
    native = h.positive_span or h.negative_span or h.zero_threshold or h.zero_count or h.zero_count_float
    if not native:
        buckets = list(h.bucket)
        for b in buckets:
            cumulative = b.cumulative_count_float or float(b.cumulative_count)
            _add(page, {**pairs, "__name__": f"{name}_bucket", "le": le(b.upper_bound)}, ms, cumulative)
        if not buckets or not math.isinf(buckets[-1].upper_bound):
            _add(page, {**pairs, "__name__": f"{name}_bucket", "le": "+Inf"}, ms, count)
        _add(page, {**pairs, "__name__": f"{name}_sum"}, ms, h.sample_sum)
        _add(page, {**pairs, "__name__": f"{name}_count"}, ms, count)
        return
    is_float = bool(h.sample_count_float or h.zero_count_float or h.positive_count or h.negative_count)

    def spans(msgs: Any) -> hist.Spans:
        # The no-op span (0, 0) marks a native histogram without buckets; it holds nothing.
        return tuple((s.offset, s.length) for s in msgs if s.length or s.offset)

    native_h = hist.Histogram(
        count=count if is_float else h.sample_count,
        sum=h.sample_sum,
        schema=h.schema,
        zero_threshold=h.zero_threshold,
        zero_count=h.zero_count_float if is_float else h.zero_count,
        positive_spans=spans(h.positive_span),
        positive=tuple(h.positive_count) if is_float else tuple(h.positive_delta),
        negative_spans=spans(h.negative_span),
        negative=tuple(h.negative_count) if is_float else tuple(h.negative_delta),
        reset_hint=hist.RESET_GAUGE if kind == GAUGE_HISTOGRAM else hist.RESET_UNKNOWN,
        is_float=is_float,
    )
    if hist.problem(native_h) is not None:
        page.dropped["invalid_native_histogram"] = page.dropped.get("invalid_native_histogram", 0) + 1
        return
    labels: Labels = tuple(sorted(pairs.items()))
    entry = page.histograms.setdefault(labels, ([], []))
    entry[0].append(ms)
    entry[1].append(native_h)


def encode(families_: list[Any]) -> bytes:
    """``MetricFamily`` messages as a delimited page (what a target serves; used by tests and bench)."""
    out = bytearray()
    for family in families_:
        data = family.SerializeToString()
        n = len(data)
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        out += data
    return bytes(out)


def native_family(name: str, help: str, histograms: list[tuple[dict[str, str], hist.Histogram]]) -> Any:
    """A HISTOGRAM family of native histograms (integer or float), as client_golang exposes them."""
    family = MetricFamily(name=name, help=help, type=HISTOGRAM)
    for labels, h in histograms:
        metric = family.metric.add()
        for k, v in sorted(labels.items()):
            metric.label.add(name=k, value=v)
        m = metric.histogram
        m.schema = h.schema
        m.sample_sum = h.sum
        m.zero_threshold = h.zero_threshold
        if h.is_float:
            m.sample_count_float = float(h.count)
            m.zero_count_float = float(h.zero_count)
            m.positive_count.extend(h.positive)
            m.negative_count.extend(h.negative)
        else:
            m.sample_count = int(h.count)
            m.zero_count = int(h.zero_count)
            m.positive_delta.extend(int(d) for d in h.positive)
            m.negative_delta.extend(int(d) for d in h.negative)
        for offset, length in h.positive_spans or ((0, 0),):
            m.positive_span.add(offset=offset, length=length)
        for offset, length in h.negative_spans:
            m.negative_span.add(offset=offset, length=length)
    return family
