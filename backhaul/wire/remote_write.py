"""Prometheus remote write 1.0: snappy-compressed protobuf ``WriteRequest``.

The message classes are built at import time from a descriptor written out below (the fields of
Prometheus' ``prompb/types.proto`` and ``remote.proto`` that remote write 1.0 uses), so no generated
``_pb2`` module ties us to one protobuf release. Parsing runs in protobuf's C backend (upb).
Native histograms (TimeSeries field 4) are parsed only far enough to be counted: backhaul does not
store them yet, and a drop must never be silent.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cramjam
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from backhaul.wire.errors import TooLarge, WireError
from backhaul.wire.series import Labels, SeriesMap

_F = descriptor_pb2.FieldDescriptorProto


def _build_messages() -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(name="backhaul_prompb.proto", package="prometheus", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    message("Label", ("name", 1, _F.TYPE_STRING, opt, ""), ("value", 2, _F.TYPE_STRING, opt, ""))
    message("Sample", ("value", 1, _F.TYPE_DOUBLE, opt, ""), ("timestamp", 2, _F.TYPE_INT64, opt, ""))
    message(
        "Exemplar",
        ("labels", 1, _F.TYPE_MESSAGE, rep, ".prometheus.Label"),
        ("value", 2, _F.TYPE_DOUBLE, opt, ""),
        ("timestamp", 3, _F.TYPE_INT64, opt, ""),
    )
    # Only the timestamp of a native histogram is read; the rest stays as unknown fields.
    message("Histogram", ("timestamp", 15, _F.TYPE_INT64, opt, ""))
    message(
        "TimeSeries",
        ("labels", 1, _F.TYPE_MESSAGE, rep, ".prometheus.Label"),
        ("samples", 2, _F.TYPE_MESSAGE, rep, ".prometheus.Sample"),
        ("exemplars", 3, _F.TYPE_MESSAGE, rep, ".prometheus.Exemplar"),
        ("histograms", 4, _F.TYPE_MESSAGE, rep, ".prometheus.Histogram"),
    )
    message(
        "MetricMetadata",
        ("type", 1, _F.TYPE_INT32, opt, ""),
        ("metric_family_name", 2, _F.TYPE_STRING, opt, ""),
        ("help", 4, _F.TYPE_STRING, opt, ""),
        ("unit", 5, _F.TYPE_STRING, opt, ""),
    )
    message(
        "WriteRequest",
        ("timeseries", 1, _F.TYPE_MESSAGE, rep, ".prometheus.TimeSeries"),
        ("metadata", 3, _F.TYPE_MESSAGE, rep, ".prometheus.MetricMetadata"),
    )
    # The same messages for parsing, with a series' labels read as raw bytes: a length-delimited
    # Label on the wire is also a valid `bytes` field, and a series' raw label bytes are the key of
    # the label cache, so a series seen before costs one dict lookup instead of a Python object per
    # label name and value.
    message(
        "TimeSeriesRawLabels",
        ("labels", 1, _F.TYPE_BYTES, rep, ""),
        ("samples", 2, _F.TYPE_MESSAGE, rep, ".prometheus.Sample"),
        ("histograms", 4, _F.TYPE_MESSAGE, rep, ".prometheus.Histogram"),
    )
    message(
        "WriteRequestRawLabels",
        ("timeseries", 1, _F.TYPE_MESSAGE, rep, ".prometheus.TimeSeriesRawLabels"),
        ("metadata", 3, _F.TYPE_MESSAGE, rep, ".prometheus.MetricMetadata"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))
        for name in ("WriteRequest", "TimeSeries", "Label", "Sample", "WriteRequestRawLabels")
    }


_MESSAGES = _build_messages()
WriteRequest = _MESSAGES["WriteRequest"]
_WriteRequestRawLabels = _MESSAGES["WriteRequestRawLabels"]
_Label = _MESSAGES["Label"]

# Millisecond timestamps beyond this are not dates (year ~285,000); refusing them keeps the
# chunk encoder's delta arithmetic inside int64.
MAX_ABS_TIMESTAMP_MS = 2**53


@dataclass
class Limits:
    """Bounds applied while decoding; anything beyond them is refused or dropped and counted."""

    max_decompressed_bytes: int = 64 * 1024 * 1024
    max_labels_per_series: int = 128
    max_label_bytes: int = 16 * 1024
    min_timestamp_ms: int = -MAX_ABS_TIMESTAMP_MS
    max_timestamp_ms: int = MAX_ABS_TIMESTAMP_MS


@dataclass
class Decoded:
    """What one request carried: accepted samples, and every sample dropped, by reason."""

    series: SeriesMap = field(default_factory=dict)
    samples: int = 0
    metadata: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count


CONTENT_TYPE = "application/x-protobuf"


def header_problem(content_type: str, content_encoding: str | None) -> str | None:
    """Why a request's headers rule out remote write 1.0 (an HTTP receiver answers 415), or None.

    A missing Content-Encoding is taken as snappy: the body must be snappy either way, and some
    senders leave the header out.
    """
    if content_type != CONTENT_TYPE:
        return f"Content-Type must be {CONTENT_TYPE}, not {content_type!r}"
    encoding = (content_encoding or "snappy").lower()
    if encoding != "snappy":
        return f"Content-Encoding must be snappy, not {encoding!r}"
    return None


def snappy_uncompressed_length(body: bytes) -> int:
    """The length a snappy block announces in its varint preamble, read without decompressing."""
    result = shift = 0
    for i, byte in enumerate(body[:10]):
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result
        shift += 7
        if i == 4:
            break
    raise WireError("snappy: bad or missing length preamble")


def decompress(body: bytes, limit: int) -> bytes:
    """Snappy block decompression that refuses, before allocating, anything over ``limit`` bytes."""
    length = snappy_uncompressed_length(body)
    if length > limit:
        raise TooLarge("decompressed remote-write body", limit)
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as exc:  # cramjam raises its own DecompressionError (and ValueError)
        raise WireError(f"snappy: {exc}") from exc


class LabelCache:
    """Label sets already decoded (and checked against the limits), keyed by their raw protobuf bytes.

    A sender repeats the same series request after request; decoding its labels once saves most of a
    request's parsing. Strings and label pairs are interned so that thousands of series sharing
    ``job="node"`` hold one copy. Bounded: when full it starts over (the next requests refill it).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max_entries = max_entries
        self._sets: dict[bytes | tuple[bytes, ...], Labels | str] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self._limits: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self._sets)

    def lookup(self, raw: Sequence[bytes], limits: Limits) -> Labels | str:
        """The series' sorted labels, or the reason they are refused (a drop reason)."""
        joined = b"\xff".join(raw)
        # When an item holds 0xff itself (a length varint can), joining would be ambiguous.
        key = joined if joined.count(b"\xff") == len(raw) - 1 else tuple(raw)
        found = self._sets.get(key)
        if found is not None and self._limits == (limits.max_labels_per_series, limits.max_label_bytes):
            return found
        if self._limits != (limits.max_labels_per_series, limits.max_label_bytes):
            self.clear()
            self._limits = (limits.max_labels_per_series, limits.max_label_bytes)
        pairs = []
        for item in raw:
            try:
                label = _Label.FromString(item)
            except DecodeError as exc:
                raise WireError(f"protobuf: not a WriteRequest (bad label: {exc})") from exc
            pairs.append((label.name, label.value))
        result: Labels | str = _label_problem(pairs, limits) or tuple(
            self._pairs.setdefault(pair, pair) for pair in sorted(pairs)
        )
        if len(self._sets) >= self._max_entries:
            self._sets.clear()
        self._sets[key] = result
        return result

    def clear(self) -> None:
        self._sets.clear()
        self._pairs.clear()


