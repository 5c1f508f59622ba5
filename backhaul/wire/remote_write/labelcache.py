"""Remote write 1.0's label sets, decoded once and checked against the limits, then looked up by bytes.

A sender repeats the same series request after request, so a series' raw label bytes are looked up
before anything is parsed. Two keys reach the same sets:

- :meth:`LabelCache.lookup`: a series' label items (each a serialized ``Label``), joined, when a
  request is read series by series;
- :meth:`LabelCache.framed`: a series' labels exactly as serialized by ``KeySeries`` (tag, length
  and item, for each label), when the usual request is read in bulk (``decoding``).

Both keys are exact: equal bytes mean equal label items, so a hit is the set the items decode to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from backhaul import labels
from backhaul.wire.errors import WireError
from backhaul.wire.remote_write.messages import KeySeries, Label, LabelBytes
from backhaul.wire.series import Labels, pooled

if TYPE_CHECKING:
    from backhaul.wire.remote_write.decoding import Limits


class LabelCache:
    """Label sets already decoded (and checked against the limits), keyed by their raw protobuf bytes.

    Decoding a series' labels once saves most of a request's parsing. Label pairs are interned so
    that thousands of series sharing ``job="node"`` hold one copy. Both the sets and the interned
    pairs are bounded: when either is full, both start over (the next requests refill them), so
    series churn cannot grow the cache for ever.

    Args:
        max_entries: label sets kept (under either key).
        max_pairs: interned label pairs kept (default: four per label set).
    """

    def __init__(self, max_entries: int = 100_000, max_pairs: int | None = None) -> None:
        self._max_entries = max_entries
        self._max_pairs = max_pairs if max_pairs is not None else 4 * max_entries
        self._sets: dict[bytes | tuple[bytes, ...], Labels | str] = {}
        self._framed: dict[bytes, Labels | str] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self._limits: tuple[int, int, str] = (0, 0, "")

    def __len__(self) -> int:
        return len(self._sets) + len(self._framed)

    @property
    def pairs(self) -> int:
        """Label pairs interned now."""
        return len(self._pairs)

    def lookup(self, raw: Sequence[bytes], limits: Limits) -> Labels | str:
        """The series' sorted labels, or the reason they are refused (a drop reason)."""
        joined = b"\xff".join(raw)
        # When an item holds 0xff itself (a length varint can), joining would be ambiguous.
        key = joined if joined.count(b"\xff") == len(raw) - 1 else tuple(raw)
        self._apply(limits)
        found = self._sets.get(key)
        if found is not None:
            return found
        result = self._decode(raw, len(joined), limits)
        self._store(self._sets, key, result)
        return result

    def framed(self, keys: list[bytes], limits: Limits) -> list[Labels | str] | None:
        """For each key (a series serialized as a ``KeySeries``: its labels, and its exemplars and
        histograms if it has any), its sorted labels or the reason they are refused; None when a
        series has exemplars or histograms (the caller reads the request series by series)."""
        self._apply(limits)
        found: list[Any] = list(map(self._framed.get, keys))
        if None not in found:
            return found
        for i, known in enumerate(found):
            if known is None:
                series = KeySeries.FromString(keys[i])
                if series.exemplars or series.histograms:
                    return None
                items = series.labels  # measured as lookup() measures its joined key: items and separators
                result = self._decode(items, sum(map(len, items)) + len(items) - 1, limits)
                self._store(self._framed, keys[i], result)
                found[i] = result
        return found

    def clear(self) -> None:
        self._sets.clear()
        self._framed.clear()
        self._pairs.clear()

    def _apply(self, limits: Limits) -> None:
        """Start over when the limits change: a set cached under other limits may break these."""
        wanted = (limits.max_labels_per_series, limits.max_label_bytes, limits.device_label)
        if self._limits != wanted:
            self.clear()
            self._limits = wanted

    def _store(self, into: dict[Any, Labels | str], key: Any, result: Labels | str) -> None:
        if len(self) >= self._max_entries or len(self._pairs) >= self._max_pairs:
            self.clear()
        into[key] = result

    def _decode(self, raw: Sequence[bytes], joined_size: int, limits: Limits) -> Labels | str:
        """A series' label items (``joined_size``: their bytes joined by one separator each) to its
        sorted labels, or the reason they are refused."""
        # Before parsing a label at all: a set of 100,000 labels costs a length check, not 100,000 objects.
        if len(raw) > limits.max_labels_per_series:
            return "too_many_labels"
        if joined_size > 2 * limits.max_label_bytes + 8 * len(raw):  # bytes on the wire > text + framing
            return "labels_too_long"
        pairs = []
        for item in raw:
            try:
                label = Label.FromString(item)
            except DecodeError as exc:
                if not _valid_except_utf8(item):
                    raise WireError(f"protobuf: not a WriteRequest (bad label: {exc})") from exc
                return "invalid_utf8"  # the one series is dropped, the request is not refused
            pairs.append((label.name, label.value))
        return label_problem(pairs, limits) or pooled(sorted(pairs), self._pairs)


def _valid_except_utf8(item: bytes) -> bool:
    """Whether a Label that upb refused parses with its strings read as bytes (so only UTF-8 was wrong)."""
    try:
        LabelBytes.FromString(item)
    except DecodeError:
        return False
    return True


def label_problem(pairs: list[tuple[str, str]], limits: Limits) -> str | None:
    """The drop reason for a label set that breaks the one set of rules (:mod:`backhaul.labels`), or None."""
    return labels.rules_for(limits.max_labels_per_series, limits.max_label_bytes, limits.device_label).problem(pairs)
