"""Decoded maps (``backhaul.wire.series``). Merging them (``merge_owned``), as staging, compaction and
the bulk remote-write read do: every series keeps its samples in the parts' order, and the merged
map lists series in the order they first came. Their time range, short series or long."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from backhaul.wire.series import Labels, SeriesMap, merge_owned, time_range

_labels: st.SearchStrategy[Labels] = st.sampled_from([(("__name__", name),) for name in "abcdefgh"])
_part = st.dictionaries(_labels, st.integers(1, 3).map(lambda n: ([1] * n, [float(n)] * n)), max_size=8)


def _merged_one_by_one(parts: list[SeriesMap]) -> list[tuple[Labels, tuple[list[int], list[float]]]]:
    merged: dict[Labels, tuple[list[int], list[float]]] = {}
    for part in parts:
        for labels, (stamps, values) in part.items():
            entry = merged.setdefault(labels, ([], []))
            entry[0].extend(stamps)
            entry[1].extend(values)
    return list(merged.items())


@settings(max_examples=500, deadline=None)
@given(st.lists(_part, min_size=1, max_size=5).map(lambda parts: [_numbered(p, i) for i, p in enumerate(parts)]))
def test_merged_series_keep_their_samples_in_order_and_their_first_place(parts: list[SeriesMap]) -> None:
    expected = _merged_one_by_one(copy.deepcopy(parts))
    assert list(merge_owned(parts).items()) == expected


def _numbered(part: SeriesMap, index: int) -> SeriesMap:
    """Stamps that tell which part a sample came from, so that an order mistake shows."""
    return {labels: ([index * 10 + k for k in range(len(ts))], vs) for labels, (ts, vs) in part.items()}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=12), min_size=1, max_size=20))
def test_the_time_range_is_the_oldest_and_newest_stamp(stamps: list[list[int]]) -> None:
    series: SeriesMap = {(("__name__", f"m{i}"),): (ts, [0.0] * len(ts)) for i, ts in enumerate(stamps)}
    every = [t for ts in stamps for t in ts]
    assert time_range(series) == (min(every), max(every))
