"""Merging decoded maps (``backhaul.wire.series.merge_owned``): what staging, compaction and the
bulk remote-write read rely on. Every series keeps its samples in the parts' order, and the merged
map lists series in the order they first came."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from backhaul.wire.series import Labels, SeriesMap, merge_owned

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
