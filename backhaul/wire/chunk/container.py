"""A whole chunk: :class:`Contents` to uncompressed chunk bytes and back.

The byte layout (header, series table, counts, kinds, columns; in version 3 the histogram section and
the metadata section) is in ``chunk.header``; the columns' in ``chunk.columns``, the histogram
section's in ``chunk.histograms``. The metadata section is the JSON of ``backhaul.wire.metadata``.
"""

from __future__ import annotations

import json
import math
import operator
from array import array
from dataclasses import dataclass, field
from itertools import accumulate, compress
from typing import cast

from backhaul.wire.chunk.columns import (
    LITTLE,
    MAX_DECIMALS,
    MAX_SCALED,
    sample_counts,
    scaled_integers,
    shuffle,
    single_columns,
    unshuffle,
    zigzag_deltas,
)
from backhaul.wire.chunk.header import (
    FLOAT_KIND,
    HEADER,
    HISTOGRAM_KIND,
    MAGIC,
    MAX_ABS_TIMESTAMP_MS,
    PREFIX_LEN,
    U32,
    VERSION,
    VERSION_HISTOGRAMS,
    shape,
)
from backhaul.wire.chunk.histograms import decode_histograms, encode_histograms
from backhaul.wire.errors import WireError
from backhaul.wire.histogram import Histogram, HistogramSeriesMap
from backhaul.wire.jsonpart import json_part
from backhaul.wire.metadata import MetadataMap, from_json, to_json
from backhaul.wire.series import Labels, PairPool, SeriesMap, append_series, merge_into, pooled


