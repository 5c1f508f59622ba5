"""Samples stored once: how many samples of new chunks the store already holds.

Chunks are kept as they arrived, so the same sample may sit in two chunks: a sender's retry of a
remote-write request, a request an agent committed twice (its sender retried after a crash), the
summary an agent sends first followed by the full data, fresh data first and the backlog after it.
The export merges per series and keeps one sample per timestamp (the one stored first); this module
keeps the figures honest: a sample counts as new once, as a duplicate every further time.

Only chunks whose time range overlaps and whose table shares a series are compared (the store's
indexes find them: :mod:`collector.store.series_index`); a chunk whose every sample is a duplicate
is not stored at all. Cost: nothing for a chunk that overlaps no other, else one set lookup per
sample of the series the chunks share.

The work per request is bounded, whatever a device stored before: at most :data:`MAX_HELD_CHUNKS`
held chunks of :data:`MAX_HELD_SAMPLES` samples in all are compared, the newest first (a retry or a
re-sent summary is recent). Past the bound the rest are not compared, so a duplicate they hold is
counted new and kept (the export still shows it once): the count errs towards keeping data, never
towards dropping it, and the store says the check was cut short (``IngestResult.capped``, the
metric ``backhaul_collector_duplicate_checks_capped_total``).
"""

from __future__ import annotations

import functools
import hashlib
import operator
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress

from backhaul.wire.series import Labels
from collector.store.chunks import Scan

# The bound of the comparison per request (see above): a legitimate sender's new chunk overlaps a
# few held ones of its series (a retry, a summary then the full data), far fewer than this.
MAX_HELD_CHUNKS = 128
MAX_HELD_SAMPLES = 500_000


def series_keys(entries: Iterable[Labels]) -> tuple[bytes, ...]:
    """Each series of a table as the comparison knows it: 16 bytes (BLAKE2b-128 of the labels' repr,
    which is unambiguous), so a cache holds ~57 bytes per series instead of ~950 for the labels.
    Two distinct series never meet on a key (2**64 work to find such a pair): a key that matches is
    the same series, and a duplicate is never counted that is not one."""
    return tuple(
        hashlib.blake2b(repr(labels).encode("utf-8", "surrogatepass"), digest_size=16).digest() for labels in entries
    )


def within_bound(rows: Iterable[tuple[int, int, int]]) -> tuple[list[tuple[int, int]], bool]:
    """Of candidate held chunks ``(chunk id, table id, samples)``, newest first, those compared
    (``(chunk id, table id)``) and whether the bound left some out."""
    kept: list[tuple[int, int]] = []
    samples = 0
    for chunk_id, table_id, n in rows:
        samples += n
        if len(kept) == MAX_HELD_CHUNKS or samples > MAX_HELD_SAMPLES:
            return kept, True
        kept.append((chunk_id, table_id))
    return kept, False


@dataclass
class Held:
    """A chunk compared with others.

    Args:
        keys: its table's :func:`series_keys` (called only when they are needed).
        scan: what its scan found.
        unique: its table lists no series twice.
    """

    keys: Callable[[], Sequence[bytes]]
    scan: Scan
    unique: bool = True


def overlaps(a: Scan, b: Scan) -> bool:
    return a.min_ts <= b.max_ts and b.min_ts <= a.max_ts


def increasing(found: Scan) -> bool:
    """Every series' timestamps strictly increase (so none repeats within the chunk)."""
    if found.max_per_series <= 1:
        return True
    stamps = found.stamps
    steps = map(operator.sub, stamps[1:], stamps[:-1])
    # from the end of one series to the start of the next is not a step; map and compress run in C
    return min(compress(steps, _within(found.counts.tobytes())), default=1) > 0


@functools.lru_cache(maxsize=64)
def _within(counts: bytes) -> bytes:
    """Per step between two neighbouring samples, 1 when both are of one series (chunks of one
    device's table repeat their layout, so this is cached by the counts column's bytes)."""
    per_series = array("I", counts)
    mask = bytearray(b"\x01" * (sum(per_series) - 1))
    at = 0
    for n in per_series[:-1]:
        at += n
        mask[at - 1] = 0
    return bytes(mask)


def duplicates(new: list[Held], held: list[Held]) -> list[int]:
    """Per new chunk (in order), its samples already held, in an earlier new chunk, or repeated in it."""
    out: list[int] = []
    for k, chunk in enumerate(new):
        others = [h for h in held if overlaps(h.scan, chunk.scan)]
        others += [c for c in new[:k] if overlaps(c.scan, chunk.scan)]
        if not others and chunk.unique and increasing(chunk.scan):
            out.append(0)
        else:
            out.append(_count(chunk, others))
    return out


def _count(chunk: Held, others: list[Held]) -> int:
    mine = chunk.keys()
    wanted = set(mine)
    have: dict[bytes, set[int]] = {}
    for other in others:
        for i, key in enumerate(other.keys()):
            if key in wanted:
                have.setdefault(key, set()).update(other.scan.series_stamps(i))
    found = 0
    for i, key in enumerate(mine):
        stamps = have.setdefault(key, set())
        for t in chunk.scan.series_stamps(i):
            if t in stamps:
                found += 1
            else:
                stamps.add(t)
    return found