def decode(body: bytes, limits: Limits, cache: LabelCache | None = None) -> Decoded:
    """Decode a snappy-compressed ``WriteRequest`` into a :class:`Decoded`.

    Pass the receiver's long-lived :class:`LabelCache` to make repeated series cheap.
    """
    raw = decompress(body, limits.max_decompressed_bytes)
    request = _WriteRequestRawLabels()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        raise WireError(f"protobuf: not a WriteRequest ({exc})") from exc
    if cache is None:
        cache = LabelCache()

    out = Decoded(metadata=len(request.metadata))
    series = out.series
    lo, hi = limits.min_timestamp_ms, limits.max_timestamp_ms
    for ts in request.timeseries:
        out.drop("native_histogram", len(ts.histograms))
        samples = ts.samples
        if not samples:
            continue
        labels = cache.lookup(ts.labels, limits)
        if isinstance(labels, str):
            out.drop(labels, len(samples))
            continue
        if len(samples) == 1:  # the usual case: one sample per series and request
            sample = samples[0]
            stamps = [sample.timestamp]
            values = [sample.value]
        else:
            stamps = [s.timestamp for s in samples]
            values = [s.value for s in samples]
        if min(stamps) < lo or max(stamps) > hi:
            keep = [i for i, t in enumerate(stamps) if lo <= t <= hi]
            out.drop("too_old", sum(1 for t in stamps if t < lo))
            out.drop("too_far_in_future", sum(1 for t in stamps if t > hi))
            stamps = [stamps[i] for i in keep]
            values = [values[i] for i in keep]
            if not stamps:
                continue
        entry = series.get(labels)
        if entry is None:
            series[labels] = (stamps, values)
        else:
            entry[0].extend(stamps)
            entry[1].extend(values)
        out.samples += len(stamps)
    return out


def _label_problem(pairs: list[tuple[str, str]], limits: Limits) -> str | None:
    if not pairs:
        return "no_labels"
    if len(pairs) > limits.max_labels_per_series:
        return "too_many_labels"
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        return "duplicate_label_name"
    if any(not name for name in names):
        return "empty_label_name"
    if sum(len(n) + len(v) for n, v in pairs) > limits.max_label_bytes:
        return "labels_too_long"
    return None


def encode(series: SeriesMap, max_samples_per_request: int = 0) -> list[bytes]:
    """Encode samples as snappy-compressed ``WriteRequest`` bodies, the way Prometheus sends them.

    With ``max_samples_per_request`` > 0 the samples are split into requests of at most that many
    samples (Prometheus 2.42 sends 500 per request, later releases 2,000), one series entry per
    request and series, as Prometheus' shards do.
    """
    bodies: list[bytes] = []
    request = WriteRequest()
    in_request = 0
    for labels, (stamps, values) in series.items():
        start = 0
        while start < len(stamps):
            room = len(stamps) - start
            if max_samples_per_request:
                room = min(room, max_samples_per_request - in_request)
            entry = request.timeseries.add()
            for name, value in labels:
                entry.labels.add(name=name, value=value)
            for i in range(start, start + room):
                entry.samples.add(value=values[i], timestamp=stamps[i])
            start += room
            in_request += room
            if max_samples_per_request and in_request >= max_samples_per_request:
                bodies.append(_compress(request))
                request = WriteRequest()
                in_request = 0
    if in_request or not bodies:
        bodies.append(_compress(request))
    return bodies


def _compress(request: Any) -> bytes:
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def is_stale_marker(value: float) -> bool:
    """Prometheus marks a vanished series with this one NaN bit pattern (0x7ff0000000000002)."""
    return math.isnan(value) and struct.pack("<d", value) == STALE_NAN_BYTES


STALE_NAN_BYTES = (0x7FF0000000000002).to_bytes(8, "little")
