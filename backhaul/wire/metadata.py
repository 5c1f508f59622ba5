"""Metric metadata: what a metric family is (type), what it means (help) and what it counts (unit).

Kept per metric family, not per series: every series of ``http_request_duration_seconds`` shares
one entry, whichever of its ``_bucket``/``_sum``/``_count`` series brought it. Remote write 1.0
sends metadata per family (``MetricMetadata.metric_family_name``); 2.0 attaches it to each series;
OTLP to each metric. :func:`family_of` maps a series' name to the family its metadata is kept under.

In a chunk (version 3) metadata travels as one JSON object, ``{family: [type, help, unit], ...}``
(docs/wire-format.md); :func:`to_json` and :func:`from_json` write and check it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from backhaul.wire.errors import WireError
from backhaul.wire.jsonpart import json_part

# The metric types of Prometheus' protobuf messages (remote write 1.0 MetricMetadata.MetricType and
# 2.0 Metadata.MetricType use the same numbers), by number.
TYPES = ("unknown", "counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset")
_TYPE_NUMBER = {name: number for number, name in enumerate(TYPES)}

# Series-name suffixes that belong to a family of these types (OpenMetrics / Prometheus exposition).
_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("_sum", "_count", "_created"),
    "counter": ("_created",),
}

# A family's metadata is committed again this long after it last was, even unchanged (a receiver
# that lost it learns it again); and at most this many families are remembered.
REFRESH_MS = 3_600_000
MAX_FAMILIES = 100_000
MAX_HELP_CHARS = 4096
MAX_UNIT_CHARS = 128


@dataclass(frozen=True, slots=True)
class Metadata:
    """A metric family's metadata.

    Args:
        type: one of :data:`TYPES` ("unknown" when the sender gave none).
        help: the family's help text ("" when none).
        unit: its unit, e.g. "seconds" ("" when none).
    """

    type: str = "unknown"
    help: str = ""
    unit: str = ""

    @property
    def type_number(self) -> int:
        return _TYPE_NUMBER.get(self.type, 0)

    @classmethod
    def from_numbers(cls, type_number: int, help: str, unit: str) -> Metadata:
        kind = TYPES[type_number] if 0 <= type_number < len(TYPES) else "unknown"
        return cls(kind, help[:MAX_HELP_CHARS], unit[:MAX_UNIT_CHARS])

    def is_empty(self) -> bool:
        return self.type == "unknown" and not self.help and not self.unit


MetadataMap = dict[str, Metadata]
"""Metric family name -> its metadata."""


def family_of(name: str, metadata: Metadata) -> str:
    """The family a series called ``name`` belongs to: its name less the suffix its type adds
    (``foo_bucket`` of a histogram is family ``foo``); the name itself otherwise."""
    for suffix in _SUFFIXES.get(metadata.type, ()):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def lookup(name: str, families: MetadataMap) -> Metadata | None:
    """The metadata of the family a series called ``name`` belongs to, if any is known."""
    found = families.get(name)
    if found is not None:
        return found
    for kind, suffixes in _SUFFIXES.items():
        for suffix in suffixes:
            if name.endswith(suffix):
                found = families.get(name[: -len(suffix)])
                if found is not None and found.type == kind:
                    return found
    # A counter's family may be named with or without "_total" (text format vs OpenMetrics).
    if name.endswith("_total"):
        return families.get(name[: -len("_total")])
    return None


def to_json(families: MetadataMap) -> bytes:
    """``{family: [type, help, unit]}``, families sorted, as compact UTF-8 JSON."""
    return json.dumps(
        {name: [m.type, m.help, m.unit] for name, m in sorted(families.items())},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def from_json(data: bytes) -> MetadataMap:
    """The inverse of :func:`to_json`; :class:`WireError` for anything else."""
    raw = json_part(data, "chunk: metadata", dict)
    out: MetadataMap = {}
    for name, entry in raw.items():
        if (
            not name
            or type(entry) is not list
            or len(entry) != 3
            or not all(type(part) is str for part in entry)
            or entry[0] not in _TYPE_NUMBER
        ):
            raise WireError(f"chunk: metadata of {name!r} is not [type, help, unit] with a known type")
        out[name] = Metadata(*entry)
    return out


class FamilyMetadata:
    """The metadata of each family already committed (and when), and what waits for a commit.

    Bounded: either map starts over when full (the next repeats refill it)."""

    def __init__(self) -> None:
        self._committed: dict[str, tuple[Metadata, int]] = {}
        self._waiting: MetadataMap = {}

    def offer(self, families: MetadataMap, now_ms: int) -> None:
        """Note the entries of ``families`` worth committing: new, changed, or not committed for a while."""
        for name, meta in families.items():
            known = self._committed.get(name)
            if known is None or known[0] != meta or now_ms - known[1] >= REFRESH_MS:
                if len(self._waiting) >= MAX_FAMILIES:
                    self._waiting.clear()
                self._waiting[name] = meta

    def waiting(self) -> MetadataMap:
        """What the next commit with samples should carry."""
        return dict(self._waiting)

    def committed(self, families: MetadataMap, now_ms: int) -> None:
        if len(self._committed) + len(families) > MAX_FAMILIES:
            self._committed.clear()
        for name, meta in families.items():
            self._committed[name] = (meta, now_ms)
            if self._waiting.get(name) == meta:
                del self._waiting[name]
