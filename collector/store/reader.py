"""Reading series out of chunks: selectors matched once per series table, only the chosen series'
values decoded, every series merged across chunks in time order with one sample per timestamp.

A read has two steps, so that its cost is known before anything is sent:

1. :meth:`Reader.plan`: the tables with chunks in the time range (narrowed by metric name and device
   where the selectors name them), each table's label sets matched against the selectors on a
   worker thread, then the chunk index's totals of those tables. The plan knows how many series the
   answer holds and an upper bound of its samples (per table: the series chosen from it times the
   most samples one series has in each chunk, at most the chunks' samples), so limits are applied
   before the first byte of an answer (:class:`~backhaul.errors.OverLimit`). It keeps only the
   indices chosen per table, so its memory is a few bytes per series.
2. :meth:`Reader.read`: device after device, the chosen series in groups of about
   ``group_samples`` samples (so memory stays bounded whatever the answer's size), each group's
   chunks fetched from the store and decoded on a worker thread. A series' samples from several
   chunks (out-of-order uploads, overlapping ones, summaries followed by the full data) are sorted,
   and of two samples with one timestamp the one stored first is kept.

Series come out in device order, then label order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Protocol

from backhaul.errors import OverLimit
from backhaul.selector import Matcher, Selector
from backhaul.wire.chunk import Codec
from backhaul.wire.series import Labels
from collector.store.cache import BoundedCache
from collector.store.chunks import TableInfo, read_series, scan
from collector.store.matching import (
    NO_LIMITS,
    DevicePlan,
    LabelIndex,
    Limits,
    TableMatcher,
    label_candidates,
    narrowing,
)
from collector.store.records import ChunkRef, TableRef

# Parsed tables a reader keeps, by series; tables fetched and matched per step.
CACHED_SERIES = 20_000
TABLES_PER_STEP = 200
# Samples decoded per step of a read.
GROUP_SAMPLES = 200_000


class Source(LabelIndex, Protocol):
    """What a reader needs of a store (:class:`collector.store.Store` has it)."""

    async def tables(
        self,
        start_ms: int,
        end_ms: int,
        devices: list[str] | None = None,
        names: list[str] | None = None,
        within: set[int] | None = None,
        limit: int | None = None,
    ) -> list[TableRef]: ...
    async def table_data(self, ids: list[int]) -> dict[int, bytes]: ...
    async def chunk_refs(self, table_ids: list[int], start_ms: int, end_ms: int) -> list[ChunkRef]: ...
    async def chunk_totals(self, table_ids: list[int], start_ms: int, end_ms: int) -> dict[int, tuple[int, int]]: ...
    async def chunk_frames(self, ids: list[int]) -> dict[int, bytes]: ...
    async def metric_names(self) -> list[str]: ...


@dataclass
class Chosen:
    """A series the selectors chose: its device, its labels as stored (device label included, sorted),
    where it is ((table id, index) per table that lists it) and an upper bound of its samples."""

    device: str
    labels: dict[str, str]
    where: list[tuple[int, int]] = field(default_factory=list)
    bound: int = 0


@dataclass
class Plan:
    """What :meth:`Reader.plan` found: per device (in answer order) what to read, the series count,
    an upper bound of the samples, and the chunk index's totals per table (samples, the sum of each
    chunk's most samples of one series)."""

    devices: list[DevicePlan]
    series: int
    samples_bound: int
    totals: dict[int, tuple[int, int]]
    start_ms: int
    end_ms: int


def stored_dict(labels: Labels, device_label: str, device: str, ordered: bool = True) -> dict[str, str]:
    """A series' labels at the collector: the device label added (an existing one of that name kept
    as ``exported_<name>``, :func:`collector.store.records.stored_labels`), sorted by name unless
    ``ordered`` is False (for matching only)."""
    found = dict(labels)
    if device_label in found:
        found[f"exported_{device_label}"] = found.pop(device_label)
    found[device_label] = device
    return dict(sorted(found.items())) if ordered else found


