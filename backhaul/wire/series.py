"""In-memory shape of samples between decoding and encoding.

A ``SeriesMap`` maps a series' sorted label pairs to its timestamps (ms) and values, in arrival order.
It is the common currency of remote-write decoding, staging, chunk encoding and the collector's store.
Native histograms have their own map (``backhaul.wire.histogram.HistogramSeriesMap``); exemplars
are kept beside the samples they illustrate, in an :data:`ExemplarMap`.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import TypeVar

Labels = tuple[tuple[str, str], ...]
SeriesMap = dict[Labels, tuple[list[int], list[float]]]


@dataclass(frozen=True, slots=True)
class Exemplar:
    """An example observation attached to a series (e.g. the trace of one slow request).

    Args:
        labels: the exemplar's own labels (``trace_id``, ``span_id``, ...), sorted; may be empty.
        value: the observed value.
        timestamp_ms: when it was observed.
    """

    labels: Labels
    value: float
    timestamp_ms: int


ExemplarMap = dict[Labels, list[Exemplar]]
# A sample's value: a float, or a native histogram (backhaul.wire.histogram).
V = TypeVar("V")


def merge_into(
    target: dict[Labels, tuple[list[int], list[V]]], source: dict[Labels, tuple[list[int], list[V]]]
) -> None:
    """Append every sample of ``source`` to ``target`` (series by series; floats or histograms)."""
    for labels, (ts, vals) in source.items():
        entry = target.get(labels)
        if entry is None:
            target[labels] = (list(ts), list(vals))
        else:
            entry[0].extend(ts)
            entry[1].extend(vals)


def append_series(
    target: dict[Labels, tuple[list[int], list[V]]], labels: Labels, stamps: list[int], values: list[V]
) -> None:
    """Append samples to ``labels``' series in ``target``; a new series takes the lists as they are
    (the caller gives them up)."""
    entry = target.get(labels)
    if entry is None:
        target[labels] = (stamps, values)
    else:
        entry[0].extend(stamps)
        entry[1].extend(values)


def merge_owned(parts: list[dict[Labels, tuple[list[int], list[V]]]]) -> dict[Labels, tuple[list[int], list[V]]]:
    """Merge maps the caller owns and will not use again: their lists are reused, not copied.

    The first map becomes the result; later maps' lists are appended to it or adopted. Float series
    (:data:`SeriesMap`) and histogram series alike.
    """
    merged = parts[0]
    for part in parts[1:]:
        shared = merged.keys() & part.keys()  # in C; requests of different shards share no series
        for labels in shared:  # each series' own lists: the order among series does not matter
            stamps, values = merged[labels]
            more_stamps, more_values = part[labels]
            stamps.extend(more_stamps)
            values.extend(more_values)
        if len(shared) < len(part):  # new series, in their order
            merged.update(part if not shared else {k: v for k, v in part.items() if k not in shared})
    return merged


_stamps = itemgetter(0)


def time_range(series: dict[Labels, tuple[list[int], list[V]]]) -> tuple[int, int]:
    """The oldest and newest timestamp in a non-empty map."""
    stamps = list(map(_stamps, series.values()))
    if sum(map(len, stamps)) <= 4 * len(stamps):  # a commit's few samples a series: all at once, in C
        flat = list(chain.from_iterable(stamps))
        return min(flat), max(flat)
    lo = min(min(ts) if len(ts) > 1 else ts[0] for ts in stamps)
    hi = max(max(ts) if len(ts) > 1 else ts[0] for ts in stamps)
    return lo, hi


def sample_count(series: dict[Labels, tuple[list[int], list[V]]]) -> int:
    return sum(map(len, map(_stamps, series.values())))


def labels_from_pairs(pairs: Iterable[tuple[str, str]]) -> Labels:
    return tuple(sorted(pairs))


# One tuple per distinct label pair, shared by every label set built with the same pool.
PairPool = dict[tuple[str, str], tuple[str, str]]


def pooled(pairs: Iterable[tuple[str, str]], pool: PairPool) -> Labels:
    """``pairs`` (already in order) as a label set whose pair tuples are the pool's.

    A page or a series table repeats a few hundred pairs over thousands of series (``job``,
    ``instance``, ``cpu="0"``): 10k series of the bench workload hold 60,528 pairs, 503 of them
    distinct, and their label sets take 8.3 MB built pair by pair, about 1 MB pooled. A pool lives as
    long as one page or table is read, so series churn cannot grow it."""
    listed = list(pairs)
    return tuple(map(pool.setdefault, listed, listed))


def with_device_label(series: SeriesMap, label: str, device: str) -> SeriesMap:
    """The series as a store or TSDB keeps them: ``label=device`` added (an existing one becomes
    ``exported_<label>``, as Prometheus does with target labels on a clash)."""
    out: SeriesMap = {}
    for labels, samples in series.items():
        pairs = [(f"exported_{n}" if n == label else n, v) for n, v in labels]
        pairs.append((label, device))
        key = tuple(sorted(pairs))
        if key in out:  # only if a series already had both <label> and exported_<label>
            merge_into(out, {key: samples})
        else:
            out[key] = samples
    return out
