"""The columnar chunk: backhaul's unit of storage in the agent's buffer and of transfer in batches.

Layout of an uncompressed chunk, version 2 (all integers little-endian; see docs/wire-format.md):

    magic      b"BHK"          3 bytes
    version    u8              2
    n_series   u32
    n_samples  u32
    table_len  u32, then a UTF-8 JSON array with one flat array [name, value, name, value, ...]
               per series, label names sorted
    counts     n_series x u32, samples per series, in table order
    kinds      n_series x u8: 0 = the series' values are stored as floats, 1 + k = every value is a
               decimal with at most k fractional digits (k <= 15), stored as the integer value x 10^k
    times      n_samples x i64, byte-shuffled: the timestamp column (series after series) as
               delta-of-delta; the first entry is the first timestamp itself
    integers   u64 per sample of the decimal series, byte-shuffled: zigzag-encoded differences of
               the scaled integers, each series starting from 0
    floats     u64 per sample of the float series, byte-shuffled: each value's IEEE-754 bits XOR the
               previous value's bits in that column

Why two value columns: exporters print most values as short decimals (integer counters and gauges,
CPU seconds in hundredths, temperatures in thousandths, durations in nanoseconds), and the
difference of two such values as an integer is a few significant bits, where the XOR of their
IEEE-754 forms scatters bits across the mantissa. Values that are not short decimals (sums of floats,
ratios, NaN, infinities, -0.0) keep the XOR encoding. Either way every value keeps its exact bits:
a decimal n x 10^-k is decoded as the correctly rounded quotient n / 10^k, which is the value the
encoder verified. Regular scrapes make delta-of-delta zero, and byte-shuffling puts the bytes that
do vary next to each other, so zstd (the stored and sent form) squeezes every column hard.

Version 3 is version 2 plus native histograms and metadata: a series of kind 0x80 holds native
histograms (its timestamps in the times column like any other series, its histograms in a histogram
section after the floats column), and a metadata section follows:

    hist_len   u32, then the histogram section (layout below, at _encode_histograms)
    meta_len   u32, then UTF-8 JSON {family: [type, help, unit], ...} (backhaul.wire.metadata)

``n_samples`` counts float and histogram samples. The encoder writes version 2 whenever a chunk has
neither histograms nor metadata, so such chunks stay readable by older collectors.

Version 1 chunks (one XOR'd value column, no kinds) are still decoded: buffers written by an older
agent, and batches from one, stay readable.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import operator
import struct
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

import zstandard

from backhaul.wire import histogram as hist
from backhaul.wire.errors import TooLarge, WireError
from backhaul.wire.histogram import Histogram, HistogramSeriesMap
from backhaul.wire.metadata import MetadataMap, from_json, to_json
from backhaul.wire.series import Labels, SeriesMap

MAGIC = b"BHK"
VERSION = 2  # written for chunks of float samples only, which every reader so far takes
VERSION_HISTOGRAMS = 3  # written when a chunk also holds native histograms or metadata
_READABLE = (1, 2, 3)
_TABLED = (VERSION, VERSION_HISTOGRAMS)  # versions whose series table can be sent by reference
_HEADER = struct.Struct("<3sBII")
_U32 = struct.Struct("<I")
_LITTLE = sys.byteorder == "little"
MAX_DECIMALS = 15
# Scaled integers stay well inside the range where a float holds every integer exactly.
_MAX_SCALED = 2**52
FLOAT_KIND = 0
HISTOGRAM_KIND = 0x80  # version 3: the series' samples are native histograms


def _shuffle(column: array) -> bytes:  # type: ignore[type-arg]
    if not _LITTLE:
        column.byteswap()
    raw = column.tobytes()
    return b"".join(raw[i::8] for i in range(8))


def _unshuffle(data: bytes, typecode: str) -> array:  # type: ignore[type-arg]
    n = len(data) // 8
    raw = bytearray(len(data))
    for i in range(8):
        raw[i::8] = data[i * n : (i + 1) * n]
    column = array(typecode)
    column.frombytes(bytes(raw))
    if not _LITTLE:
        column.byteswap()
    return column


def decimal_scale(values: list[float]) -> int | None:
    """The fewest fractional digits k that hold every value exactly as n / 10^k, or None.

    None for NaN, infinities, -0.0 and values that are not short decimals (their exact bits would not
    survive). Exactness is checked, not assumed: n / 10^k is Python's correctly rounded integer
    division, the same one the decoder does.
    """
    k = 0
    scale = 1
    for v in values:
        while True:
            try:
                n = round(v * scale)
            except (ValueError, OverflowError):  # NaN or infinity
                return None
            if -_MAX_SCALED < n < _MAX_SCALED and n / scale == v:
                if n == 0 and math.copysign(1.0, v) < 0:
                    return None  # -0.0 == 0.0, but its sign bit must survive
                break
            k += 1
            if k > MAX_DECIMALS:
                return None
            scale *= 10
    # A value that fitted an earlier, smaller k must hold at the final one too (v x 10^k may have
    # outgrown the range where the product is exact).
    for v in values:
        n = round(v * scale)
        if not -_MAX_SCALED < n < _MAX_SCALED or n / scale != v:
            return None
    return k


_NEG_ZERO = array("d", [-0.0]).tobytes()


def _has_negative_zero(values: list[float]) -> bool:
    raw = array("d", values).tobytes()
    at = raw.find(_NEG_ZERO)
    while at != -1:
        if at % 8 == 0:
            return True
        at = raw.find(_NEG_ZERO, at + 1)
    return False


def scaled_integers(values: list[float]) -> tuple[int, list[int]] | None:
    """``(k, [v x 10^k ...])`` for the fewest digits k that hold every value exactly, or None.

    The same answer as :func:`decimal_scale`, computed a column at a time (list operations run in C)
    instead of value by value, since the encoder runs this for every series of every chunk.
    """
    try:
        if all(map(float.is_integer, values)):
            k, ns = 0, list(map(int, values))
        else:
            k0 = decimal_scale(values[:8])  # a few values tell the likely k, or that these are floats
            if k0 is None:
                return None
            scale = 10**k0
            ns = [round(v * scale) for v in values]
            if [n / scale for n in ns] != values:
                k1 = decimal_scale(values)  # some later value needs more digits (or is no decimal)
                if k1 is None:
                    return None
                scale = 10**k1
                k0, ns = k1, [round(v * scale) for v in values]
            k = k0
    except TypeError:  # an int among the values (float.is_integer wants floats)
        return scaled_integers([float(v) for v in values])
    except (ValueError, OverflowError):  # NaN or infinity
        return None
    if ns and (max(ns) >= _MAX_SCALED or min(ns) <= -_MAX_SCALED):
        return None
    if 0 in ns and _has_negative_zero(values):
        return None  # -0.0 == 0.0, but its sign bit must survive
    return k, ns


def _zigzag_deltas(ints: list[int]) -> list[int]:
    return [((b - a) << 1) ^ ((b - a) >> 63) for a, b in zip([0, *ints], ints, strict=False)]


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


_TABLE = _TableCache()


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


def encode(
    series: SeriesMap, histograms: HistogramSeriesMap | None = None, metadata: MetadataMap | None = None
) -> bytes:
    """Encode samples into an uncompressed chunk (use :class:`Codec` for the stored form).

    Floats only: a version 2 chunk, which every reader takes. With native histograms or metadata:
    version 3.
    """
    entries: list[bytes] = []
    counts = array("I")
    kinds = bytearray()
    stamps: list[int] = []
    integers = array("Q")
    floats: list[float] = []
    entry = _TABLE.entry
    for labels, (ts, vals) in series.items():
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
            if v.is_integer() and -_MAX_SCALED < v < _MAX_SCALED and (v or math.copysign(1.0, v) > 0):
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
            integers.extend(_zigzag_deltas(scaled[1]))

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
            section = _encode_histograms([hs for ts, hs in histograms.values() if ts])
        meta = to_json(metadata) if metadata else b""
        tail = b"".join((_U32.pack(len(section)), section, _U32.pack(len(meta)), meta))

    deltas = [b - a for a, b in zip([0, *stamps], stamps, strict=False)]
    dod = array("q", [b - a for a, b in zip([0, *deltas], deltas, strict=False)])
    bits = array("Q", array("d", floats).tobytes())
    xored = array("Q", [b ^ a for a, b in zip([0, *bits], bits, strict=False)])
    if not _LITTLE:
        counts.byteswap()
    table_bytes = b"[" + b",".join(entries) + b"]"
    return b"".join(
        (
            _HEADER.pack(MAGIC, version, len(entries), len(stamps)),
            _U32.pack(len(table_bytes)),
            table_bytes,
            counts.tobytes(),
            bytes(kinds),
            _shuffle(dod),
            _shuffle(integers),
            _shuffle(xored),
            tail,
        )
    )


# -- native histograms (version 3) ------------------------------------------------------------------
#
# The histogram section holds the samples of the histogram series, in table order:
#   heads   u8 per sample: bits 0-1 reset hint, bit 2 float histogram, bit 3 same layout as the
#           series' previous sample (schema, zero threshold, spans and custom bounds, and the same
#           integer/float kind); the other bits zero
#   n_ints u32, n_floats u32
#   ints    n_ints x u64, byte-shuffled, zigzag-encoded signed integers
#   floats  n_floats x u64, byte-shuffled IEEE-754 bits
# A series' samples form runs: a sample with a new layout and the samples after it that repeat it.
# A run writes its layout once (ints schema, n_pos_spans, offset, length, ..., n_neg_spans, offset,
# length, ..., n_custom; floats zero_threshold, custom bounds...), then its values field by field,
# each field for every sample of the run in time order (as a classic histogram's bucket series sit
# in a version 2 chunk, so buckets that move together make long repeats for zstd):
#   integer histogram, ints: count, zero_count, then each bucket (positive, then negative)
#   float histogram, floats: count, zero_count, then each bucket
#   every histogram, floats: sum
# A bucket is written as its count minus (integer) or XOR (float) the count of the same bucket in the
# series' previous sample. The first sample of a run does that too, by bucket index, when the
# previous sample is of the same kind, schema and custom bounds (a bucket it lacked counts 0: a
# histogram that gains a bucket keeps writing small increases); otherwise it writes the protobuf's
# deltas (integer) or the counts (float). A count, zero count or sum is relative to the series'
# previous sample (difference, or XOR of the bits) whenever that sample is of the same kind.

_Q = struct.Struct("<Q")
_D = struct.Struct("<d")
_HEAD_FLOAT = 4
_HEAD_SAME_LAYOUT = 8


def _fbits(v: float) -> int:
    result: int = _Q.unpack(_D.pack(v))[0]
    return result


def _from_bits(b: int) -> float:
    result: float = _D.unpack(_Q.pack(b))[0]
    return result


def _same_layout(a: Histogram, b: Histogram) -> bool:
    return (
        a.is_float == b.is_float
        and a.schema == b.schema
        and _fbits(a.zero_threshold) == _fbits(b.zero_threshold)
        and a.positive_spans == b.positive_spans
        and a.negative_spans == b.negative_spans
        and a.custom_values == b.custom_values
    )


def _absolute(h: Histogram) -> list[int]:
    """An integer histogram's bucket counts (positive, then negative) from its deltas."""
    return [*accumulate(map(int, h.positive)), *accumulate(map(int, h.negative))]


