"""Native histograms for tests: the spec's example, Hypothesis strategies, comparison by bits (NaN sums
must survive too), and damaged bytes for the decoders."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from hypothesis import strategies as st

from backhaul.wire.histogram import CUSTOM_BUCKETS_SCHEMA, Histogram

# The native histogram spec's example: -2→3, -1→5, 2→1, 4→3, 5→2.
LATENCY = Histogram(
    count=15,
    sum=3.25,
    schema=3,
    zero_threshold=2.0**-128,
    zero_count=1,
    positive_spans=((-2, 2), (2, 1), (1, 2)),
    positive=(3, 2, -4, 2, -1),
)

STALE = struct.unpack("<d", (0x7FF0000000000002).to_bytes(8, "little"))[0]


def fbits(v: float) -> bytes:
    return struct.pack("<d", v)


def key(h: Histogram) -> tuple[tuple[str, object], ...]:
    """Everything a histogram holds, floats as their bits."""
    out = []
    for f in dataclasses.fields(h):
        v = getattr(h, f.name)
        if isinstance(v, float):
            v = fbits(v)
        elif isinstance(v, tuple) and v and isinstance(v[0], float):
            v = tuple(fbits(x) for x in v)
        out.append((f.name, v))
    return tuple(out)


def spans_of(indices: list[int]) -> tuple[tuple[int, int], ...]:
    """Spans covering sorted, distinct ``indices`` (a run of consecutive indices per span)."""
    spans: list[tuple[int, int]] = []
    prev = None
    for i in indices:
        if prev is not None and i == prev + 1:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((i if prev is None else i - prev - 1, 1))
        prev = i
    return tuple(spans)


def deltas(counts: list[int]) -> tuple[int, ...]:
    return tuple(b - a for a, b in zip([0, *counts], counts, strict=False))


any_float = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([STALE, -0.0, 0.0])


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, Any]:
    """Schema, zero threshold, bucket indices and custom bounds of a valid histogram."""
    if draw(st.integers(0, 4)) == 0:
        bounds = sorted(set(draw(st.lists(st.floats(-1e9, 1e9, allow_nan=False), max_size=12))))
        pos = sorted(set(draw(st.lists(st.integers(0, len(bounds)), max_size=len(bounds) + 1))))
        return {"schema": CUSTOM_BUCKETS_SCHEMA, "zero_threshold": 0.0, "pos": pos, "neg": [], "custom": tuple(bounds)}
    return {
        "schema": draw(st.integers(-4, 8)),
        "zero_threshold": draw(st.sampled_from([0.0, 1e-128, 2.0**-10]) | st.floats(0, 1e3)),
        "pos": sorted(set(draw(st.lists(st.integers(-40, 40), max_size=25)))),
        "neg": sorted(set(draw(st.lists(st.integers(-40, 40), max_size=8)))),
        "custom": (),
    }


@st.composite
def histogram_with(draw: st.DrawFn, layout: dict[str, Any], is_float: bool) -> Histogram:
    custom = layout["schema"] == CUSTOM_BUCKETS_SCHEMA
    if is_float:
        count_st = st.floats(0, 1e12)
        pos = [draw(count_st) for _ in layout["pos"]]
        neg = [draw(count_st) for _ in layout["neg"]]
        zero = 0.0 if custom else draw(count_st)
        count = draw(st.floats(0, 1e15) | st.just(STALE))
        positive, negative = tuple(pos), tuple(neg)
    else:
        count_st = st.integers(0, 10**12)
        pos_i = [draw(count_st) for _ in layout["pos"]]
        neg_i = [draw(count_st) for _ in layout["neg"]]
        zero_i = 0 if custom else draw(count_st)
        count = zero_i + sum(pos_i) + sum(neg_i) + draw(st.integers(0, 5))  # NaN observations
        positive, negative, zero = deltas(pos_i), deltas(neg_i), zero_i
    return Histogram(
        count=count,
        sum=draw(any_float),
        schema=layout["schema"],
        zero_threshold=layout["zero_threshold"],
        zero_count=zero,
        positive_spans=spans_of(layout["pos"]),
        positive=positive,
        negative_spans=spans_of(layout["neg"]),
        negative=negative,
        reset_hint=draw(st.integers(0, 3)),
        custom_values=layout["custom"],
        is_float=is_float,
    )


@st.composite
def histograms(draw: st.DrawFn) -> Histogram:
    return draw(histogram_with(draw(layouts()), draw(st.booleans())))


@st.composite
def histogram_runs(draw: st.DrawFn, max_size: int = 12) -> list[Histogram]:
    """Samples of one series: mostly the same layout sample after sample (as a regular scrape gives),
    now and then a new layout or a switch between integer and float."""
    layout = draw(layouts())
    is_float = draw(st.booleans())
    out = []
    for _ in range(draw(st.integers(1, max_size))):
        change = draw(st.integers(0, 9))
        if change == 0:
            layout = draw(layouts())
        elif change == 1:
            is_float = not is_float
        out.append(draw(histogram_with(layout, is_float)))
    return out


def damaged(data: st.DataObject, good: bytes, most: int) -> bytes:
    """``good`` with 1 to ``most`` bytes overwritten, and cut short half the time."""
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, most))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    return bytes(raw)
