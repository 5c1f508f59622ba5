"""Prometheus Remote-Write 2.0: snappy-compressed protobuf ``io.prometheus.write.v2.Request``.

``Content-Type: application/x-protobuf;proto=io.prometheus.write.v2.Request`` (see
``remote_write.negotiate``). Every string of a request is interned once in ``symbols``; a series
names its labels by pairs of indices into it (``labels_refs``) and carries float samples *or* native
histograms, exemplars, metadata (type, help and unit by reference) and a created timestamp.

Message fields (``prompb/io/prometheus/write/v2/types.proto``)::

    Request     symbols 4 (repeated string), timeseries 5
    TimeSeries  labels_refs 1 (packed uint32), samples 2, histograms 3, exemplars 4, metadata 5,
                created_timestamp 6 (2.0-rc; later drafts move it to Sample/Histogram.start_timestamp)
    Sample      value 1, timestamp 2, start_timestamp 3
    Exemplar    labels_refs 1, value 2, timestamp 3
    Metadata    type 1, help_ref 3, unit_ref 4
    Histogram   as remote write 1.0's (protodesc.histogram_messages), plus start_timestamp 17

What the spec requires of a request is checked, and each violation is a :class:`WireError` (400) with
the reason: ``symbols[0]`` is the empty string; every reference points into ``symbols``; label
references come in pairs; label names are non-empty, unique and sorted, values non-empty; a series
has samples or histograms, not both and not neither; samples and histograms are in timestamp order;
exemplars have a timestamp; histograms are valid (``histogram.problem``). The receiver's own limits
(labels per series and their bytes, the timestamp window, buckets per histogram) drop the affected
samples and count them, as for 1.0. Memory is bounded as for 1.0: the snappy preamble's length is
checked before anything is decompressed, and nothing is allocated from a count the request declares.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import cramjam
from google.protobuf.message import DecodeError

from backhaul.wire import histogram as hist
from backhaul.wire import protodesc
from backhaul.wire import remote_write as rw
from backhaul.wire.errors import WireError
from backhaul.wire.metadata import Metadata, MetadataMap, family_of, lookup
from backhaul.wire.protodesc import Field, T
from backhaul.wire.series import Exemplar, ExemplarMap, Labels, SeriesMap, append_series

PROTO = rw.Message.V2.value
CONTENT_TYPE = f"{rw.CONTENT_TYPE};proto={PROTO}"
VERSION_HEADER = "2.0.0"
# Answer headers the spec requires of a 2.0 receiver.
SAMPLES_WRITTEN = "X-Prometheus-Remote-Write-Samples-Written"
HISTOGRAMS_WRITTEN = "X-Prometheus-Remote-Write-Histograms-Written"
EXEMPLARS_WRITTEN = "X-Prometheus-Remote-Write-Exemplars-Written"


def _build_messages() -> dict[str, Any]:
    refs = Field("labels_refs", 1, T.TYPE_UINT32, repeated=True)
    return protodesc.build(
        "backhaul_prompb_v2.proto",
        "io.prometheus.write.v2",
        {
            "Sample": [
                Field("value", 1, T.TYPE_DOUBLE),
                Field("timestamp", 2, T.TYPE_INT64),
                Field("start_timestamp", 3, T.TYPE_INT64),
            ],
            "Exemplar": [refs, Field("value", 2, T.TYPE_DOUBLE), Field("timestamp", 3, T.TYPE_INT64)],
            "Metadata": [
                Field("type", 1, T.TYPE_INT32),
                Field("help_ref", 3, T.TYPE_UINT32),
                Field("unit_ref", 4, T.TYPE_UINT32),
            ],
            **protodesc.histogram_messages(),
            "TimeSeries": [
                refs,
                Field("samples", 2, T.TYPE_MESSAGE, repeated=True, message="Sample"),
                Field("histograms", 3, T.TYPE_MESSAGE, repeated=True, message="Histogram"),
                Field("exemplars", 4, T.TYPE_MESSAGE, repeated=True, message="Exemplar"),
                Field("metadata", 5, T.TYPE_MESSAGE, message="Metadata"),
                Field("created_timestamp", 6, T.TYPE_INT64),
            ],
            "Request": [
                Field("symbols", 4, T.TYPE_STRING, repeated=True),
                Field("timeseries", 5, T.TYPE_MESSAGE, repeated=True, message="TimeSeries"),
            ],
        },
    )


_MESSAGES = _build_messages()
Request = _MESSAGES["Request"]


class LabelCache:
    """Label sets already checked, keyed by their strings (names and values interleaved).

    2.0 senders build a new symbol table for every request, so references differ from request to
    request while the strings repeat. Bounded: when full it starts over.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max_entries = max_entries
        self._sets: dict[tuple[str, ...], Labels | str] = {}
        self._limits: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self._sets)

    def lookup(self, strings: tuple[str, ...], limits: rw.Limits) -> Labels | str:
        """The series' labels, or the limit they break (a drop reason); WireError if the spec's rules."""
        key_limits = (limits.max_labels_per_series, limits.max_label_bytes)
        if self._limits != key_limits:
            self._sets.clear()
            self._limits = key_limits
        found = self._sets.get(strings)
        if found is not None:
            return found
        names = strings[0::2]
        values = strings[1::2]
        if not all(names) or not all(values):
            raise WireError("remote write 2.0: a series has an empty label name or value")
        for a, b in pairwise(names):
            if a >= b:
                what = "repeats the label name" if a == b else "is not sorted by label name at"
                raise WireError(f"remote write 2.0: a series {what} {b!r}")
        pairs = list(zip(names, values, strict=True))
        result: Labels | str = rw.label_problem(pairs, limits) or tuple(pairs)
        if len(self._sets) >= self._max_entries:
            self._sets.clear()
        self._sets[strings] = result
        return result