class Reader:
    """Args: the store, the device label, and the table cache to use (a fresh bounded one by default)."""

    def __init__(self, store: Source, device_label: str, tables: BoundedCache[int, TableInfo] | None = None) -> None:
        self._store = store
        self._device_label = device_label
        self._tables = tables if tables is not None else BoundedCache(CACHED_SERIES, lambda t: t.weight)

    async def _names(self, selectors: list[Selector]) -> list[str] | None:
        found = narrowing(selectors, "__name__")
        if found is None:
            return None
        values, patterns = found
        if patterns:
            known = await self._store.metric_names()
            tests = [Matcher("__name__", "=~", p).predicate() for p in patterns]
            values += [n for n in known if any(test(n) for test in tests)]
        return sorted(set(values))

    async def plan(self, selectors: list[Selector], start_ms: int, end_ms: int, limits: Limits = NO_LIMITS) -> Plan:
        """What the selectors choose in ``[start_ms, end_ms]``; raises OverLimit past ``limits``."""
        names = await self._names(selectors)
        devices = narrowing(selectors, self._device_label)
        candidates = await label_candidates(self._store, selectors, self._device_label)
        # one table past the limit tells that the limit is passed, without listing them all
        refs = (
            []
            if candidates == set()
            else await self._store.tables(
                start_ms,
                end_ms,
                sorted(set(devices[0])) if devices and not devices[1] else None,
                names,
                candidates,
                limits.max_tables + 1,
            )
        )
        if len(refs) > limits.max_tables:
            raise OverLimit(
                f"the selection spans more than {limits.max_tables} stored series tables"
                " ([export] max_tables): narrow the selector (a label value) or the time range",
                "max_tables",
            )
        matcher = TableMatcher(selectors, self._device_label, limits)
        for first in range(0, len(refs), TABLES_PER_STEP):
            page = refs[first : first + TABLES_PER_STEP]
            cached: dict[int, TableInfo] = {}
            for ref in page:
                table = self._tables.get(ref.id)
                if table is not None and table.entries is not None:
                    cached[ref.id] = table
            missing = [r.id for r in page if r.id not in cached]
            data = await self._store.table_data(missing) if missing else {}
            # parsed, matched and dropped one at a time on a worker thread: a page of big tables
            # never sits in memory at once; what fits the cache comes back to be kept
            for table_id, table in await asyncio.to_thread(matcher.match, page, cached, data, CACHED_SERIES // 2):
                self._tables.put(table_id, table)
        plans = matcher.done()
        table_ids = sorted(t for p in plans for t in p.tables)
        totals = await self._store.chunk_totals(table_ids, start_ms, end_ms) if table_ids else {}
        bound = 0
        for p in plans:
            for table_id, chosen in p.tables.items():
                samples, most = totals.get(table_id, (0, 0))
                bound += min(samples, len(chosen) * most)
        if bound > limits.max_samples:
            raise OverLimit(
                f"the selection holds up to {bound} samples, over the limit of {limits.max_samples}"
                " ([export] max_samples): narrow the selector or the time range",
                "max_samples",
            )
        return Plan(
            [p for p in plans if any(t in totals for t in p.tables)], matcher.series, bound, totals, start_ms, end_ms
        )

    async def _load(self, refs: list[TableRef]) -> dict[int, TableInfo]:
        """The tables, parsed (from the cache, else fetched and parsed on a worker thread)."""
        found: dict[int, TableInfo] = {}
        missing: list[TableRef] = []
        for ref in refs:
            table = self._tables.get(ref.id)
            if table is not None and table.entries is not None:
                found[ref.id] = table
            else:
                missing.append(ref)
        if missing:
            data = await self._store.table_data([r.id for r in missing])
            parsed = await asyncio.to_thread(_parse, [(r, data[r.id]) for r in missing if r.id in data])
            for table_id, table in parsed.items():
                self._tables.put(table_id, table)
            found.update(parsed)
        return found

    async def read(
        self, plan: Plan, group_samples: int = GROUP_SAMPLES
    ) -> AsyncIterator[list[tuple[Chosen, list[int], list[float]]]]:
        """The plan's series with their samples in time order, a group at a time."""
        for device in plan.devices:
            refs = [TableRef(t, device.device, device.digests[t]) for t in device.tables]
            tables = await self._load(refs)
            chosen = _chosen(device, tables, plan.totals, self._device_label)
            chunks = await self._store.chunk_refs(sorted(device.tables), plan.start_ms, plan.end_ms)
            by_table: dict[int, list[ChunkRef]] = {}
            for c in chunks:
                by_table.setdefault(c.table_id, []).append(c)
            for group in _groups(chosen, group_samples):
                wanted = {t for s in group for t, _ in s.where}
                group_refs = [c for t in wanted for c in by_table.get(t, ())]
                frames = await self._store.chunk_frames(sorted(c.id for c in group_refs))
                yield await asyncio.to_thread(_decode, group, group_refs, frames, plan.start_ms, plan.end_ms)


def _parse(items: list[tuple[TableRef, bytes]]) -> dict[int, TableInfo]:
    codec = Codec()
    return {ref.id: TableInfo.parse(codec.decompress(data, 1 << 30), ref.digest) for ref, data in items}


def _chosen(
    device: DevicePlan, tables: dict[int, TableInfo], totals: dict[int, tuple[int, int]], device_label: str
) -> list[Chosen]:
    """A device's chosen series (merged across its tables), in label order, each with its bound."""
    found: dict[Labels, Chosen] = {}
    for table_id, indices in device.tables.items():
        table = tables.get(table_id)
        if table is None or table.entries is None:
            continue
        samples, most = totals.get(table_id, (0, 0))
        for index in indices:
            labels = table.entries[index]
            entry = found.get(labels)
            if entry is None:
                entry = found[labels] = Chosen(device.device, stored_dict(labels, device_label, device.device))
            entry.where.append((table_id, index))
            entry.bound += min(samples, most)
    return sorted(found.values(), key=lambda s: list(s.labels.items()))


def _groups(series: list[Chosen], group_samples: int) -> Iterable[list[Chosen]]:
    group: list[Chosen] = []
    held = 0
    for s in series:
        if group and held + s.bound > group_samples:
            yield group
            group, held = [], 0
        group.append(s)
        held += s.bound
    if group:
        yield group


def _decode(
    group: list[Chosen], refs: list[ChunkRef], frames: dict[int, bytes], start_ms: int, end_ms: int
) -> list[tuple[Chosen, list[int], list[float]]]:
    """On a worker thread: decode the group's series from its chunks and merge each in time order."""
    codec = Codec()
    by_table: dict[int, list[tuple[int, int]]] = {}  # table id -> (index, position in group)
    for k, s in enumerate(group):
        for table_id, index in s.where:
            by_table.setdefault(table_id, []).append((index, k))
    parts: list[list[tuple[list[int], list[float]]]] = [[] for _ in group]
    for ref in sorted(refs, key=lambda c: c.id):  # arrival order: of equal timestamps the first stored wins
        frame = frames.get(ref.id)
        if frame is None:
            continue  # removed by retention since the plan was made
        raw = codec.decompress(frame, 1 << 30)
        wanted = by_table[ref.table_id]
        decoded = read_series(raw, scan(raw), (index for index, _ in wanted))
        for index, k in wanted:
            if index in decoded:
                parts[k].append(decoded[index])
    return [(s, *_merged(p, start_ms, end_ms)) for s, p in zip(group, parts, strict=True)]


def _merged(parts: list[tuple[list[int], list[float]]], start_ms: int, end_ms: int) -> tuple[list[int], list[float]]:
    if len(parts) == 1:
        stamps, values = parts[0]
        if len(stamps) == 1:
            return (stamps, values) if start_ms <= stamps[0] <= end_ms else ([], [])
        if all(a < b for a, b in pairwise(stamps)):
            if stamps and (stamps[0] < start_ms or stamps[-1] > end_ms):
                keep = [i for i, t in enumerate(stamps) if start_ms <= t <= end_ms]
                return [stamps[i] for i in keep], [values[i] for i in keep]
            return stamps, values
    first: dict[int, float] = {}
    for stamps, values in parts:
        for t, v in zip(stamps, values, strict=True):
            if start_ms <= t <= end_ms and t not in first:
                first[t] = v
    order = sorted(first)
    return order, [first[t] for t in order]
