"""Matching selectors against stored series tables, for :mod:`collector.store.reader`: which tables
may hold what the selectors choose (the metric name, the device, and the label index,
:mod:`collector.store.label_index`, narrow them before any is parsed), then each table's label sets
matched on a worker thread, keeping per table only the indices chosen."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from backhaul.errors import OverLimit
from backhaul.selector import Selector
from backhaul.wire.chunk import Codec
from backhaul.wire.series import Labels
from collector.store.chunks import TableInfo
from collector.store.records import TableRef

_NO_LIMIT = 2**62


class LabelIndex(Protocol):
    """What :func:`label_candidates` needs of a store."""

    async def label_values(self, name: str) -> list[str]: ...
    async def tables_with(self, name: str, values: list[str]) -> set[int]: ...


@dataclass(frozen=True)
class Limits:
    """Args: series and samples (an upper bound, see :mod:`collector.store.reader`) one read may
    return, and stored series tables it may match (each is parsed: the plan's cost)."""

    max_series: int = _NO_LIMIT
    max_samples: int = _NO_LIMIT
    max_tables: int = _NO_LIMIT


@dataclass
class DevicePlan:
    """One device's part of a plan: the indices chosen per table (table id -> indices, digest)."""

    device: str
    tables: dict[int, list[int]] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)


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


async def label_candidates(store: LabelIndex, selectors: list[Selector], device_label: str) -> set[int] | None:
    """The tables that may hold what the selectors choose, by the label index
    (:mod:`collector.store.label_index`), or None when some selector has no matcher that needs a
    label other than the metric name and the device (those narrow the tables already)."""
    exported = f"exported_{device_label}"
    union: set[int] = set()
    for selector in selectors:
        found: set[int] | None = None
        for m in selector.matchers:
            if m.op not in ("=", "=~") or m.name in ("__name__", device_label):
                continue
            test = m.predicate()
            if test(""):
                continue  # matches series without the label too
            name = device_label if m.name == exported else m.name
            if m.op == "=":
                values = [m.value]
            else:
                known = await store.label_values(name)
                values = await asyncio.to_thread(lambda: [v for v in known if test(v)])  # noqa: B023
            tables = await store.tables_with(name, values)
            found = tables if found is None else found & tables
            if not found:
                break
        if found is None:
            return None
        union |= found
    return union


class TableMatcher:
    """Matches tables a page at a time (on a worker thread), keeping per table only the indices chosen;
    the series of one device are told apart across its tables (a device's tables come together)."""

    def __init__(self, selectors: list[Selector], device_label: str, limits: Limits) -> None:
        self._selectors = [_Compiled(s, device_label) for s in selectors]
        self._device_label = device_label
        self._limits = limits
        self._plans: list[DevicePlan] = []
        self._keys: set[Labels] = set()  # the current device's series
        self.series = 0

    def match(
        self, refs: list[TableRef], cached: dict[int, TableInfo], data: dict[int, bytes], keep: int
    ) -> list[tuple[int, TableInfo]]:
        """Match a page of tables (those not cached come as ``data``); returns the parsed tables worth
        caching, up to ``keep`` series."""
        codec = Codec()
        kept: list[tuple[int, TableInfo]] = []
        for ref in refs:
            table = cached.get(ref.id)
            if table is None:
                raw = data.get(ref.id)
                if raw is None:
                    continue  # removed since the tables were listed
                table = TableInfo.parse(codec.decompress(raw, 1 << 30), ref.digest)
                if table.weight <= keep:
                    kept.append((ref.id, table))
                    keep -= table.weight
            self._match_table(ref, table)
        return kept

    def _match_table(self, ref: TableRef, table: TableInfo) -> None:
        if table.entries is None:
            return
        if not self._plans or self._plans[-1].device != ref.device:
            self._plans.append(DevicePlan(ref.device))
            self._keys = set()
        plan = self._plans[-1]
        chosen: list[int] = []
        selectors = [s for s in self._selectors if s.device_matches(ref.device)]
        if not selectors:
            return
        for index, labels in enumerate(table.entries):
            if not any(s.matches(labels) for s in selectors):
                continue
            chosen.append(index)
            if labels not in self._keys:
                self._keys.add(labels)
                self.series += 1
                if self.series > self._limits.max_series:
                    raise OverLimit(
                        f"the selection holds more than {self._limits.max_series} series ([export] max_series):"
                        " narrow the selector",
                        "max_series",
                    )
        if chosen:
            plan.tables[ref.id] = chosen
            plan.digests[ref.id] = ref.digest

    def done(self) -> list[DevicePlan]:
        return [p for p in self._plans if p.tables]


class _Compiled:
    """A selector, its matchers sorted by what they test: the device label (once per table), the
    metric name (predicates cached per distinct value, :mod:`backhaul.selector`), and other labels,
    read from the series' labels as the agent sent them (``exported_<device label>`` is the agent's
    own label of that name)."""

    def __init__(self, selector: Selector, device_label: str) -> None:
        exported = f"exported_{device_label}"
        self._device = [m.predicate() for m in selector.matchers if m.name == device_label]
        self._name = [m.predicate() for m in selector.matchers if m.name == "__name__"]
        self._other = [
            (device_label if m.name == exported else m.name, m.predicate())
            for m in selector.matchers
            if m.name not in (device_label, "__name__")
        ]

    def device_matches(self, device: str) -> bool:
        return all(test(device) for test in self._device)

    def matches(self, labels: Labels) -> bool:
        if self._name:
            first = labels[0]
            name = first[1] if first[0] == "__name__" else next((v for n, v in labels if n == "__name__"), "")
            if not all(test(name) for test in self._name):
                return False
        if self._other:
            found = dict(labels)
            return all(test(found.get(label, "")) for label, test in self._other)
        return True


NO_LIMITS = Limits()
