"""Decoding a remote write 1.0 body within the receiver's limits.

The snappy preamble's length is checked against ``Limits.max_decompressed_bytes`` before anything is
decompressed; label sets are checked (count, bytes, empty or duplicate names) and timestamps held to
a window, refused samples counted by reason in :class:`Decoded`. Native histograms (TimeSeries field
4) and exemplars (field 3) are decoded only when the caller asks (``decode(..., histograms=True,
exemplars=True)``); otherwise histograms are counted as dropped (``native_histogram``), since a
receiver that cannot store them must not lose them silently. Metadata is always decoded, per family.
A 2.0 ``Request`` sent as 1.0 (its fields 4 and 5) is refused rather than read as an empty request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cramjam
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from backhaul import labels
from backhaul.wire import budget
from backhaul.wire import histogram as hist
from backhaul.wire.errors import TooLarge, WireError
from backhaul.wire.metadata import Metadata, MetadataMap
from backhaul.wire.remote_write.messages import Label, LabelBytes, WriteRequestRawLabels
from backhaul.wire.remote_write.negotiation import CONTENT_TYPE, Message
from backhaul.wire.remote_write.pieces import V2_FIELDS, pieces
from backhaul.wire.series import Exemplar, ExemplarMap, Labels, SeriesMap, append_series, pooled

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
    # Prometheus' clients default to 160 buckets; a histogram with more than this is dropped, counted.
    max_histogram_buckets: int = 4096
    # The label naming the device downstream ("" none): names that read as it are refused (backhaul.labels).
    device_label: str = ""
    # What one request may take once decoded (0: twice max_decompressed_bytes); see backhaul/wire/budget.py.
    max_decoded_bytes: int = 0


@dataclass
class Decoded:
    """What one request carried: accepted samples, and every sample dropped, by reason.

    ``samples`` counts float samples, ``histogram_samples`` native histograms, ``exemplar_count``
    exemplars kept; ``metadata`` is the number of metadata entries the request carried, ``families``
    what they say, per metric family. ``created`` holds a series' created (start) timestamp where
    the sender gave one (remote write 2.0, OTLP). The ``dropped`` reasons count samples and
    histograms alike.
    """

    series: SeriesMap = field(default_factory=dict)
    samples: int = 0
    metadata: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    histograms: hist.HistogramSeriesMap = field(default_factory=dict)
    histogram_samples: int = 0
    exemplars: ExemplarMap = field(default_factory=dict)
    exemplar_count: int = 0
    families: MetadataMap = field(default_factory=dict)
    created: dict[Labels, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count


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
    request's parsing. Label pairs are interned so that thousands of series sharing ``job="node"``
    hold one copy. Both the sets and the interned pairs are bounded: when either is full, both start
    over (the next requests refill them), so series churn cannot grow the cache for ever.

    Args:
        max_entries: label sets kept.
        max_pairs: interned label pairs kept (default: four per label set).
    """

    def __init__(self, max_entries: int = 100_000, max_pairs: int | None = None) -> None:
        self._max_entries = max_entries
        self._max_pairs = max_pairs if max_pairs is not None else 4 * max_entries
        self._sets: dict[bytes | tuple[bytes, ...], Labels | str] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self._limits: tuple[int, int, str] = (0, 0, "")

    def __len__(self) -> int:
        return len(self._sets)

    @property
    def pairs(self) -> int:
        """Label pairs interned now."""
        return len(self._pairs)

    def lookup(self, raw: Sequence[bytes], limits: Limits) -> Labels | str:
        """The series' sorted labels, or the reason they are refused (a drop reason)."""
        joined = b"\xff".join(raw)
        # When an item holds 0xff itself (a length varint can), joining would be ambiguous.
        key = joined if joined.count(b"\xff") == len(raw) - 1 else tuple(raw)
        found = self._sets.get(key)
        wanted = (limits.max_labels_per_series, limits.max_label_bytes, limits.device_label)
        if found is not None and self._limits == wanted:
            return found
        if self._limits != wanted:
            self.clear()
            self._limits = wanted
        pairs = []
        result: Labels | str | None = None
        # Before parsing a label at all: a set of 100,000 labels costs a length check, not 100,000 objects.
        if len(raw) > limits.max_labels_per_series:
            result = "too_many_labels"
        elif len(joined) > 2 * limits.max_label_bytes + 8 * len(raw):  # bytes on the wire > text + framing
            result = "labels_too_long"
        for item in raw if result is None else ():
            try:
                label = Label.FromString(item)
            except DecodeError as exc:
                if not _valid_except_utf8(item):
                    raise WireError(f"protobuf: not a WriteRequest (bad label: {exc})") from exc
                result = "invalid_utf8"  # the one series is dropped, the request is not refused
                break
            pairs.append((label.name, label.value))
        if result is None:
            result = label_problem(pairs, limits) or pooled(sorted(pairs), self._pairs)
        if len(self._sets) >= self._max_entries or len(self._pairs) >= self._max_pairs:
            self._sets.clear()
            self._pairs.clear()
        self._sets[key] = result
        return result

    def clear(self) -> None:
        self._sets.clear()
        self._pairs.clear()


