"""Text exposition pages (0.0.4) as series, and re-reading a page whose shape has not changed.

prometheus_client's parser reads the text format; it spends about 25 µs a sample, most of the agent's
own per-sample work, deriving labels that are the same at every scrape. A target's page changes from
one scrape to the next in its values only: the same comment lines, the same series, in the same
order. So :class:`TextReader` keeps, per target, the last page's *shape* -- every non-blank line,
a sample line cut to the text before its value -- and the labels the library gave each sample line.
A page of the same shape has only its numbers read, by the library's own rules, and paired with
those labels. Any difference (a new or vanished series, a changed HELP, a line this reader is not
certain to cut as the library would) sends the whole page through the library again, and its shape
becomes the one kept. Output is the library's to the sample: the fast read only ever repeats it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample, Timestamp

from backhaul.wire.metadata import TYPES, Metadata, MetadataMap
from backhaul.wire.series import Labels, PairPool, SeriesMap, pooled

# A counter's (histogram's, summary's) _created series: in the text format a family of its own. It is
# start-time metadata, one more series per counter: not worth the uplink.
_CREATED_TYPES = {"counter", "histogram", "summary", "gaugehistogram"}

Cut = tuple[str, str, str | None]  # a sample line: the text before its value, the value, the timestamp


def created_names(families: list[Metric]) -> set[str]:
    return {f"{f.name}_created" for f in families if f.type in _CREATED_TYPES}


def sample_labels(sample: Sample, base: dict[str, str], created: set[str], pool: PairPool) -> Labels | None:
    """A parsed sample's labels with the target's attached (a scraped label of the same name becomes
    ``exported_<name>``, an empty one is absent), their pairs shared through ``pool``; None for a
    sample not kept."""
    if sample.name in created or sample.native_histogram is not None:
        return None  # native histograms have no float value to keep
    pairs = {"__name__": sample.name}
    for k, v in sample.labels.items():
        if v != "":
            pairs[f"exported_{k}" if k in base else k] = v
    pairs.update(base)
    return pooled(sorted(pairs.items()), pool)


def _add(out: SeriesMap, labels: Labels, ms: int, value: float) -> None:
    entry = out.get(labels)
    if entry is None:
        out[labels] = ([ms], [value])
    else:  # the same series twice in one page: keep both, as Prometheus would refuse only one
        entry[0].append(ms)
        entry[1].append(value)


def _ms(timestamp: float | Timestamp | None, default_ms: int) -> int:
    return default_ms if timestamp is None else round(float(timestamp) * 1000)


def families_to_series(
    families: Iterable[Metric], base: dict[str, str], default_ms: int, pool: PairPool | None = None
) -> SeriesMap:
    """Metric families (parsed or collected) as a ``SeriesMap`` with the target's labels attached."""
    out: SeriesMap = {}
    families = list(families)
    created = created_names(families)
    pool = {} if pool is None else pool
    for family in families:
        for sample in family.samples:
            labels = sample_labels(sample, base, created, pool)
            if labels is not None:
                _add(out, labels, _ms(sample.timestamp, default_ms), float(sample.value))
    return out


def text_metadata(families: list[Metric]) -> MetadataMap:
    """Each text family's type, help and unit."""
    out: MetadataMap = {}
    for family in families:
        kind = family.type if family.type in TYPES else "unknown"
        meta = Metadata(kind, family.documentation[:4096], (family.unit or "")[:128])
        if not meta.is_empty():
            out[family.name] = meta
    return out


def _number(token: str) -> float:
    """A value or timestamp token as prometheus_client reads it: ``int()`` if that takes it, else
    ``float()``. For a token :func:`_cut` let through (no blank, no underscore) ``int()`` takes
    exactly an optional sign and decimal digits; asking first saves raising a ValueError for most
    values, which was an eighth of the agent's CPU at 10k series (py-spy)."""
    digits = token[1:] if token[:1] in ("+", "-") else token
    return int(token) if digits.isdecimal() else float(token)


def _cut(line: str) -> Cut | None:
    """A stripped sample line cut into what precedes its value, the value and the timestamp; None when
    this reader cannot be sure the library would cut it so (a tab, an odd token: the library decides)."""
    if "\t" in line:
        return None
    brace = line.rfind("}")  # a value or timestamp never holds one, so the last one closes the labels
    if brace >= 0:
        head, rest = line[: brace + 1], line[brace + 1 :]
    else:
        space = line.find(" ")
        if space < 0:
            return None
        head, rest = line[:space], line[space + 1 :]
    # Printable ASCII: no blank but the space, so split() cuts as the library does.
    if "_" in rest or not rest.isascii() or not rest.isprintable():
        return None
    tokens = rest.split()
    if len(tokens) == 1:
        return head, tokens[0], None
    return (head, tokens[0], tokens[1]) if len(tokens) == 2 else None


