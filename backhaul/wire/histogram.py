"""Native histograms: the in-memory shape, the rules a valid one follows, and schema reduction.

A :class:`Histogram` is one native-histogram sample as Prometheus' remote write (1.0's ``histograms``
field and 2.0 alike) and its protobuf exposition carry it: a count and a sum, a schema, a zero bucket,
and sparse buckets given as spans plus one population per bucket. For an *integer* histogram the
populations are the protobuf's deltas (each bucket's count minus the previous bucket's, the first
one's minus zero); for a *float* histogram they are the absolute counts. Keeping the protobuf's own
form means a histogram goes from remote write to a chunk and back to remote write without arithmetic.

Schemas (Prometheus' native histogram spec): -4..8 are the standard exponential schemas, bucket ``i``
has the upper bound ``(2 ** 2 ** -schema) ** i``; -53 means custom buckets, whose upper bounds are
``custom_values`` (bucket ``len(custom_values)`` is the +Inf overflow bucket), using the positive
buckets only. Schemas 9..52 are reserved for finer standard schemas: a receiver may take them by
merging buckets down to schema 8 (:func:`reduce_schema`); anything else is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate, pairwise
from typing import Any

from backhaul.wire.series import Labels

CUSTOM_BUCKETS_SCHEMA = -53
MIN_SCHEMA = -4
MAX_SCHEMA = 8
# Reserved for finer exponential schemas; taken by merging buckets down to MAX_SCHEMA.
MAX_REDUCIBLE_SCHEMA = 52

RESET_UNKNOWN, RESET_YES, RESET_NO, RESET_GAUGE = 0, 1, 2, 3
# Integer counts are kept below 2^63 so that every difference the chunk encoder takes fits in 64 bits.
_INT64 = 2**63

Spans = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Histogram:
    """One native-histogram sample.

    Args:
        count: observations (an int for an integer histogram; a float, possibly NaN, for a float one).
        sum: sum of the observations.
        schema: -4..8 exponential schemas, or -53 for custom buckets.
        zero_threshold: the zero bucket holds observations in [-zero_threshold, zero_threshold].
        zero_count: observations in the zero bucket (int or float, like ``count``).
        positive_spans: ``(offset, length)`` pairs: the first offset is the index of the first
            bucket, each later one the gap since the previous span.
        positive: one entry per bucket of the spans: deltas (integer histogram) or counts (float).
        negative_spans, negative: the same for negative observations (unused with custom buckets).
        reset_hint: 0 unknown, 1 counter reset, 2 no reset, 3 gauge histogram.
        custom_values: upper bounds of the custom buckets (schema -53 only), increasing.
        is_float: a float histogram (counts as floats) rather than an integer one.
    """

    count: float
    sum: float
    schema: int
    zero_threshold: float = 0.0
    zero_count: float = 0
    positive_spans: Spans = ()
    positive: tuple[float, ...] = ()
    negative_spans: Spans = ()
    negative: tuple[float, ...] = ()
    reset_hint: int = RESET_UNKNOWN
    custom_values: tuple[float, ...] = ()
    is_float: bool = False

    def bucket_count(self) -> int:
        return len(self.positive) + len(self.negative)

    def positive_buckets(self) -> list[tuple[int, float]]:
        """``(index, absolute count)`` of each positive bucket, in index order."""
        return list(_indexed(self.positive_spans, self.positive, self.is_float))

    def negative_buckets(self) -> list[tuple[int, float]]:
        return list(_indexed(self.negative_spans, self.negative, self.is_float))


HistogramSeriesMap = dict[Labels, tuple[list[int], list[Histogram]]]
"""A series' labels -> its timestamps (ms) and native-histogram samples, like :data:`SeriesMap`."""


def _indexed(spans: Spans, buckets: Sequence[float], is_float: bool) -> Iterator[tuple[int, float]]:
    counts: Sequence[float] = buckets if is_float else list(accumulate(buckets))
    at = index = 0
    for offset, length in spans:
        index += offset  # the first span's offset is an index, later ones the gap since the last bucket
        for _ in range(length):
            yield index, counts[at]
            at += 1
            index += 1


