"""Reading series out of chunks: selectors matched once per series table, only the chosen series'
values decoded, every series merged across chunks in time order with one sample per timestamp.

A read has two steps, so that its cost is known before anything is sent:

1. :meth:`Reader.plan`: the tables with chunks in the time range (narrowed by metric name and device
   where the selectors name them), each table's label sets matched against the selectors on a
   worker thread, then the index entries of their chunks. The plan knows how many series the answer
   holds and an upper bound of its samples (per chunk: the series chosen from its table times the
   most samples one of its series has, at most its samples), so limits are applied before the first
   byte of an answer (:class:`~backhaul.errors.OverLimit`).
2. :meth:`Reader.read`: the chosen series in groups of about ``group_samples`` samples (so memory is
   bounded whatever the answer's size), each group's chunks fetched from the store and decoded on a
   worker thread. A series' samples from several chunks (out-of-order uploads, overlapping ones,
   summaries followed by the full data) are sorted, and of two samples with one timestamp the one
   stored first is kept.

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
from collector.store.records import ChunkRef, TableRef

# Parsed tables a reader keeps, by series.
CACHED_SERIES = 20_000
# Samples decoded per step of a read.
GROUP_SAMPLES = 200_000
_NO_LIMIT = 2**62


class Source(Protocol):
    """What a reader needs of a store (:class:`collector.store.Store` has it)."""

    async def tables(
        self, start_ms: int, end_ms: int, devices: list[str] | None = None, names: list[str] | None = None
    ) -> list[TableRef]: ...
    async def table_data(self, ids: list[int]) -> dict[int, bytes]: ...
    async def chunk_refs(self, table_ids: list[int], start_ms: int, end_ms: int) -> list[ChunkRef]: ...
    async def chunk_frames(self, ids: list[int]) -> dict[int, bytes]: ...
    async def metric_names(self) -> list[str]: ...


@dataclass(frozen=True)
class Limits:
    """Args: series and samples (an upper bound, see the module docstring) one read may return."""

    max_series: int = _NO_LIMIT
    max_samples: int = _NO_LIMIT


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
    """What :meth:`Reader.plan` found: the series in answer order, and the chunks per table."""

    series: list[Chosen]
    chunks: dict[int, list[ChunkRef]]
    start_ms: int
    end_ms: int

    @property
    def samples_bound(self) -> int:
        return sum(s.bound for s in self.series)


def stored_dict(labels: Labels, device_label: str, device: str) -> dict[str, str]:
    """A series' labels at the collector: the device label added (an existing one of that name kept
    as ``exported_<name>``, :func:`collector.store.records.stored_labels`), sorted by name."""
    pairs = [(f"exported_{n}" if n == device_label else n, v) for n, v in labels]
    pairs.append((device_label, device))
    return dict(sorted(pairs))


def narrowing(selectors: list[Selector], label: str) -> tuple[list[str], list[str]] | None:
    """``(values, patterns)`` of ``label`` that every selector needs (an equality or a regex), or
    None when some selector leaves the label open."""
    values: list[str] = []
    patterns: list[str] = []
    for s in selectors:
        found = [m for m in s.matchers if m.name == label and m.op in ("=", "=~")]
        if not found:
            return None
        m = found[0]
        (values if m.op == "=" else patterns).append(m.value)
    return values, patterns


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

    async def plan(self, selectors: list[Selector], start_ms: int, end_ms: int, limits: Limits = Limits()) -> Plan:
        """The series the selectors choose in ``[start_ms, end_ms]``; raises OverLimit past ``limits``."""
        names = await self._names(selectors)
        devices = narrowing(selectors, self._device_label)
        refs = await self._store.tables(
            start_ms, end_ms, sorted(set(devices[0])) if devices and not devices[1] else None, names
        )
        missing = [r.id for r in refs if self._tables.get(r.id) is None]
        data = await self._store.table_data(missing) if missing else {}
        chosen = await asyncio.to_thread(self._match, refs, data, selectors, limits)
        table_ids = sorted({t for s in chosen for t, _ in s.where})
        chunks: dict[int, list[ChunkRef]] = {}
        for ref in await self._store.chunk_refs(table_ids, start_ms, end_ms) if table_ids else []:
            chunks.setdefault(ref.table_id, []).append(ref)
        for s in chosen:
            s.bound = sum(min(c.samples, c.max_per_series) for t, _ in s.where for c in chunks.get(t, ()))
        chosen = [s for s in chosen if s.bound]
        plan = Plan(chosen, chunks, start_ms, end_ms)
        per_table: dict[int, int] = {}
        for s in chosen:
            for t, _ in s.where:
                per_table[t] = per_table.get(t, 0) + 1
        bound = sum(
            min(c.samples, c.max_per_series * per_table.get(table_id, 0))
            for table_id, refs_of in chunks.items()
            for c in refs_of
        )
        if bound > limits.max_samples:
            raise OverLimit(
                f"the selection holds up to {bound} samples, over the limit of {limits.max_samples}"
                " ([export] max_samples): narrow the selector or the time range",
                "max_samples",
            )
        return plan

    def _match(
        self, refs: list[TableRef], data: dict[int, bytes], selectors: list[Selector], limits: Limits
    ) -> list[Chosen]:
        """On a worker thread: each table's label sets against the selectors, once per table."""
        codec = Codec()
        found: dict[tuple[str, Labels], Chosen] = {}
        for ref in refs:
            table = self._tables.get(ref.id)
            if table is None or table.entries is None:
                raw = data.get(ref.id)
                if raw is None:
                    continue  # removed since the tables were listed
                table = TableInfo.parse(codec.decompress(raw, 1 << 30), ref.digest)
                self._tables.put(ref.id, table)
            assert table.entries is not None
            for index, labels in enumerate(table.entries):
                stored = stored_dict(labels, self._device_label, ref.device)
                if not any(s.matches(stored) for s in selectors):
                    continue
                key = (ref.device, labels)
                entry = found.get(key)
                if entry is None:
                    if len(found) >= limits.max_series:
                        raise OverLimit(
                            f"the selection holds more than {limits.max_series} series ([export] max_series):"
                            " narrow the selector",
                            "max_series",
                        )
                    entry = found[key] = Chosen(ref.device, stored)
                entry.where.append((ref.id, index))
        return sorted(found.values(), key=lambda s: (s.device, list(s.labels.items())))

    async def read(
        self, plan: Plan, group_samples: int = GROUP_SAMPLES
    ) -> AsyncIterator[list[tuple[Chosen, list[int], list[float]]]]:
        """The plan's series with their samples in time order, a group at a time."""
        for group in _groups(plan.series, group_samples):
            wanted = {t for s in group for t, _ in s.where}
            refs = [c for t in wanted for c in plan.chunks.get(t, ())]
            frames = await self._store.chunk_frames(sorted(c.id for c in refs))
            yield await asyncio.to_thread(_decode, group, refs, frames, plan.start_ms, plan.end_ms)


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
