"""A series table as the store keeps it: checked and parsed once per device and digest, with what
ingest, the fleet page and the label rules need of it (collector/store/chunks.py uses it)."""

from __future__ import annotations

from dataclasses import dataclass

from backhaul.errors import WireError
from backhaul.labels import LabelRules
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.jsonpart import json_part
from backhaul.wire.series import Labels
from collector.store.history import INFERENCE_SERIES

# Series the fleet page reads, kept aside at ingest (collector/store/fleet rows), so that the page
# never decodes chunks and does not depend on raw samples that retention removed.
MODEL_INFO = "backhaul_model_info"
ROUTED = "backhaul_proxy_routed_requests_total"
FLEET_SERIES = frozenset((MODEL_INFO, ROUTED, *INFERENCE_SERIES))
_STR_ONLY = {str}


@dataclass(frozen=True)
class TableInfo:
    """A series table, checked once. What ingest needs of it is small (its digest, size, names and
    the few series the fleet page reads), so :meth:`summary` is what caches keep; the entries are
    parsed where they are needed (de-duplication of overlapping chunks, the export).

    Args:
        digest: its name (``chunk.table_digest``).
        n_series: series in it.
        names: the metric names in it (the store indexes tables by name).
        fleet: (index, name, labels) of the series the fleet page reads.
        unique: no series is listed twice (a table may, if wastefully).
        data: the table's JSON bytes as the agent sent them (None in a summary).
        entries: each series' labels, in table order, as the agent sent them: no device label
            (None in a summary).
        size: the table's length in bytes.
        refused: (index, reason) of each series whose labels break the rules it was parsed with.
    """

    digest: str
    n_series: int
    names: frozenset[str]
    fleet: tuple[tuple[int, str, Labels], ...]
    unique: bool = True
    data: bytes | None = None
    entries: list[Labels] | None = None
    size: int = 0
    refused: tuple[tuple[int, str], ...] = ()

    @classmethod
    def parse(cls, data: bytes, digest: str | None = None, rules: LabelRules | None = None) -> TableInfo:
        """Check and parse a table (each series against ``rules`` if given); raises :class:`WireError`
        naming what is wrong."""
        flat = json_part(data, "chunk: series table", list)
        entries: list[Labels] = []
        names: set[str] = set()
        fleet: list[tuple[int, str, Labels]] = []
        for item in flat:
            if type(item) is not list or not item or len(item) % 2 or set(map(type, item)) != _STR_ONLY:
                raise WireError("chunk: a series entry is not a non-empty list of label name/value strings")
            labels = tuple(zip(item[0::2], item[1::2], strict=True))
            # label names are sorted, so the name is nearly always first
            name = item[1] if item[0] == "__name__" else next((v for n, v in labels if n == "__name__"), None)
            if name is not None:
                names.add(name)
                if name in FLEET_SERIES:
                    fleet.append((len(entries), name, labels))
            entries.append(labels)
        unique = len(set(entries)) == len(entries)
        digest = digest or chunkfmt.table_digest(data)
        refused: list[tuple[int, str]] = []
        if rules is not None:
            for i, labels in enumerate(entries):
                reason = rules.problem(labels)
                if reason is not None:
                    refused.append((i, reason))
        names_kept = frozenset(names)
        return cls(digest, len(entries), names_kept, tuple(fleet), unique, data, entries, len(data), tuple(refused))

    def summary(self) -> TableInfo:
        """The same without its data and entries: what a cache keeps."""
        return TableInfo(
            self.digest, self.n_series, self.names, self.fleet, self.unique, size=self.size, refused=self.refused
        )

    def labels(self) -> list[Labels]:
        """Each series' labels: the entries, parsed from the data if they are not (a table being stored)."""
        if self.entries is not None:
            return self.entries
        assert self.data is not None
        entries = TableInfo.parse(self.data, self.digest).entries
        assert entries is not None
        return entries

    @property
    def weight(self) -> int:
        """What it costs a cache: one unit per series it holds in memory."""
        return (len(self.entries) if self.entries is not None else len(self.fleet)) + 1