def from_indexed(buckets: Sequence[tuple[int, float]], is_float: bool) -> tuple[Spans, tuple[float, ...]]:
    """Spans and populations (deltas for an integer histogram) for ``(index, count)`` pairs in index
    order. Empty buckets are left out; each run of consecutive indices becomes one span."""
    spans: list[tuple[int, int]] = []
    values: list[float] = []
    previous_index = 0
    previous_count: float = 0
    for index, count in buckets:
        if not count:
            continue
        if spans and index == previous_index + 1:
            offset, length = spans[-1]
            spans[-1] = (offset, length + 1)
        else:
            spans.append((index if not spans else index - previous_index - 1, 1))
        values.append(count if is_float else count - previous_count)
        previous_index = index
        previous_count = count
    return tuple(spans), tuple(values)


def problem(h: Histogram) -> str | None:
    """Why ``h`` is not a valid native histogram (a malformed request), or None.

    Checks what Prometheus' own validation checks: a known schema; spans whose lengths add up to the
    number of buckets, with only the first offset negative; integer buckets that never go below zero
    and a count no smaller than the buckets hold; custom buckets with increasing finite bounds and no
    negative or zero buckets; a zero threshold that is a non-negative number.
    """
    return layout_problem(h) or counts_problem(h)


def layout_problem(h: Histogram) -> str | None:
    """The part of :func:`problem` that depends on the layout only (schema, zero threshold, spans,
    custom bounds): samples that share a layout need it checked once."""
    schema = h.schema
    if schema == CUSTOM_BUCKETS_SCHEMA:
        if h.negative_spans or h.negative or h.zero_threshold:
            return "a custom-bucket histogram (schema -53) has negative or zero buckets"
        bounds = h.custom_values
        if any(not math.isfinite(b) for b in bounds) or any(a >= b for a, b in pairwise(bounds)):
            return "a custom-bucket histogram's bounds are not finite and strictly increasing"
    elif not MIN_SCHEMA <= schema <= MAX_REDUCIBLE_SCHEMA:
        return f"a native histogram has the unknown schema {schema}"
    elif h.custom_values:
        return "an exponential histogram carries custom bucket bounds"
    if not h.zero_threshold >= 0:  # also false for NaN
        return "a native histogram's zero threshold is negative or NaN"
    for name, spans, buckets in (
        ("positive", h.positive_spans, h.positive),
        ("negative", h.negative_spans, h.negative),
    ):
        if any(length < 0 for _, length in spans):
            return f"a native histogram's {name} spans have a negative length"
        if sum(length for _, length in spans) != len(buckets):
            return f"a native histogram's {name} spans cover {sum(n for _, n in spans)} buckets, it has {len(buckets)}"
        if any(offset < 0 for offset, _ in spans[1:]):
            return f"a native histogram's {name} spans after the first have a negative offset"
    if schema == CUSTOM_BUCKETS_SCHEMA and h.positive_spans:
        if h.positive_spans[0][0] < 0:
            return "a custom-bucket histogram has a negative bucket index"
        last = sum(offset + length for offset, length in h.positive_spans) - 1
        if last > len(h.custom_values):
            return f"a custom-bucket histogram has bucket {last} but only {len(h.custom_values)} bounds"
    return None


def counts_problem(h: Histogram) -> str | None:
    """The part of :func:`problem` about the counts, the reset hint and the zero bucket's count."""
    if h.reset_hint not in (RESET_UNKNOWN, RESET_YES, RESET_NO, RESET_GAUGE):
        return f"a native histogram has the unknown reset hint {h.reset_hint}"
    if h.schema == CUSTOM_BUCKETS_SCHEMA and h.zero_count:
        return "a custom-bucket histogram (schema -53) has negative or zero buckets"
    if h.is_float:
        if any(not c >= 0 for c in (*h.positive, *h.negative)):
            return "a float histogram has a negative or NaN bucket count"
        if h.count < 0 or h.zero_count < 0:
            return "a float histogram has a negative count"
        return None
    if not 0 <= h.count < _INT64 or not 0 <= h.zero_count < _INT64:
        return "an integer histogram's count is negative or beyond 2^63"
    populated = h.zero_count
    for buckets in (h.positive, h.negative):
        if buckets:
            counts = list(accumulate(buckets))
            if min(counts) < 0:
                return "an integer histogram has a bucket whose count is negative"
            populated += sum(counts)
    if h.count < populated:
        return f"an integer histogram counts {h.count} observations but its buckets hold {populated}"
    return None


