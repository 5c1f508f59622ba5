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

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, cast

import cramjam
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from backhaul.wire import budget
from backhaul.wire import histogram as hist
from backhaul.wire.errors import TooLarge, WireError
from backhaul.wire.metadata import Metadata, MetadataMap
from backhaul.wire.remote_write.labelcache import LabelCache, label_problem
from backhaul.wire.remote_write.messages import KeyRequest, KeySeries, WriteRequestRawLabels
from backhaul.wire.remote_write.negotiation import CONTENT_TYPE, Message
from backhaul.wire.remote_write.pieces import V2_FIELDS, pieces
from backhaul.wire.series import Exemplar, ExemplarMap, Labels, SeriesMap, append_series, merge_owned

__all__ = ["Decoded", "LabelCache", "Limits", "decode", "decode_histograms", "label_problem"]

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
        request = _parse(raw)
        if not _take_bulk(raw, request, out, limits, cache):
            _take(request, out, limits, cache, histograms, exemplars)
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


_serialized = KeySeries.SerializeToString
_samples, _first = attrgetter("samples"), itemgetter(0)
_timestamp, _value = attrgetter("timestamp"), attrgetter("value")


def _take_bulk(raw: bytes, request: Any, out: Decoded, limits: Limits, cache: LabelCache) -> bool:
    """The usual request, read series by series in C rather than in Python: one sample per series,
    no metadata, exemplars or histograms, every stamp inside the window. False, with ``out``
    unchanged, for any other request (:func:`_take` reads it). Against :func:`_take`'s loop this
    halves the decoding's CPU at 10k series (bench/decode_floor.py)."""
    if request.metadata or not request.timeseries:
        return False
    samples = list(map(_samples, request.timeseries))
    if set(map(len, samples)) != {1}:  # (a series without samples is skipped, its labels unread)
        return False
    firsts = list(map(_first, samples))
    stamps, values = list(map(_timestamp, firsts)), list(map(_value, firsts))
    if min(stamps) < limits.min_timestamp_ms or max(stamps) > limits.max_timestamp_ms:
        return False
    keys = KeyRequest.FromString(raw)
    keys.DiscardUnknownFields()
    found = cache.framed(list(map(_serialized, keys.timeseries)), limits)
    if found is None:
        return False
    labelled = cast(list[Labels], found)
    if set(map(type, found)) != {tuple}:  # series whose labels are refused: dropped, counted
        for reason in found:
            if isinstance(reason, str):
                out.drop(reason, 1)
        kept = [i for i, labels in enumerate(found) if not isinstance(labels, str)]
        labelled = [labelled[i] for i in kept]
        stamps, values = [stamps[i] for i in kept], [values[i] for i in kept]
    entries = list(zip([[t] for t in stamps], [[v] for v in values], strict=True))
    series = dict(zip(labelled, entries, strict=True))
    if len(series) < len(labelled):
        _put_back_repeats(series, labelled, entries)
    if out.series:
        series = merge_owned([out.series, series])
    out.series = series
    out.samples += len(labelled)
    return True


def _put_back_repeats(series: SeriesMap, labelled: list[Labels], entries: list[tuple[list[int], list[float]]]) -> None:
    """``series`` was built from ``labelled`` and ``entries`` by position, so a series listed more than
    once kept only its last entry. Prometheus lists one entry per sample: a request that spans two
    scrapes of a shard repeats the series of the first (330 of 2,000 in the bench's requests). Put
    the earlier samples back in front, in their order, looking only at the positions repeated.

    The label cache gives a series' labels as one object, so positions are told apart by identity:
    hashing a label set walks every pair, and did so twice per repeat. Should two equal label sets
    be distinct objects (the cache started over in between), identities tell fewer repeats than the
    map holds, and equality is used instead."""
    n = len(labelled)
    keys: Sequence[Hashable] = list(map(id, labelled))
    last = dict(zip(keys, range(n), strict=True))  # each series' last position
    if len(last) != len(series):
        keys = labelled
        last = dict(zip(keys, range(n), strict=True))
    # From the last repeat back to the first, each sample goes in front of what its series holds.
    for at in sorted(set(range(n)).difference(last.values()), reverse=True):
        stamps, values = entries[last[keys[at]]]
        stamps[0:0] = entries[at][0]
        values[0:0] = entries[at][1]


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