def _numbers(tokens: list[str]) -> list[float]:
    """Value tokens as the library reads them, in C where that gives the same float: ``float()``
    and ``int()``-then-``float()`` part only for an integer token that is ``-0`` (``int`` loses the
    sign) or too big for a float (``int`` refuses), so a zero or an infinity is read again."""
    values = list(map(float, tokens))  # ValueError: the library would refuse the token too
    if 0.0 in values or math.inf in values or -math.inf in values:
        for i, value in enumerate(values):
            if value == 0.0 or math.isinf(value):
                values[i] = float(_number(tokens[i]))
    return values


def _shape(text: str) -> tuple[list[str], list[Cut]] | None:
    """A page's shape (comment lines as they are, sample lines cut before their value) and its cut
    sample lines; None if a line cannot be cut."""
    shape: list[str] = []
    cuts: list[Cut] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line[0] == "#":
            shape.append(line)
            continue
        cut = _cut(line)
        if cut is None:
            return None
        shape.append(cut[0])
        cuts.append(cut)
    return shape, cuts


@dataclass(frozen=True)
class _Known:
    """A page the library has read: its shape, the target labels it was read with, and per sample
    line the labels kept (None: not kept); ``distinct`` when no series is kept twice, so a page of
    this shape without timestamps maps one line to one series."""

    shape: list[str]
    base: dict[str, str]
    labels: list[Labels | None]
    metadata: MetadataMap
    distinct: bool = False
    kept: list[bool] = field(default_factory=list)  # per sample line: whether its series is kept
    kept_labels: list[Labels] = field(default_factory=list)  # the labels of those kept, in order


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class TextReader:
    """One target's text pages, read as the library reads them, fast while their shape holds.

    Pages of one target are read one at a time; the kept shape is replaced as a whole, so a stray
    overlap could only cost a slow read, never a wrong one."""

    def __init__(self) -> None:
        self._known: _Known | None = None
        self.fast_reads = 0  # how many pages were read without the library (for tests and profiles)

    def read(self, text: str, base: dict[str, str], default_ms: int) -> tuple[SeriesMap, MetadataMap]:
        """The page's series and metadata; ValueError (and the like) from the library if it does not parse."""
        cut = _shape(text)
        known = self._known
        if cut is not None and known is not None and known.base == base and cut[0] == known.shape:
            series = self._fast(known, cut[1], default_ms)
            if series is not None:
                self.fast_reads += 1
                return series, dict(known.metadata)
        families = list(parse_text(text))
        pool: PairPool = {}  # the page's series and the labels kept share their pairs
        series = families_to_series(families, base, default_ms, pool)
        metadata = text_metadata(families)
        self._known = self._learn(cut, families, base, metadata, pool)
        return series, metadata

    @staticmethod
    def _fast(known: _Known, cuts: list[Cut], default_ms: int) -> SeriesMap | None:
        try:
            # every line's number, kept or not (a _created one): the library refuses a page for any
            values = _numbers([value for _, value, _ in cuts])
            if known.distinct and not any(stamp for _, _, stamp in cuts):
                kept_values = compress(values, known.kept)
                return {
                    labels: ([default_ms], [value])
                    for labels, value in zip(known.kept_labels, kept_values, strict=True)
                }
            out: SeriesMap = {}
            for labels, value, (_, _, stamp) in zip(known.labels, values, cuts, strict=True):
                ms = default_ms if stamp is None else _ms(_number(stamp) / 1000, default_ms)
                if labels is not None:
                    _add(out, labels, ms, value)
        except ValueError:
            return None  # not a number by the library's rules either: let it say so
        return out

    @staticmethod
    def _learn(
        cut: tuple[list[str], list[Cut]] | None,
        families: list[Metric],
        base: dict[str, str],
        metadata: MetadataMap,
        pool: PairPool,
    ) -> _Known | None:
        """What to keep of a page the library read: only when its samples pair one to one, in order,
        with the cut sample lines (same count, same numbers)."""
        if cut is None:
            return None
        shape, cuts = cut
        samples = [s for f in families for s in f.samples]
        if len(samples) != len(cuts):
            return None
        created = created_names(families)
        labels: list[Labels | None] = []
        for sample, (_, value, stamp) in zip(samples, cuts, strict=True):
            try:
                if not _same(float(sample.value), float(_number(value))):
                    return None
                if (stamp is None) != (sample.timestamp is None):
                    return None
            except ValueError:
                return None
            labels.append(sample_labels(sample, base, created, pool))
        kept = [label is not None for label in labels]
        kept_labels = [label for label in labels if label is not None]
        distinct = len(set(kept_labels)) == len(kept_labels)
        return _Known(shape, dict(base), labels, metadata, distinct, kept, kept_labels)