def reduce_schema(h: Histogram, target: int = MAX_SCHEMA) -> Histogram:
    """``h`` at the coarser schema ``target``, its buckets merged; ``h`` itself if already there.

    At schema s bucket i is ``(2**2**-s)**(i-1) < x <= (2**2**-s)**i``; one step coarser, buckets
    2j-1 and 2j make bucket j, so i lands in ``ceil(i / 2**d)``, which is ``((i - 1) >> d) + 1``.
    """
    d = h.schema - target
    if h.schema == CUSTOM_BUCKETS_SCHEMA or d <= 0:
        return h

    def merge(buckets: list[tuple[int, float]]) -> tuple[Spans, tuple[float, ...]]:
        merged: dict[int, float] = {}
        for index, count in buckets:
            key = ((index - 1) >> d) + 1
            merged[key] = merged.get(key, 0) + count
        return from_indexed(sorted(merged.items()), h.is_float)

    positive_spans, positive = merge(h.positive_buckets())
    negative_spans, negative = merge(h.negative_buckets())
    return replace(
        h,
        schema=target,
        positive_spans=positive_spans,
        positive=positive,
        negative_spans=negative_spans,
        negative=negative,
    )


# -- protobuf (remote write 1.0 and 2.0 share the Histogram message, field for field) -------------------


def from_proto(msg: Any) -> Histogram:
    """A :class:`Histogram` from a ``prometheus.Histogram`` or ``io.prometheus.write.v2.Histogram``.

    Raises ValueError (the caller's decoder turns it into a WireError) when the integer and float
    forms are mixed: counts of one kind with buckets or a zero count of the other.
    """
    is_float = msg.WhichOneof("count") == "count_float"
    zero_kind = msg.WhichOneof("zero_count")
    if is_float:
        if msg.positive_deltas or msg.negative_deltas or zero_kind == "zero_count_int":
            raise ValueError("a float histogram carries integer buckets or an integer zero count")
        count: float = msg.count_float
        zero_count: float = msg.zero_count_float
        positive: tuple[float, ...] = tuple(msg.positive_counts)
        negative: tuple[float, ...] = tuple(msg.negative_counts)
    else:
        if msg.positive_counts or msg.negative_counts or zero_kind == "zero_count_float":
            raise ValueError("an integer histogram carries float buckets or a float zero count")
        count = msg.count_int
        zero_count = msg.zero_count_int
        positive = tuple(msg.positive_deltas)
        negative = tuple(msg.negative_deltas)
    return Histogram(
        count=count,
        sum=msg.sum,
        schema=msg.schema,
        zero_threshold=msg.zero_threshold,
        zero_count=zero_count,
        positive_spans=tuple((s.offset, s.length) for s in msg.positive_spans),
        positive=positive,
        negative_spans=tuple((s.offset, s.length) for s in msg.negative_spans),
        negative=negative,
        reset_hint=msg.reset_hint,
        custom_values=tuple(msg.custom_values),
        is_float=is_float,
    )


def fill_proto(h: Histogram, msg: Any, timestamp_ms: int) -> None:
    """Write ``h`` into an empty protobuf Histogram message (either remote-write version)."""
    if h.is_float:
        msg.count_float = h.count
        msg.zero_count_float = h.zero_count
        msg.positive_counts.extend(h.positive)
        msg.negative_counts.extend(h.negative)
    else:
        msg.count_int = int(h.count)
        msg.zero_count_int = int(h.zero_count)
        msg.positive_deltas.extend(int(d) for d in h.positive)
        msg.negative_deltas.extend(int(d) for d in h.negative)
    msg.sum = h.sum
    msg.schema = h.schema
    msg.zero_threshold = h.zero_threshold
    for offset, length in h.positive_spans:
        msg.positive_spans.add(offset=offset, length=length)
    for offset, length in h.negative_spans:
        msg.negative_spans.add(offset=offset, length=length)
    msg.reset_hint = h.reset_hint
    msg.custom_values.extend(h.custom_values)
    msg.timestamp = timestamp_ms