def decode(body: bytes, limits: rw.Limits, cache: LabelCache | None = None) -> rw.Decoded:
    """Decode a snappy-compressed ``io.prometheus.write.v2.Request`` into a :class:`Decoded`.

    Float samples go to ``series``, native histograms to ``histograms``, exemplars to
    ``exemplars``, metadata to ``families`` (per metric family) and created timestamps to ``created``.
    """
    raw = rw.decompress(body, limits.max_decompressed_bytes)
    request = Request()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        raise WireError(f"protobuf: not an io.prometheus.write.v2.Request ({exc})") from exc
    if rw.unknown_field_numbers(request) & {1, 2, 3}:
        # The fields of a 1.0 WriteRequest, which 2.0 reserves so that a mislabelled body is noticed.
        raise WireError(
            "protobuf: the body is a prometheus.WriteRequest (remote write 1.0), not an "
            f"io.prometheus.write.v2.Request; send it with Content-Type: {rw.CONTENT_TYPE}"
        )
    symbols = list(request.symbols)
    if symbols and symbols[0] != "":
        raise WireError("remote write 2.0: symbols[0] must be the empty string")
    if request.timeseries and not symbols:
        raise WireError("remote write 2.0: the request has series but no symbols")
    if cache is None:
        cache = LabelCache()
    out = rw.Decoded()
    for i, ts in enumerate(request.timeseries):
        _decode_series(i, ts, symbols, out, limits, cache)
    return out


def _resolve(i: int, what: str, refs: Sequence[int], symbols: list[str]) -> tuple[str, ...]:
    if len(refs) % 2:
        raise WireError(f"remote write 2.0: series {i} has an odd number of {what} references")
    if not refs:
        return ()
    try:
        got = operator.itemgetter(*refs)(symbols)
    except IndexError:
        bad = max(refs)
        raise WireError(
            f"remote write 2.0: series {i} refers to symbol {bad}, the request has {len(symbols)}"
        ) from None
    return got if isinstance(got, tuple) else (got,)


def _decode_series(i: int, ts: Any, symbols: list[str], out: rw.Decoded, limits: rw.Limits, cache: LabelCache) -> None:
    refs = ts.labels_refs
    if not refs:
        raise WireError(f"remote write 2.0: series {i} has no labels_refs")
    strings = _resolve(i, "label", refs, symbols)
    samples, histograms = ts.samples, ts.histograms
    if samples and histograms:
        raise WireError(f"remote write 2.0: series {i} has both samples and histograms")
    if not samples and not histograms:
        raise WireError(f"remote write 2.0: series {i} has neither samples nor histograms")
    meta = ts.metadata
    n_symbols = len(symbols)
    if meta.help_ref >= n_symbols or meta.unit_ref >= n_symbols:
        raise WireError(f"remote write 2.0: series {i}'s metadata refers to a symbol the request does not have")
    stamps = [s.timestamp for s in (samples or histograms)]
    if any(b < a for a, b in pairwise(stamps)):
        raise WireError(f"remote write 2.0: series {i}'s samples are not in timestamp order")
    kept_exemplars = [_exemplar(i, ex, symbols) for ex in ts.exemplars]

    labels = cache.lookup(strings, limits)
    if isinstance(labels, str):
        out.drop(labels, len(stamps))
        return
    metadata = Metadata.from_numbers(meta.type, symbols[meta.help_ref], symbols[meta.unit_ref])
    if not metadata.is_empty():
        name = dict(labels).get("__name__", "")
        if name:
            out.families[family_of(name, metadata)] = metadata
        out.metadata += 1
    if histograms:
        h_stamps, values = rw.decode_histograms(histograms, out, limits)
        if h_stamps:
            append_series(out.histograms, labels, h_stamps, values)
            out.histogram_samples += len(h_stamps)
    else:
        floats = [s.value for s in samples]
        lo, hi = limits.min_timestamp_ms, limits.max_timestamp_ms
        if stamps[0] < lo or stamps[-1] > hi:
            keep = [k for k, t in enumerate(stamps) if lo <= t <= hi]
            out.drop("too_old", sum(1 for t in stamps if t < lo))
            out.drop("too_far_in_future", sum(1 for t in stamps if t > hi))
            stamps = [stamps[k] for k in keep]
            floats = [floats[k] for k in keep]
        if stamps:
            append_series(out.series, labels, stamps, floats)
            out.samples += len(stamps)
    if labels not in out.series and labels not in out.histograms:
        return  # every sample fell outside the window, and the series' extras go with them
    created = ts.created_timestamp or max(s.start_timestamp for s in (samples or histograms))
    if created:
        out.created[labels] = created
    if kept_exemplars:
        out.exemplars.setdefault(labels, []).extend(kept_exemplars)
        out.exemplar_count += len(kept_exemplars)


