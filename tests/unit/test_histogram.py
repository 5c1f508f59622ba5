"""Native histograms: validation, schema reduction, and their chunk encoding (version 3)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backhaul.wire import WireError, chunk
from backhaul.wire import histogram as hist
from backhaul.wire.histogram import Histogram
from backhaul.wire.metadata import Metadata
from backhaul.wire.series import SeriesMap
from tests.unit.histograms import LATENCY, damaged, histogram_runs, histograms, key

NOW = 1_700_000_000_000
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_spec_example_maps_buckets_to_their_indices():
    assert LATENCY.positive_buckets() == [(-2, 3), (-1, 5), (2, 1), (4, 3), (5, 2)]
    assert hist.from_indexed(LATENCY.positive_buckets(), is_float=False) == (LATENCY.positive_spans, LATENCY.positive)
    assert hist.problem(LATENCY) is None


@given(histograms())
@SETTINGS
def test_generated_histograms_are_valid_and_their_buckets_round_trip(h):
    assert hist.problem(h) is None
    for spans, buckets, indexed in (
        (h.positive_spans, h.positive, h.positive_buckets()),
        (h.negative_spans, h.negative, h.negative_buckets()),
    ):
        nonzero = [(i, c) for i, c in indexed if c]
        again_spans, again = hist.from_indexed(nonzero, h.is_float)
        rebuilt = dataclasses.replace(h, positive_spans=again_spans, positive=again, negative_spans=(), negative=())
        assert [(i, c) for i, c in rebuilt.positive_buckets()] == nonzero
        assert sum(n for _, n in spans) == len(buckets)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"schema": 53}, "unknown schema"),
        ({"schema": -5}, "unknown schema"),
        ({"positive": (3, 2, -4, 2)}, "spans cover 5 buckets, it has 4"),
        ({"positive_spans": ((-2, 2), (-2, 1), (1, 2))}, "negative offset"),
        ({"positive": (3, 2, -6, 2, -1)}, "negative"),
        ({"count": 14}, "counts 14 observations but its buckets hold 15"),
        ({"zero_threshold": -1.0}, "zero threshold"),
        ({"zero_threshold": float("nan")}, "zero threshold"),
        ({"reset_hint": 4}, "reset hint"),
        ({"custom_values": (1.0,)}, "custom bucket bounds"),
        ({"positive_spans": ((0, -1), (0, 6))}, "negative length"),
    ],
)
def test_invalid_histograms_say_why(change, reason):
    assert reason in (hist.problem(dataclasses.replace(LATENCY, **change)) or "")


CUSTOM = Histogram(
    count=7, sum=2.0, schema=-53, positive_spans=((0, 2), (1, 1)), positive=(1, 2, -1), custom_values=(0.1, 0.5, 1.0)
)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"custom_values": (0.1, 0.1, 1.0)}, "strictly increasing"),
        ({"custom_values": (0.1, 0.5, float("inf"))}, "finite"),
        ({"custom_values": (0.1,)}, "only 1 bounds"),
        ({"zero_count": 1}, "negative or zero buckets"),
        ({"negative_spans": ((0, 1),), "negative": (1,)}, "negative or zero buckets"),
        ({"positive_spans": ((-1, 2), (1, 1))}, "negative bucket index"),
    ],
)
def test_invalid_custom_bucket_histograms_say_why(change, reason):
    assert hist.problem(CUSTOM) is None
    assert reason in (hist.problem(dataclasses.replace(CUSTOM, **change)) or "")


def test_float_histograms_refuse_negative_buckets_but_take_a_stale_count():
    h = Histogram(count=float("nan"), sum=1.0, schema=0, positive_spans=((0, 1),), positive=(2.5,), is_float=True)
    assert hist.problem(h) is None
    assert "negative or NaN" in (hist.problem(dataclasses.replace(h, positive=(-1.0,))) or "")


@given(histograms(), st.integers(0, 12))
@SETTINGS
def test_reducing_the_schema_keeps_every_observation_in_a_bucket_that_contains_its_old_one(h, steps):
    if h.schema == hist.CUSTOM_BUCKETS_SCHEMA:
        assert hist.reduce_schema(h, -4) is h
        return
    target = max(hist.MIN_SCHEMA, h.schema - steps)
    reduced = hist.reduce_schema(h, target)
    assert reduced.schema == target and hist.problem(reduced) is None
    d = h.schema - target
    for old, new in (
        (h.positive_buckets(), reduced.positive_buckets()),
        (h.negative_buckets(), reduced.negative_buckets()),
    ):
        assert sum(c for _, c in old) == pytest.approx(sum(c for _, c in new))
        merged: dict[int, float] = {}
        for i, c in old:
            # (i-1)/2^s < log2(x) <= i/2^s must lie inside (j-1)/2^t < log2(x) <= j/2^t
            j = next(j for j in range(i // 2**d - 2, i // 2**d + 3) if (j - 1) * 2**d <= i - 1 and i <= j * 2**d)
            merged[j] = merged.get(j, 0) + c
        # pytest.approx(c) equals a float, which mypy cannot see: for it the lists never overlap.
        assert [(j, pytest.approx(c)) for j, c in sorted(merged.items()) if c] == [(j, c) for j, c in new if c]  # type: ignore[comparison-overlap]


def test_a_finer_schema_is_merged_down_to_8():
    fine = Histogram(count=4, sum=1.0, schema=10, positive_spans=((1, 4),), positive=(1, 0, 0, 0))
    reduced = hist.reduce_schema(fine)
    assert reduced.schema == 8 and reduced.positive_buckets() == [(1, 4)]


# -- the chunk ---------------------------------------------------------------------------------------


def same_contents(a: chunk.Contents, b: chunk.Contents) -> None:
    assert a.series.keys() == b.series.keys()
    for labels, (ts, vals) in a.series.items():
        assert b.series[labels][0] == ts
        assert [hist_key_float(v) for v in b.series[labels][1]] == [hist_key_float(v) for v in vals]
    assert a.histograms.keys() == b.histograms.keys()
    for labels, (ts, hs) in a.histograms.items():
        assert b.histograms[labels][0] == ts
        assert [key(h) for h in b.histograms[labels][1]] == [key(h) for h in hs]
    assert a.metadata == b.metadata


def hist_key_float(v: float) -> bytes:
    import struct

    return struct.pack("<d", v)


@st.composite
def contents(draw: st.DrawFn) -> chunk.Contents:
    out = chunk.Contents()
    for i in range(draw(st.integers(0, 4))):
        n = draw(st.integers(1, 5))
        out.series[(("__name__", f"f{i}"),)] = (
            [NOW + 1000 * k for k in range(n)],
            draw(st.lists(st.floats(allow_nan=True) | st.integers(0, 1000).map(float), min_size=n, max_size=n)),
        )
    for i in range(draw(st.integers(1, 4))):
        runs = draw(histogram_runs())
        step = draw(st.sampled_from([5000, 15000, 1]))
        out.histograms[(("__name__", f"h{i}"), ("job", "api"))] = ([NOW + step * k for k in range(len(runs))], runs)
    if draw(st.booleans()):
        out.metadata = {"h0": Metadata("histogram", "Request latency.", "seconds"), "f0": Metadata("gauge")}
    return out


@given(contents())
@SETTINGS
def test_chunks_with_histograms_round_trip_every_bit(c):
    raw = chunk.encode(c.series, c.histograms, c.metadata)
    assert raw[3] == chunk.VERSION_HISTOGRAMS
    same_contents(c, chunk.decode_contents(raw))
    codec = chunk.Codec()
    same_contents(c, codec.decode_contents(codec.encode(c.series, c.histograms, c.metadata), limit=10**8))
    table, stripped = chunk.split_table(raw)
    assert chunk.join_table(stripped, table) == raw


@given(contents(), st.data())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_damaged_histogram_chunks_are_wire_errors_and_nothing_else(c, data):
    raw = damaged(data, chunk.encode(c.series, c.histograms, c.metadata), 4)
    try:
        decoded = chunk.decode_contents(raw)
    except WireError:
        return
    for _, hs in decoded.histograms.values():
        assert all(hist.problem(h) is None for h in hs)


def test_float_only_chunks_stay_version_2_and_old_readers_refuse_histograms_loudly():
    series: SeriesMap = {(("__name__", "up"),): ([NOW], [1.0])}
    assert chunk.encode(series)[3] == chunk.VERSION == 2
    assert chunk.encode(series, {}, {})[3] == 2
    raw = chunk.encode(series, {(("__name__", "lat"),): ([NOW], [LATENCY])})
    with pytest.raises(WireError, match="native histograms"):
        chunk.decode(raw)
    # Metadata alone does not hide samples: a float reader takes the chunk and leaves it out.
    meta_only = chunk.encode(series, None, {"up": Metadata("gauge", "Is it up.")})
    assert meta_only[3] == 3
    assert chunk.decode(meta_only) == series
    assert chunk.decode_contents(meta_only).metadata == {"up": Metadata("gauge", "Is it up.")}


def test_bad_histogram_sections_are_refused_with_a_reason():
    raw = chunk.encode({}, {(("__name__", "lat"),): ([NOW, NOW + 5000], [LATENCY, LATENCY])})
    with pytest.raises(WireError, match="after the metadata"):
        chunk.decode_contents(raw + b"\0")
    with pytest.raises(WireError):
        chunk.decode_contents(raw[:-1])
    bad = dataclasses.replace(LATENCY, count=LATENCY.count - 1)
    with pytest.raises(WireError, match="counts 14 observations"):  # the decoder checks what it reads
        chunk.decode_contents(chunk.encode({}, {(("__name__", "lat"),): ([NOW], [bad])}))


def test_regular_native_histograms_cost_a_few_bytes_per_sample():
    rng = random.Random(7)
    counts = [0] * 24
    stamps, samples = [], []
    for k in range(720):
        for _ in range(rng.randrange(20, 60)):
            counts[min(23, int(rng.expovariate(0.3)))] += 1
        populated = [(i, c) for i, c in enumerate(counts)]
        spans, deltas = hist.from_indexed(populated, is_float=False)
        samples.append(
            Histogram(count=sum(counts), sum=sum(counts) * 0.137 + k, schema=2, positive_spans=spans, positive=deltas)
        )
        stamps.append(NOW + 5000 * k)
    frame = chunk.Codec().encode({}, {(("__name__", "latency_seconds"), ("job", "api")): (stamps, samples)})
    assert len(frame) / 720 < 20  # 24 buckets a sample; classic buckets would be 26 float samples


def test_integer_counts_stay_below_2_63_so_the_chunk_can_always_take_them():
    huge = Histogram(count=2**63, sum=1.0, schema=0, positive_spans=((0, 1),), positive=(2**63,))
    assert "beyond 2^63" in (hist.problem(huge) or "")