def _deltas(counts: list[int]) -> list[int]:
    return [b - a for a, b in zip([0, *counts], counts, strict=False)]


def _aligned(kin: Histogram | None, h: Histogram) -> list[float] | None:
    return _aligned_to(kin, h.schema, h.custom_values, h.positive_spans, h.negative_spans)


def _aligned_to(
    kin: Histogram | None, schema: int, custom: tuple[float, ...], pos_spans: hist.Spans, neg_spans: hist.Spans
) -> list[float] | None:
    """The counts ``kin`` has at each bucket of a new layout (0 where it has none), when ``kin`` is
    of the same schema and bounds; None otherwise. A histogram that gains a bucket keeps the others,
    so its run's first sample is still written as small increases."""
    if kin is None or kin.schema != schema or kin.custom_values != custom:
        return None
    out: list[float] = []
    for spans, buckets in ((pos_spans, kin.positive_buckets()), (neg_spans, kin.negative_buckets())):
        have = dict(buckets)
        index = 0
        for offset, length in spans:
            index += offset
            out.extend(have.get(i, 0) for i in range(index, index + length))
            index += length
    return out


def _runs(hs: list[Histogram]) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of samples sharing one layout."""
    starts = [i for i in range(len(hs)) if i == 0 or not _same_layout(hs[i - 1], hs[i])]
    return list(zip(starts, [*starts[1:], len(hs)], strict=True))


def _encode_histograms(per_series: list[list[Histogram]]) -> bytes:
    heads = bytearray()
    ints: list[int] = []
    fls: list[int] = []
    for hs in per_series:
        for start, end in _runs(hs):
            run = hs[start:end]
            first = run[0]
            before = hs[start - 1] if start else None
            heads.extend(
                (h.reset_hint & 3) | (_HEAD_FLOAT if h.is_float else 0) | (_HEAD_SAME_LAYOUT if k else 0)
                for k, h in enumerate(run)
            )
            ints.append(first.schema)
            for spans in (first.positive_spans, first.negative_spans):
                ints.append(len(spans))
                for offset, length in spans:
                    ints += (offset, length)
            ints.append(len(first.custom_values))
            fls.append(_fbits(first.zero_threshold))
            fls.extend(map(_fbits, first.custom_values))
            kin = before if before is not None and before.is_float == first.is_float else None
            aligned = _aligned(kin, first)
            if first.is_float:
                rows = [[_fbits(h.count), _fbits(h.zero_count), *map(_fbits, (*h.positive, *h.negative))] for h in run]
                base = [_fbits(kin.count), _fbits(kin.zero_count)] if kin else [0, 0]
                base += [_fbits(b) for b in aligned] if aligned is not None else [0] * (len(rows[0]) - 2)
                xored = [
                    [a ^ b for a, b in zip(row, prev_row, strict=True)]
                    for row, prev_row in zip(rows, [base, *rows], strict=False)
                ]
                for column in zip(*xored, strict=True):
                    fls.extend(column)
            else:
                absolute = [[int(h.count), int(h.zero_count), *_absolute(h)] for h in run]
                base_i = [int(kin.count), int(kin.zero_count)] if kin else [0, 0]
                if aligned is not None:
                    start_row = [a - int(b) for a, b in zip(absolute[0][2:], aligned, strict=True)]
                else:
                    start_row = list(map(int, (*first.positive, *first.negative)))
                diffs = [[absolute[0][0] - base_i[0], absolute[0][1] - base_i[1], *start_row]]
                diffs += [
                    [a - b for a, b in zip(absolute[k], absolute[k - 1], strict=True)] for k in range(1, len(run))
                ]
                for column_i in zip(*diffs, strict=True):
                    ints.extend(column_i)
            sums = [_fbits(h.sum) for h in run]
            previous_sum = _fbits(before.sum) if before is not None else 0
            fls.extend(b ^ a for a, b in zip([previous_sum, *sums], sums, strict=False))
    try:
        zigzag = array("Q", [(v << 1) ^ (v >> 63) for v in ints])
    except OverflowError:
        raise ValueError("a native histogram's counts do not fit in 64-bit integers") from None
    return b"".join(
        (
            bytes(heads),
            _U32.pack(len(ints)),
            _U32.pack(len(fls)),
            _shuffle(zigzag),
            _shuffle(array("Q", fls)),
        )
    )


def _decode_histograms(section: bytes, sizes: list[int]) -> list[list[Histogram]]:
    n_samples = sum(sizes)
    if len(section) < n_samples + 8:
        raise WireError("chunk: histogram section is shorter than its heads")
    heads = section[:n_samples]
    n_ints, n_floats = struct.unpack_from("<II", section, n_samples)
    start = n_samples + 8
    if len(section) != start + 8 * (n_ints + n_floats):
        raise WireError(f"chunk: histogram section of {len(section)} bytes, its counts announce more or less")
    if any(head & ~0xF for head in heads):
        raise WireError("chunk: a histogram head has unknown bits set")
    ints = iter([(z >> 1) ^ -(z & 1) for z in _unshuffle(section[start : start + 8 * n_ints], "Q")])
    fls = iter(_unshuffle(section[start + 8 * n_ints :], "Q"))
    take_int, take_float = ints.__next__, fls.__next__
    out: list[list[Histogram]] = []
    at = 0
    try:
        for size in sizes:
            series_heads = heads[at : at + size]
            at += size
            hs: list[Histogram] = []
            k = 0
            while k < size:
                end = k + 1
                while end < size and series_heads[end] & _HEAD_SAME_LAYOUT:
                    end += 1
                hs.extend(
                    _decode_run(series_heads[k:end], hs[-1] if hs else None, take_int, take_float, n_ints + n_floats)
                )
                k = end
            out.append(hs)
    except StopIteration:
        raise WireError("chunk: histogram columns end before the histograms do") from None
    if next(ints, None) is not None or next(fls, None) is not None:
        raise WireError("chunk: histogram columns hold more values than the histograms use")
    return out


def _decode_run(
    heads: bytes,
    before: Histogram | None,
    take_int: Callable[[], int],
    take_float: Callable[[], int],
    budget: int,
) -> list[Histogram]:
    if heads[0] & _HEAD_SAME_LAYOUT:
        raise WireError("chunk: a histogram repeats a layout it has no predecessor for")
    is_float = bool(heads[0] & _HEAD_FLOAT)
    if any(bool(head & _HEAD_FLOAT) != is_float for head in heads):
        raise WireError("chunk: a histogram repeats the layout of one of the other kind")
    schema = take_int()
    # List comprehensions, not generators: StopIteration must reach the caller's handler.
    pos_spans = tuple([(take_int(), take_int()) for _ in range(take_int())])
    neg_spans = tuple([(take_int(), take_int()) for _ in range(take_int())])
    n_custom = take_int()
    zero_threshold = _from_bits(take_float())
    custom = tuple([_from_bits(take_float()) for _ in range(n_custom)])
    n_pos = sum(length for _, length in pos_spans)
    n_neg = sum(length for _, length in neg_spans)
    n = len(heads)
    if not 0 <= n_pos + n_neg <= budget // n:
        raise WireError("chunk: a histogram's spans announce more buckets than the chunk holds")
    kin = before if before is not None and before.is_float == is_float else None
    aligned = _aligned_to(kin, schema, custom, pos_spans, neg_spans)
    width = 2 + n_pos + n_neg
    take = take_float if is_float else take_int
    columns = [[take() for _ in range(n)] for _ in range(width)]
    rows = [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in range(n)]
    sums = [take_float() for _ in range(n)]
    previous_sum = _fbits(before.sum) if before is not None else 0
    out: list[Histogram] = []
    previous: list[int] = []
    for k, row in enumerate(rows):
        buckets: list[float]
        if is_float:
            if k:
                row = [a ^ b for a, b in zip(row, previous, strict=True)]
            elif kin is not None:
                row[0] ^= _fbits(kin.count)
                row[1] ^= _fbits(kin.zero_count)
                if aligned is not None:
                    row[2:] = [a ^ _fbits(b) for a, b in zip(row[2:], aligned, strict=True)]
            previous = row
            count: float = _from_bits(row[0])
            zero_count: float = _from_bits(row[1])
            buckets = [_from_bits(b) for b in row[2:]]
        else:
            if k:
                row = [a + b for a, b in zip(row, previous, strict=True)]
                deltas = [*_deltas(row[2 : 2 + n_pos]), *_deltas(row[2 + n_pos :])]
            else:
                if kin is not None:
                    row[0] += int(kin.count)
                    row[1] += int(kin.zero_count)
                if aligned is not None:
                    row[2:] = [a + int(b) for a, b in zip(row[2:], aligned, strict=True)]
                    deltas = [*_deltas(row[2 : 2 + n_pos]), *_deltas(row[2 + n_pos :])]
                else:
                    deltas = row[2:]
                    row = [row[0], row[1], *accumulate(row[2 : 2 + n_pos]), *accumulate(row[2 + n_pos :])]
            previous = row
            count, zero_count = row[0], row[1]
            buckets = list(deltas)
        previous_sum ^= sums[k]
        h = Histogram(
            count=count,
            sum=_from_bits(previous_sum),
            schema=schema,
            zero_threshold=zero_threshold,
            zero_count=zero_count,
            positive_spans=pos_spans,
            positive=tuple(buckets[:n_pos]),
            negative_spans=neg_spans,
            negative=tuple(buckets[n_pos:]),
            reset_hint=heads[k] & 3,
            custom_values=custom,
            is_float=is_float,
        )
        # The layout is the run's: checked once, on its first sample.
        problem = (hist.layout_problem(h) if not k else None) or hist.counts_problem(h)
        if problem:
            raise WireError(f"chunk: {problem}")
        out.append(h)
    return out


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
    if len(data) < _HEADER.size + _U32.size:
        raise WireError(f"chunk: {len(data)} bytes is shorter than a chunk header")
    magic, version, n_series, n_samples = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError(f"chunk: bad magic {magic!r}")
    if version not in _READABLE:
        raise WireError(f"chunk: unsupported version {version} (this build reads {', '.join(map(str, _READABLE))})")
    (table_len,) = _U32.unpack_from(data, _HEADER.size)
    pos = _HEADER.size + _U32.size
    kinds_len = n_series if version >= 2 else 0
    if version < VERSION_HISTOGRAMS:
        expected = pos + table_len + 4 * n_series + kinds_len + 16 * n_samples
        if len(data) != expected:
            raise WireError(f"chunk: {len(data)} bytes, but its header announces {expected}")
    elif len(data) < pos + table_len + 5 * n_series + 8 * n_samples + 8:
        raise WireError(f"chunk: {len(data)} bytes is shorter than its header announces")
    try:
        table = json.loads(data[pos : pos + table_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"chunk: series table is not JSON ({exc})") from exc
    if not isinstance(table, list) or len(table) != n_series:
        raise WireError(f"chunk: series table does not hold {n_series} series")
    pos += table_len
    counts = array("I")
    counts.frombytes(data[pos : pos + 4 * n_series])
    if not _LITTLE:
        counts.byteswap()
    if sum(counts) != n_samples or 0 in counts:
        raise WireError(f"chunk: per-series counts do not add up to {n_samples} samples")
    pos += 4 * n_series
    kinds = data[pos : pos + kinds_len] if version >= 2 else bytes(n_series)
    if any(kind > 1 + MAX_DECIMALS and (kind != HISTOGRAM_KIND or version < VERSION_HISTOGRAMS) for kind in kinds):
        raise WireError(f"chunk: a value kind is above {1 + MAX_DECIMALS} and not a histogram")
    pos += kinds_len
    dod = _unshuffle(data[pos : pos + 8 * n_samples], "q")
    pos += 8 * n_samples
    stamps = list(accumulate(accumulate(dod)))
    n_integers = n_xored = 0
    for count, kind in zip(counts, kinds, strict=True):
        if kind == FLOAT_KIND:
            n_xored += count
        elif kind != HISTOGRAM_KIND:
            n_integers += count
    if version >= VERSION_HISTOGRAMS and pos + 8 * (n_integers + n_xored) + 8 > len(data):
        raise WireError(f"chunk: {len(data)} bytes is shorter than its value columns")
    # Undo zigzag for the whole column at once; the per-series work below is then slicing and sums.
    integers = [(z >> 1) ^ -(z & 1) for z in _unshuffle(data[pos : pos + 8 * n_integers], "Q")]
    pos += 8 * n_integers
    xored = _unshuffle(data[pos : pos + 8 * n_xored], "Q")
    pos += 8 * n_xored
    floats = array("d", array("Q", accumulate(xored, operator.xor)).tobytes()).tolist()

    out = Contents()
    histograms: list[list[Histogram]] = []
    if version >= VERSION_HISTOGRAMS:
        section = _section(data, pos, "histogram")
        pos += _U32.size + len(section)
        sizes = [count for count, kind in zip(counts, kinds, strict=True) if kind == HISTOGRAM_KIND]
        histograms = _decode_histograms(section, sizes) if sizes or section else []
        meta = _section(data, pos, "metadata")
        pos += _U32.size + len(meta)
        if pos != len(data):
            raise WireError(f"chunk: {len(data) - pos} bytes after the metadata")
        if meta:
            out.metadata = from_json(meta)

    start = int_at = float_at = h_at = 0
    for flat, count, kind in zip(table, counts, kinds, strict=True):
        labels = _labels(flat)
        end = start + count
        if kind == HISTOGRAM_KIND:
            h_entry = out.histograms.get(labels)
            if h_entry is None:
                out.histograms[labels] = (stamps[start:end], histograms[h_at])
            else:
                h_entry[0].extend(stamps[start:end])
                h_entry[1].extend(histograms[h_at])
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
        entry = out.series.get(labels)
        if entry is None:
            out.series[labels] = (stamps[start:end], values)
        else:  # the same series twice in one chunk is legal, if wasteful
            entry[0].extend(stamps[start:end])
            entry[1].extend(values)
        start = end
    return out


def _section(data: bytes, pos: int, what: str) -> bytes:
    if pos + _U32.size > len(data):
        raise WireError(f"chunk: the {what} section's length is missing")
    (length,) = _U32.unpack_from(data, pos)
    if pos + _U32.size + length > len(data):
        raise WireError(f"chunk: the {what} section runs past the chunk")
    return data[pos + _U32.size : pos + _U32.size + length]


_STR_ONLY = {str}


def _labels(flat: object) -> Labels:
    # set(map(type, ...)) runs in C: much cheaper than an isinstance() per item for every series.
    if type(flat) is not list or not flat or len(flat) % 2 or set(map(type, flat)) != _STR_ONLY:
        raise WireError("chunk: a series entry is not a non-empty list of label name/value strings")
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


class Codec:
    """zstd compression of chunks, with a hard cap on what decompression may produce.

    Args:
        level: zstd level for :meth:`compress` (3 is zstd's default; higher trades CPU for bytes).
    """

    def __init__(self, level: int = 3) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def compress(self, chunk: bytes) -> bytes:
        return bytes(self._compressor.compress(chunk))

    def decompress(self, frame: bytes, limit: int) -> bytes:
        """Decompress one zstd frame; more than ``limit`` bytes of output raises :class:`TooLarge`.

        Streaming with a bounded read means a decompression bomb costs at most ``limit`` bytes of
        memory, whatever size its frame header claims.
        """
        try:
            with self._decompressor.stream_reader(io.BytesIO(frame)) as reader:
                out = reader.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise WireError(f"zstd: {exc}") from exc
        if len(out) > limit:
            raise TooLarge("decompressed chunk", limit)
        return bytes(out)

    def encode(
        self, series: SeriesMap, histograms: HistogramSeriesMap | None = None, metadata: MetadataMap | None = None
    ) -> bytes:
        return self.compress(encode(series, histograms, metadata))

    def decode(self, frame: bytes, limit: int) -> SeriesMap:
        return decode(self.decompress(frame, limit))

    def decode_contents(self, frame: bytes, limit: int) -> Contents:
        return decode_contents(self.decompress(frame, limit))


# -- series tables sent by reference --------------------------------------------------------------------
#
# A device sends the same series over and over; in small batches the series table is most of the
# bytes. A collector that keeps tables (it says so in a reply header) lets the agent send a chunk
# without its table, naming the table by digest in the batch header (docs/wire-format.md).

TABLE_DIGEST_CHARS = 32


def table_digest(table: bytes) -> str:
    """The name a series table goes by: the first 128 bits of its SHA-256, in hex."""
    return hashlib.sha256(table).hexdigest()[:TABLE_DIGEST_CHARS]


def table_of(raw: bytes) -> bytes:
    """The series table of an uncompressed version 2 or 3 chunk (a slice: nothing else is copied)."""
    if len(raw) < _HEADER.size + _U32.size or raw[:3] != MAGIC or raw[3] not in _TABLED:
        raise WireError("chunk: not a version 2 or 3 chunk, its table cannot be split off")
    (table_len,) = _U32.unpack_from(raw, _HEADER.size)
    start = _HEADER.size + _U32.size
    if start + table_len > len(raw):
        raise WireError("chunk: series table runs past the chunk")
    return raw[start : start + table_len]


def split_table(raw: bytes) -> tuple[bytes, bytes]:
    """``(table, chunk without it)`` of an uncompressed version 2 or 3 chunk; the rest is left as it is."""
    table = table_of(raw)
    start = _HEADER.size + _U32.size
    return table, raw[: _HEADER.size] + _U32.pack(0) + raw[start + len(table) :]


def join_table(stripped: bytes, table: bytes) -> bytes:
    """The inverse of :func:`split_table`: put ``table`` back into a chunk sent without it."""
    if len(stripped) < _HEADER.size + _U32.size or stripped[:3] != MAGIC or stripped[3] not in _TABLED:
        raise WireError("chunk: a chunk sent without its table is not a version 2 or 3 chunk")
    if _U32.unpack_from(stripped, _HEADER.size)[0] != 0:
        raise WireError("chunk: a chunk sent by table reference still carries a table")
    start = _HEADER.size + _U32.size
    return stripped[: _HEADER.size] + _U32.pack(len(table)) + table + stripped[start:]
