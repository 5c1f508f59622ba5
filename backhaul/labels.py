"""One set of label rules for every ingest path: the agent's remote write (1.0, 2.0, OTLP) and the
collector's batches and remote write all ask :meth:`LabelRules.problem` about each series.

A series that breaks a rule is dropped and counted under the rule's reason; the rest of the request
is kept (DESIGN.md, delivery contract 7). The rules:

==========================  ======================================================================
reason                      refused when
==========================  ======================================================================
``no_labels``               the series has no labels at all
``too_many_labels``         more than ``max_labels`` labels
``labels_too_long``         names and values together over ``max_label_bytes`` (UTF-8 bytes)
``empty_label_name``        a label name is ""
``duplicate_label_name``    a name appears twice
``invalid_label_name``      a name is not ``[a-zA-Z_][a-zA-Z0-9_]*`` (Prometheus' label names)
``missing_metric_name``     no ``__name__``, or an empty one
``invalid_metric_name``     ``__name__`` is not ``[a-zA-Z_:][a-zA-Z0-9_:]*``
``invalid_utf8``            a name or value is not valid UTF-8 (e.g. a lone surrogate from JSON)
``device_label_lookalike``  a name that reads as the device label without being it: the same
                            letters in another case or with other underscores (``Device_ID``,
                            ``deviceid``); look-alikes with spaces or invisible characters are
                            already invalid names
==========================  ======================================================================

Names are checked against Prometheus' classic character set, not the UTF-8 names of Prometheus 3:
with it, ``device_id `` and ``device_id\\u200b`` cannot pass as the device label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from backhaul.wire.series import SeriesMap

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
REASONS = (
    "no_labels",
    "too_many_labels",
    "labels_too_long",
    "empty_label_name",
    "duplicate_label_name",
    "invalid_label_name",
    "missing_metric_name",
    "invalid_metric_name",
    "invalid_utf8",
    "device_label_lookalike",
)
# Names already found valid, kept so that a label set costs set lookups; bounded (starts over when full).
_KNOWN_NAMES = 10_000


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON's "\ud800" decodes to one
        return False
    return True


def _skeleton(name: str) -> str:
    return name.replace("_", "").casefold()


@dataclass
class LabelRules:
    """The rules and limits a series' labels must meet.

    Args:
        max_labels: labels per series, ``__name__`` included.
        max_label_bytes: UTF-8 bytes of all names and values of a series together.
        device_label: the label that names the device at the collector ("" when none): names that
            read as it without being it are refused (the label itself is renamed by the collector).
    """

    max_labels: int = 128
    max_label_bytes: int = 16 * 1024
    device_label: str = ""
    _names: set[str] = field(default_factory=set, repr=False, compare=False)
    _metrics: set[str] = field(default_factory=set, repr=False, compare=False)

    def problem(self, pairs: Iterable[tuple[str, str]]) -> str | None:
        """The drop reason for a label set that breaks a rule (see the module docstring), or None."""
        pairs = pairs if isinstance(pairs, list | tuple) else list(pairs)
        if not pairs:
            return "no_labels"
        if len(pairs) > self.max_labels:
            return "too_many_labels"
        names = self._names
        size = 0
        metric: str | None = None
        for name, value in pairs:
            if type(name) is not str or type(value) is not str:
                return "invalid_label_name" if type(name) is not str else "invalid_utf8"
            size += len(name) + len(value)
            if name not in names:
                reason = self._name_problem(name)
                if reason:
                    return reason
            if name == "__name__":
                metric = value
            elif not value.isascii() and not _utf8(value):
                return "invalid_utf8"
        if len({name for name, _ in pairs}) != len(pairs):
            return "duplicate_label_name"
        # len() counts characters (names are ASCII); only a set near the bound needs its bytes counted.
        if size > self.max_label_bytes or (
            size * 4 > self.max_label_bytes and sum(len(n) + len(v.encode()) for n, v in pairs) > self.max_label_bytes
        ):
            return "labels_too_long"
        if not metric:
            return "missing_metric_name"
        if metric not in self._metrics:
            if not METRIC_NAME.fullmatch(metric):
                return "invalid_metric_name" if _utf8(metric) else "invalid_utf8"
            if len(self._metrics) >= _KNOWN_NAMES:
                self._metrics.clear()
            self._metrics.add(metric)
        return None

    def _name_problem(self, name: str) -> str | None:
        if not name:
            return "empty_label_name"
        if not LABEL_NAME.fullmatch(name):
            return "invalid_label_name" if _utf8(name) else "invalid_utf8"
        device = self.device_label
        if device and name != device and _skeleton(name) == _skeleton(device):
            return "device_label_lookalike"
        if len(self._names) >= _KNOWN_NAMES:
            self._names.clear()
        self._names.add(name)
        return None


_RULES: dict[tuple[int, int, str], LabelRules] = {}


def rules_for(max_labels: int, max_label_bytes: int, device_label: str = "") -> LabelRules:
    """The (shared, so its name cache is reused) rules for these limits."""
    key = (max_labels, max_label_bytes, device_label)
    found = _RULES.get(key)
    if found is None:
        if len(_RULES) > 64:  # limits come from settings: a handful of combinations in practice
            _RULES.clear()
        found = _RULES[key] = LabelRules(max_labels, max_label_bytes, device_label)
    return found


def drop_bad_series(series: SeriesMap, rules: LabelRules) -> dict[str, int]:
    """Remove from ``series`` (in place) every series whose labels break a rule; samples dropped by reason."""
    dropped: dict[str, int] = {}
    bad = []
    for labels, (stamps, _) in series.items():
        reason = rules.problem(labels)
        if reason is not None:
            bad.append(labels)
            dropped[reason] = dropped.get(reason, 0) + len(stamps)
    for labels in bad:
        del series[labels]
    return dropped