def _exemplar(i: int, ex: Any, symbols: list[str]) -> Exemplar:
    strings = _resolve(i, "exemplar label", ex.labels_refs, symbols)
    if not ex.timestamp:
        raise WireError(f"remote write 2.0: an exemplar of series {i} has no timestamp")
    names = strings[0::2]
    if not all(names) or len(set(names)) != len(names):
        raise WireError(f"remote write 2.0: an exemplar of series {i} has an empty or repeated label name")
    return Exemplar(tuple(sorted(zip(names, strings[1::2], strict=True))), ex.value, ex.timestamp)


class _Symbols:
    """A request's symbol table as it is built: each string once, "" first."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {"": 0}

    def ref(self, s: str) -> int:
        found = self.index.get(s)
        if found is None:
            found = self.index[s] = len(self.index)
        return found

    def refs(self, labels: Labels) -> list[int]:
        return [self.ref(part) for pair in labels for part in pair]


def encode(
    series: SeriesMap | None = None,
    histograms: hist.HistogramSeriesMap | None = None,
    metadata: MetadataMap | None = None,
    exemplars: ExemplarMap | None = None,
    created: dict[Labels, int] | None = None,
    max_samples_per_request: int = 0,
) -> list[bytes]:
    """Encode samples and histograms as snappy-compressed 2.0 ``Request`` bodies, as Prometheus 3 does.

    Each series gets the metadata of its family from ``metadata`` (see ``metadata.lookup``), its
    exemplars and created timestamp. With ``max_samples_per_request`` > 0 the samples and histograms
    are split into requests of at most that many, each with its own symbol table.
    """
    bodies: list[bytes] = []
    request = Request()
    symbols = _Symbols()
    in_request = 0
    families = metadata or {}

    def flush() -> None:
        nonlocal request, symbols, in_request
        request.symbols.extend(symbols.index)  # dicts keep insertion order: the refs' order
        bodies.append(bytes(cramjam.snappy.compress_raw(request.SerializeToString())))
        request, symbols, in_request = Request(), _Symbols(), 0

    items: list[tuple[Labels, list[int], list[Any], bool]] = [
        (labels, ts, vals, False) for labels, (ts, vals) in (series or {}).items()
    ] + [(labels, ts, vals, True) for labels, (ts, vals) in (histograms or {}).items()]
    for labels, stamps, values, is_histogram in items:
        start = 0
        first = True
        while start < len(stamps):
            room = len(stamps) - start
            if max_samples_per_request:
                room = min(room, max_samples_per_request - in_request)
            entry = request.timeseries.add()
            entry.labels_refs.extend(symbols.refs(labels))
            for k in range(start, start + room):
                if is_histogram:
                    hist.fill_proto(values[k], entry.histograms.add(), stamps[k])
                else:
                    entry.samples.add(value=values[k], timestamp=stamps[k])
            meta = lookup(dict(labels).get("__name__", ""), families)
            if meta is not None:
                entry.metadata.type = meta.type_number
                entry.metadata.help_ref = symbols.ref(meta.help)
                entry.metadata.unit_ref = symbols.ref(meta.unit)
            if created and labels in created:
                entry.created_timestamp = created[labels]
            if first and exemplars and labels in exemplars:
                for ex in exemplars[labels]:
                    entry.exemplars.add(labels_refs=symbols.refs(ex.labels), value=ex.value, timestamp=ex.timestamp_ms)
            first = False
            start += room
            in_request += room
            if max_samples_per_request and in_request >= max_samples_per_request:
                flush()
    if in_request or not bodies:
        flush()
    return bodies
