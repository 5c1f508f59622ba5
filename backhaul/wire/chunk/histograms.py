"""The histogram section of a version 3 chunk: the samples of its native-histogram series.

The section holds the samples of the histogram series (kind 0x80), in table order:

    heads   u8 per sample: bits 0-1 reset hint, bit 2 float histogram, bit 3 same layout as the
            series' previous sample (schema, zero threshold, spans and custom bounds, and the same
            integer/float kind); the other bits zero
    n_ints  u32, n_floats u32
    ints    n_ints x u64, byte-shuffled, zigzag-encoded signed integers
    floats  n_floats x u64, byte-shuffled IEEE-754 bits

A series' samples form runs: a sample with a new layout and the samples after it that repeat it.
A run writes its layout once (ints schema, n_pos_spans, offset, length, ..., n_neg_spans, offset,
length, ..., n_custom; floats zero_threshold, custom bounds...), then its values field by field,
each field for every sample of the run in time order (as a classic histogram's bucket series sit
in a version 2 chunk, so buckets that move together make long repeats for zstd):

    integer histogram, ints: count, zero_count, then each bucket (positive, then negative)
    float histogram, floats: count, zero_count, then each bucket
    every histogram, floats: sum

A bucket is written as its count minus (integer) or XOR (float) the count of the same bucket in the
series' previous sample. The first sample of a run does that too, by bucket index, when the
previous sample is of the same kind, schema and custom bounds (a bucket it lacked counts 0: a
histogram that gains a bucket keeps writing small increases); otherwise it writes the protobuf's
deltas (integer) or the counts (float). A count, zero count or sum is relative to the series'
previous sample (difference, or XOR of the bits) whenever that sample is of the same kind.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from itertools import accumulate

from backhaul.wire import histogram as hist
from backhaul.wire.chunk.columns import shuffle, unshuffle
from backhaul.wire.chunk.header import U32
from backhaul.wire.errors import WireError
from backhaul.wire.histogram import Histogram

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


def encode_histograms(per_series: list[list[Histogram]]) -> bytes:
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
            U32.pack(len(ints)),
            U32.pack(len(fls)),
            shuffle(zigzag),
            shuffle(array("Q", fls)),
        )
    )


def decode_histograms(section: bytes, sizes: list[int]) -> list[list[Histogram]]:
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
    ints = iter([(z >> 1) ^ -(z & 1) for z in unshuffle(section[start : start + 8 * n_ints], "Q")])
    fls = iter(unshuffle(section[start + 8 * n_ints :], "Q"))
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