class _TableCache:
    """Each series' JSON table entry, kept across chunks: the agent encodes the same series in every
    group commit, and formatting their labels was a good share of a commit's CPU. Bounded: when full
    it starts over."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._max_entries = max_entries
        self._entries: dict[Labels, bytes] = {}

    def entry(self, labels: Labels) -> bytes:
        found = self._entries.get(labels)
        if found is None:
            found = json.dumps(
                [part for pair in labels for part in pair], separators=(",", ":"), ensure_ascii=False
            ).encode()
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[labels] = found
        return found

    def entries(self, series: list[Labels]) -> list[bytes]:
        """:meth:`entry` of each; those already kept are looked up in C."""
        found = list(map(self._entries.get, series))
        if None in found:
            return [known or self.entry(labels) for known, labels in zip(found, series, strict=True)]
        return cast(list[bytes], found)


_TABLE = _TableCache()


class _DecodedTables:
    """Decoded series tables by their bytes. The agent merges chunks whose series table is the same
    commit after commit (one node_exporter page: the same 507 series), and building their label
    tuples was a quarter of its CPU at a 5 s scrape (py-spy, issue 16). Exact bytes give exactly the
    same labels, so a hit is safe whoever sent the chunk.

    A table is kept once it has been seen twice: at 10k series a table is ~1 MB, too big to keep
    every one on sight, and under series churn no table comes again. Bounded by the tables' bytes:
    when full it starts over (atomically: the collector decodes on more than one thread)."""

    def __init__(self, max_bytes: int = 4 << 20, max_seen: int = 256) -> None:
        self._max_bytes = max_bytes
        self._max_seen = max_seen
        self._bytes = 0
        self._entries: dict[bytes, tuple[Labels, ...]] = {}
        self._seen: set[int] = set()  # hashes of tables decoded once; a collision only admits early

    def labels(self, raw: bytes, n_series: int) -> tuple[Labels, ...]:
        found = self._entries.get(raw)
        if found is not None:
            return found
        table = json_part(raw, "chunk: series table", list)
        if len(table) != n_series:
            raise WireError(f"chunk: series table does not hold {n_series} series")
        pool: PairPool = {}
        found = tuple(_labels(flat, pool) for flat in table)
        key = hash(raw)
        if key not in self._seen:
            if len(self._seen) >= self._max_seen:
                self._seen = set()
            self._seen.add(key)
        elif len(raw) <= self._max_bytes // 2:
            if self._bytes + len(raw) > self._max_bytes:
                self._entries = {}
                self._bytes = 0
            self._entries[raw] = found
            self._bytes += len(raw)
        return found


_DECODED = _DecodedTables()


@dataclass
class Contents:
    """Everything a chunk holds.

    Args:
        series: float samples.
        histograms: native-histogram samples (version 3 only).
        metadata: metric-family metadata (version 3 only).
    """

    series: SeriesMap = field(default_factory=dict)
    histograms: HistogramSeriesMap = field(default_factory=dict)
    metadata: MetadataMap = field(default_factory=dict)

    def samples(self) -> int:
        """Float samples and histogram samples together (what the chunk header's n_samples counts)."""
        return sum(len(ts) for ts, _ in self.series.values()) + sum(len(ts) for ts, _ in self.histograms.values())

    def add(self, part: Contents) -> None:
        """Append ``part``'s samples series by series; its metadata replaces what this holds."""
        merge_into(self.series, part.series)
        merge_into(self.histograms, part.histograms)
        self.metadata.update(part.metadata)


def encode(
    series: SeriesMap, histograms: HistogramSeriesMap | None = None, metadata: MetadataMap | None = None
) -> bytes:
    """Encode samples into an uncompressed chunk (use :class:`Codec` for the stored form).

    Floats only: a version 2 chunk, which every reader takes. With native histograms or metadata:
    version 3.
    """
    entries, counts, kinds, stamps, integers, floats = _float_columns(series)
    entry = _TABLE.entry

    version = VERSION
    tail = b""
    if histograms or metadata:
        version = VERSION_HISTOGRAMS
        section = b""
        if histograms:
            for labels, (ts, hs) in histograms.items():
                if len(ts) != len(hs):
                    raise ValueError(f"series {labels!r}: {len(ts)} timestamps but {len(hs)} histograms")
                if ts:
                    entries.append(entry(labels))
                    counts.append(len(ts))
                    kinds.append(HISTOGRAM_KIND)
                    stamps.extend(ts)
            section = encode_histograms([hs for ts, hs in histograms.values() if ts])
        meta = to_json(metadata) if metadata else b""
        tail = b"".join((U32.pack(len(section)), section, U32.pack(len(meta)), meta))

    deltas = [b - a for a, b in zip([0, *stamps], stamps, strict=False)]
    dod = array("q", [b - a for a, b in zip([0, *deltas], deltas, strict=False)])
    bits = array("Q", array("d", floats).tobytes())
    xored = array("Q", [b ^ a for a, b in zip([0, *bits], bits, strict=False)])
    if not LITTLE:
        counts.byteswap()
    table_bytes = b"[" + b",".join(entries) + b"]"
    return b"".join(
        (
            HEADER.pack(MAGIC, version, len(entries), len(stamps)),
            U32.pack(len(table_bytes)),
            table_bytes,
            counts.tobytes(),
            bytes(kinds),
            shuffle(dod),
            shuffle(integers),
            shuffle(xored),
            tail,
        )
    )


_Columns = tuple[list[bytes], "array[int]", bytearray, list[int], "array[int]", list[float]]
_first = operator.itemgetter(0)
_Entry = tuple[list[int], list[float]]


def _float_columns(series: SeriesMap) -> _Columns:
    """The float series' columns. Series of one sample each go first, a column at a time, and the
    rest after them, series by series: a group commit of remote-write requests holds mostly the
    former (a request that spans two scrapes of a shard brings some of its series twice). The order
    of series in a chunk is free; each keeps its own samples' order."""
    items = list(series.items())
    single = [len(entry[0]) == 1 for entry in series.values()]
    n_single = sum(single)
    if n_single == len(items):
        return _single_sample_columns(items) or _columns(items)
    if n_single < len(items) // 2:
        return _columns(items)
    first = _single_sample_columns(list(compress(items, single)))
    if first is None:
        return _columns(items)
    rest = _columns(list(compress(items, map(operator.not_, single))))
    entries, counts, kinds, stamps, integers, floats = first
    more_entries, more_counts, more_kinds, more_stamps, more_integers, more_floats = rest
    entries += more_entries
    counts += more_counts
    kinds += more_kinds
    stamps += more_stamps
    integers += more_integers
    floats += more_floats
    return entries, counts, kinds, stamps, integers, floats


def _single_sample_columns(items: list[tuple[Labels, _Entry]]) -> _Columns | None:
    """The columns of series that hold one sample each, a column at a time: what a group commit of
    remote-write requests usually encodes. None for anything else."""
    if not items:
        return None
    labels, entries = zip(*items, strict=True)
    stamps, values = zip(*entries, strict=True)
    if set(map(len, stamps)) != {1} or set(map(len, values)) != {1}:
        return None
    kinds, integers, floats = single_columns(list(map(float, map(_first, values))))
    counts = array("I", [1]) * len(stamps)
    return _TABLE.entries(list(labels)), counts, kinds, list(map(_first, stamps)), array("Q", integers), floats


def _columns(items: list[tuple[Labels, _Entry]]) -> _Columns:
    """The columns, series by series."""
    entries: list[bytes] = []
    counts = array("I")
    kinds = bytearray()
    stamps: list[int] = []
    integers = array("Q")
    floats: list[float] = []
    entry = _TABLE.entry
    for labels, (ts, vals) in items:
        n = len(ts)
        if n != len(vals):
            raise ValueError(f"series {labels!r}: {n} timestamps but {len(vals)} values")
        if not n:
            continue
        entries.append(entry(labels))
        counts.append(n)
        stamps.extend(ts)
        if n == 1:  # one sample per series, as a single remote-write request brings: the common case
            v = float(vals[0])
            if v.is_integer() and -MAX_SCALED < v < MAX_SCALED and (v or math.copysign(1.0, v) > 0):
                kinds.append(1)
                i = int(v)
                integers.append((i << 1) ^ (i >> 63))
                continue
        scaled = scaled_integers(vals)
        if scaled is None:
            kinds.append(FLOAT_KIND)
            floats.extend(vals)
        else:
            kinds.append(1 + scaled[0])
            integers.extend(zigzag_deltas(scaled[1]))
    return entries, counts, kinds, stamps, integers, floats


def decode(data: bytes) -> SeriesMap:
    """Decode an uncompressed chunk's float samples; raises :class:`WireError` naming what is malformed.

    A version 3 chunk that holds native histograms is refused: a reader that only takes floats must
    not drop them unnoticed (use :func:`decode_contents`). Its metadata is left out.
    """
    contents = decode_contents(data)
    if contents.histograms:
        raise WireError("chunk: holds native histograms, which this reader does not take")
    return contents.series


def decode_contents(data: bytes) -> Contents:
    """Decode an uncompressed chunk of any readable version into its :class:`Contents`."""
    declared = shape(data)
    version, n_series, n_samples = declared.version, declared.n_series, declared.n_samples
    table_len = declared.table_len
    pos = PREFIX_LEN
    kinds_len = n_series if version >= 2 else 0
    if version < VERSION_HISTOGRAMS:
        if len(data) != declared.min_len:  # versions 1 and 2 have no variable part: exactly this long
            raise WireError(f"chunk: {len(data)} bytes, but its header announces {declared.min_len}")
    elif len(data) < declared.min_len:
        raise WireError(f"chunk: {len(data)} bytes is shorter than its header announces")
    table = _DECODED.labels(data[pos : pos + table_len], n_series)
    pos += table_len
    counts = sample_counts(data, pos, n_series, n_samples)
    pos += 4 * n_series
    kinds = data[pos : pos + kinds_len] if version >= 2 else bytes(n_series)
    if any(kind > 1 + MAX_DECIMALS and (kind != HISTOGRAM_KIND or version < VERSION_HISTOGRAMS) for kind in kinds):
        raise WireError(f"chunk: a value kind is above {1 + MAX_DECIMALS} and not a histogram")
    pos += kinds_len
    dod = unshuffle(data[pos : pos + 8 * n_samples], "q")
    pos += 8 * n_samples
    stamps = list(accumulate(accumulate(dod)))
    # Delta-of-delta sums grow without bound in Python: a chunk can spell 2**70. Beyond +-2**53 ms
    # (year 285,000) a timestamp is no date, and beyond 2**63 no database column holds it.
    if stamps and (min(stamps) < -MAX_ABS_TIMESTAMP_MS or max(stamps) > MAX_ABS_TIMESTAMP_MS):
        bad = min(stamps) if min(stamps) < -MAX_ABS_TIMESTAMP_MS else max(stamps)
        raise WireError(f"chunk: timestamp {bad} is outside +-2**53 ms")
    n_integers = n_xored = 0
    for count, kind in zip(counts, kinds, strict=True):
        if kind == FLOAT_KIND:
            n_xored += count
        elif kind != HISTOGRAM_KIND:
            n_integers += count
    if version >= VERSION_HISTOGRAMS and pos + 8 * (n_integers + n_xored) + 8 > len(data):
        raise WireError(f"chunk: {len(data)} bytes is shorter than its value columns")
    # Undo zigzag for the whole column at once; the per-series work below is then slicing and sums.
    integers = [(z >> 1) ^ -(z & 1) for z in unshuffle(data[pos : pos + 8 * n_integers], "Q")]
    pos += 8 * n_integers
    xored = unshuffle(data[pos : pos + 8 * n_xored], "Q")
    pos += 8 * n_xored
    floats = array("d", array("Q", accumulate(xored, operator.xor)).tobytes()).tolist()

    out = Contents()
    histograms: list[list[Histogram]] = []
    if version >= VERSION_HISTOGRAMS:
        section = _section(data, pos, "histogram")
        pos += U32.size + len(section)
        sizes = [count for count, kind in zip(counts, kinds, strict=True) if kind == HISTOGRAM_KIND]
        histograms = decode_histograms(section, sizes) if sizes or section else []
        meta = _section(data, pos, "metadata")
        pos += U32.size + len(meta)
        if pos != len(data):
            raise WireError(f"chunk: {len(data) - pos} bytes after the metadata")
        if meta:
            out.metadata = from_json(meta)

    start = int_at = float_at = h_at = 0
    for labels, count, kind in zip(table, counts, kinds, strict=True):
        end = start + count
        if kind == HISTOGRAM_KIND:
            append_series(out.histograms, labels, stamps[start:end], histograms[h_at])
            h_at += 1
            start = end
            continue
        values: list[float]
        if kind == FLOAT_KIND:
            values = floats[float_at : float_at + count]
            float_at += count
        elif count == 1:
            values = [integers[int_at] / 10 ** (kind - 1)]
            int_at += 1
        else:
            scale = 10 ** (kind - 1)
            ints = accumulate(integers[int_at : int_at + count])
            values = [float(n) for n in ints] if scale == 1 else [n / scale for n in ints]
            int_at += count
        append_series(out.series, labels, stamps[start:end], values)  # twice in one chunk: legal, if wasteful
        start = end
    return out


def _section(data: bytes, pos: int, what: str) -> bytes:
    if pos + U32.size > len(data):
        raise WireError(f"chunk: the {what} section's length is missing")
    (length,) = U32.unpack_from(data, pos)
    if pos + U32.size + length > len(data):
        raise WireError(f"chunk: the {what} section runs past the chunk")
    return data[pos + U32.size : pos + U32.size + length]


_STR_ONLY = {str}


def _labels(flat: object, pool: PairPool) -> Labels:
    # set(map(type, ...)) runs in C: much cheaper than an isinstance() per item for every series.
    if type(flat) is not list or not flat or len(flat) % 2 or set(map(type, flat)) != _STR_ONLY:
        raise WireError("chunk: a series entry is not a non-empty list of label name/value strings")
    return pooled(zip(flat[0::2], flat[1::2], strict=True), pool)
