"""Alert rules evaluated on the device, over the samples the agent receives.

Any source hands its decoded samples to :meth:`RuleEngine.observe` (remote write does, after the
commit; a scraper or host-metrics source can call it the same way). ``observe`` is cheap: a series is
looked at only when its metric name (or a rule without a fixed name) could match, a match result is
cached per label set, and per matching series only the newest value — or the samples of the rule's
window for ``rate``/``avg``/``min``/``max`` — is kept. :meth:`RuleEngine.evaluate` then computes each
rule per series (one alert instance per series; ``absent`` is one instance per rule).
"""

from __future__ import annotations

import math
import operator
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.alerts.settings import RuleSettings
from backhaul.selector import Selector
from backhaul.wire.series import Labels, SeriesMap

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_MATCH_CACHE = 10_000  # label sets whose match result a rule remembers


@dataclass(frozen=True)
class Result:
    """One alert instance's condition at one evaluation."""

    name: str
    fingerprint: int
    active: bool
    value: float
    severity: str
    summary: str
    for_ms: int
    labels: Labels = ()


def fingerprint(name: str, labels: Labels = ()) -> int:
    """Stable u32 identity of an alert instance (rule name + series labels), the same after a restart."""
    text = name + "\x00" + "\x00".join(f"{k}={v}" for k, v in labels)
    return zlib.crc32(text.encode())


class _Series:
    __slots__ = ("samples", "seen")

    def __init__(self) -> None:
        self.samples: deque[tuple[int, float]] = deque()
        self.seen = 0.0  # agent clock (s) of the last sample received


class _Rule:
    def __init__(self, settings: RuleSettings, max_series: int) -> None:
        self.settings = settings
        self.selector = Selector.parse(settings.selector)
        self.name_matcher = next(
            (m.value for m in self.selector.matchers if m.name == "__name__" and m.op == "="), None
        )
        self.window_ms = int(settings.window.total_seconds() * 1000)
        self.keep_window = settings.function != "last"
        self.max_series = max_series
        self.series: dict[Labels, _Series] = {}
        self.ignored = 0
        self._matches: dict[Labels, bool] = {}

    def matches(self, labels: Labels) -> bool:
        hit = self._matches.get(labels)
        if hit is None:
            if len(self._matches) >= _MATCH_CACHE:
                self._matches.clear()
            hit = self._matches[labels] = self.selector.matches(dict(labels))
        return hit

    def offer(self, labels: Labels, stamps: list[int], values: list[float], now: float) -> bool:
        if not stamps or not self.matches(labels):
            return False
        entry = self.series.get(labels)
        if entry is None:
            if len(self.series) >= self.max_series:
                self.ignored += 1
                return False
            entry = self.series[labels] = _Series()
        entry.seen = now
        samples = entry.samples
        if not self.keep_window:
            samples.clear()
            samples.append((stamps[-1], values[-1]))
            return True
        samples.extend(zip(stamps, values, strict=True))
        newest = samples[-1][0]
        while samples and samples[0][0] < newest - self.window_ms:
            samples.popleft()
        return True

    def value(self, entry: _Series) -> float:
        samples = entry.samples
        fn = self.settings.function
        if fn == "last":
            return samples[-1][1]
        values = [v for _, v in samples if not math.isnan(v)]
        if not values:
            return math.nan
        if fn == "avg":
            return sum(values) / len(values)
        if fn == "min":
            return min(values)
        if fn == "max":
            return max(values)
        # rate: per-second increase, counter resets counted as in PromQL (a drop restarts from 0)
        if len(samples) < 2:
            return math.nan
        increase, previous = 0.0, samples[0][1]
        for _, v in list(samples)[1:]:
            increase += v - previous if v >= previous else v
            previous = v
        span = (samples[-1][0] - samples[0][0]) / 1000
        return increase / span if span > 0 else math.nan


class RuleEngine:
    """Keeps what the rules need from incoming samples and evaluates them.

    Args:
        rules: the configured rules.
        max_series_per_rule: series tracked per rule at most (more are ignored, counted in ``ignored``).
        stale_after: seconds without a sample after which a series is forgotten.
        on_match: called (cheaply, synchronously) when observed samples matched a rule — used to
            evaluate at once instead of waiting for the next scheduled pass.
        clock: wall clock in seconds.
    """

    def __init__(
        self,
        rules: list[RuleSettings],
        max_series_per_rule: int = 1000,
        stale_after: float = 300.0,
        on_match: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_series = max_series_per_rule
        self._rules: list[_Rule] = []
        self._by_name: dict[str, list[_Rule]] = {}
        self._any_name: list[_Rule] = []
        self.replace_rules(rules)
        self._stale_after = stale_after
        self._on_match = on_match
        self._clock = clock

    def replace_rules(self, rules: list[RuleSettings]) -> None:
        """A reload: evaluate ``rules`` from now on. A rule whose settings did not change keeps the
        samples it holds (its window is not restarted); a new or changed one starts empty."""
        by_settings = {r.settings.model_dump_json(): r for r in self._rules}
        fresh: list[_Rule] = []
        for settings in rules:
            same = by_settings.pop(settings.model_dump_json(), None)
            fresh.append(same if same is not None else _Rule(settings, self._max_series))
        by_name: dict[str, list[_Rule]] = {}
        any_name: list[_Rule] = []
        for rule in fresh:
            if rule.name_matcher is None:
                any_name.append(rule)
            else:
                by_name.setdefault(rule.name_matcher, []).append(rule)
        self._rules, self._by_name, self._any_name = fresh, by_name, any_name

    @property
    def ignored(self) -> int:
        """Series not tracked because a rule already tracks ``max_series_per_rule``."""
        return sum(r.ignored for r in self._rules)

    def observe(self, series: SeriesMap) -> None:
        """Look at freshly received samples (any source may call this; it never blocks)."""
        if not self._rules:
            return
        now = self._clock()
        matched = False
        by_name, any_name = self._by_name, self._any_name
        for labels, (stamps, values) in series.items():
            # Labels are sorted, so __name__ comes first unless a label name starts with an upper-case letter.
            if labels and labels[0][0] == "__name__":
                name = labels[0][1]
            else:
                name = next((v for k, v in labels if k == "__name__"), "")
            rules = by_name.get(name)
            if rules is not None:
                for rule in rules:
                    matched = rule.offer(labels, stamps, values, now) or matched
            for rule in any_name:
                matched = rule.offer(labels, stamps, values, now) or matched
        if matched:
            self._on_match()

    def evaluate(self) -> list[Result]:
        """Every rule's instances now; forgets series that went stale."""
        now = self._clock()
        out: list[Result] = []
        for rule in self._rules:
            s = rule.settings
            for_ms = int(s.for_.total_seconds() * 1000)
            stale = [labels for labels, e in rule.series.items() if now - e.seen > self._stale_after]
            for labels in stale:
                del rule.series[labels]
            if s.op == "absent":
                present = any(now - e.seen <= s.window.total_seconds() for e in rule.series.values())
                out.append(Result(s.name, fingerprint(s.name), not present, math.nan, s.severity, s.summary, for_ms))
                continue
            test = _OPS[s.op]
            for labels, entry in rule.series.items():
                value = rule.value(entry)
                active = not math.isnan(value) and test(value, s.threshold)
                summary = s.summary.replace("{value}", f"{value:g}")
                out.append(
                    Result(s.name, fingerprint(s.name, labels), active, value, s.severity, summary, for_ms, labels)
                )
        return out