def _valid_except_utf8(item: bytes) -> bool:
    """Whether a Label that upb refused parses with its strings read as bytes (so only UTF-8 was wrong)."""
    try:
        LabelBytes.FromString(item)
    except DecodeError:
        return False
    return True


def decode(
    body: bytes,
    limits: Limits,
    cache: LabelCache | None = None,
    histograms: bool = False,
    exemplars: bool = False,
) -> Decoded:
    """Decode a snappy-compressed ``WriteRequest`` into a :class:`Decoded`.

    Pass the receiver's long-lived :class:`LabelCache` to make repeated series cheap. With
    ``histograms`` native histograms are decoded and checked (a malformed one is a
    :class:`WireError`), else counted as dropped; with ``exemplars`` exemplars are kept. What the
    request takes once decoded is bounded by ``limits.max_decoded_bytes`` (:class:`TooLarge`).
    """
    raw = decompress(body, limits.max_decompressed_bytes)
    if cache is None:
        cache = LabelCache()
    out = Decoded()
    bound = limits.max_decoded_bytes or 2 * limits.max_decompressed_bytes
    if budget.remote_write_worst(len(raw)) <= bound:  # every request a Prometheus sends
        _take(_parse(raw), out, limits, cache, histograms, exemplars)
        return out
    # Piece by piece, counting what the decoded samples cost (backhaul/wire/budget.py).
    cost = 0
    # A piece no larger than its worst case allows; only a single field can be larger (one series
    # with that many samples): refused, since even parsing it alone could pass the bound.
    piece_bytes = min(_PIECE_BYTES, bound // budget.RW_WORST_PER_BYTE)
    for piece, numbers in pieces(raw, piece_bytes):
        if numbers & V2_FIELDS:
            raise WireError(_V2_AS_V1)
        if len(piece) > piece_bytes:
            raise TooLarge(f"one series of {len(piece)} bytes in a remote-write body, decoded", bound)
        before = out.samples + out.histogram_samples
        _take(_parse(piece), out, limits, cache, histograms, exemplars)
        cost += budget.remote_write_cost(len(piece), out.samples + out.histogram_samples - before)
        if cost > bound:
            raise TooLarge("remote-write body, decoded", bound)
    return out


_V2_AS_V1 = (
    "protobuf: the body is an io.prometheus.write.v2.Request, not a prometheus.WriteRequest; "
    f"send it with Content-Type: {CONTENT_TYPE};proto={Message.V2.value}"
)
# Bodies too large to be parsed at once (see ``decode``) are parsed in pieces of about this size.
_PIECE_BYTES = 1 << 20


def _parse(raw: bytes) -> Any:
    request = WriteRequestRawLabels()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        raise WireError(f"protobuf: not a WriteRequest ({exc})") from exc
    if unknown_field_numbers(request) & V2_FIELDS:
        # A 2.0 Request's symbols and timeseries: parsed as 1.0 they would be an empty request,
        # acknowledged with nothing stored.
        raise WireError(_V2_AS_V1)
    return request


def _take(request: Any, out: Decoded, limits: Limits, cache: LabelCache, histograms: bool, exemplars: bool) -> None:
    """Add what one parsed ``WriteRequest`` holds to ``out``."""
    out.metadata += len(request.metadata)
    for meta in request.metadata:
        if meta.metric_family_name:
            out.families[meta.metric_family_name] = Metadata.from_numbers(meta.type, meta.help, meta.unit)
    series = out.series
    lo, hi = limits.min_timestamp_ms, limits.max_timestamp_ms
    for ts in request.timeseries:
        if ts.histograms:
            if histograms:
                _decode_histograms(ts, out, limits, cache)
            else:
                out.drop("native_histogram", len(ts.histograms))
        if exemplars and ts.exemplars:
            _decode_exemplars(ts, out, limits, cache)
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
        append_series(series, labels, stamps, values)
        out.samples += len(stamps)


def unknown_field_numbers(message: Any) -> set[int]:
    """Numbers of the fields of ``message`` (top level only) that its schema does not have."""
    return {f.field_number for f in UnknownFieldSet(message)}


def _decode_histograms(ts: Any, out: Decoded, limits: Limits, cache: LabelCache) -> None:
    labels = cache.lookup(ts.labels, limits)
    if isinstance(labels, str):
        out.drop(labels, len(ts.histograms))
        return
    stamps, values = decode_histograms(ts.histograms, out, limits)
    if stamps:
        append_series(out.histograms, labels, stamps, values)
        out.histogram_samples += len(stamps)


def decode_histograms(messages: Iterable[Any], out: Decoded, limits: Limits) -> tuple[list[int], list[hist.Histogram]]:
    """Timestamps and histograms of protobuf Histogram messages (either remote-write version),
    checked; out-of-window ones and ones over the bucket limit are dropped and counted in ``out``.
    Schemas 9..52 are merged down to 8."""
    stamps: list[int] = []
    values: list[hist.Histogram] = []
    for msg in messages:
        try:
            h = hist.from_proto(msg)
        except ValueError as exc:
            raise WireError(f"protobuf: {exc}") from exc
        problem = hist.problem(h)
        if problem:
            raise WireError(problem)
        t = msg.timestamp
        if t < limits.min_timestamp_ms:
            out.drop("too_old", 1)
            continue
        if t > limits.max_timestamp_ms:
            out.drop("too_far_in_future", 1)
            continue
        if h.schema > hist.MAX_SCHEMA:
            h = hist.reduce_schema(h)
        if h.bucket_count() > limits.max_histogram_buckets:
            out.drop("too_many_buckets", 1)
            continue
        stamps.append(t)
        values.append(h)
    return stamps, values


def _decode_exemplars(ts: Any, out: Decoded, limits: Limits, cache: LabelCache) -> None:
    labels = cache.lookup(ts.labels, limits)
    if isinstance(labels, str):
        return  # the series' samples are dropped and counted; its exemplars go with them
    kept = out.exemplars.setdefault(labels, [])
    for ex in ts.exemplars:
        pairs = tuple(sorted((label.name, label.value) for label in ex.labels))
        if sum(len(n) + len(v) for n, v in pairs) > limits.max_label_bytes:
            out.drop("exemplar_labels_too_long", 1)
            continue
        kept.append(Exemplar(pairs, ex.value, ex.timestamp))
        out.exemplar_count += 1
    if not kept:
        del out.exemplars[labels]


def label_problem(pairs: list[tuple[str, str]], limits: Limits) -> str | None:
    """The drop reason for a label set that breaks the one set of rules (:mod:`backhaul.labels`), or None."""
    return labels.rules_for(limits.max_labels_per_series, limits.max_label_bytes, limits.device_label).problem(pairs)
