"""Upload windows (``uplink.windows``): the minutes in which bulk uploads may go, as cron expressions.

Each expression is read by APScheduler 3's ``CronTrigger.from_crontab`` (minute hour day month
day-of-week; note that APScheduler numbers the days of the week from 0 = Monday, so names such as
``mon-fri`` are clearer) in ``uplink.budget_timezone``. A minute is open when one of the expressions
matches it; no expression at all means always open. Times are epoch seconds from the caller's clock.
"""

from __future__ import annotations

import math
from datetime import datetime

from apscheduler.triggers.cron import CronTrigger

from backhaul.periods import zone

# How far ahead to look for the end of an open stretch, or for the next opening, in minutes: a stretch
# that is still open after a week is as good as always open.
HORIZON_MINUTES = 7 * 24 * 60


def parse(expression: str, timezone: str = "UTC") -> CronTrigger:
    """One window expression as a trigger; ValueError naming the expression when it does not parse."""
    try:
        return CronTrigger.from_crontab(expression, timezone=zone(timezone))
    except ValueError as exc:
        raise ValueError(f"{expression!r} is not a cron expression (minute hour day month day-of-week): {exc}") from exc


class Windows:
    """Args: the cron expressions (empty: always open) and the time zone they are read in."""

    def __init__(self, expressions: list[str], timezone: str = "UTC") -> None:
        self.expressions = list(expressions)
        self._tz = zone(timezone)
        self._triggers = [parse(e, timezone) for e in expressions]
        self._cache: dict[int, bool] = {}

    @property
    def always(self) -> bool:
        return not self._triggers

    def _matches(self, minute: int) -> bool:
        """Whether the minute starting at ``minute * 60`` is in a window."""
        hit = self._cache.get(minute)
        if hit is None:
            at = datetime.fromtimestamp(minute * 60, self._tz)
            hit = any(t.get_next_fire_time(None, at) == at for t in self._triggers)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[minute] = hit
        return hit

    def open(self, now: float) -> bool:
        return self.always or self._matches(math.floor(now / 60))

    def next_open(self, now: float) -> float | None:
        """When bulk uploads may next go: ``now`` while a window is open, else the start of the next
        window; None when no window opens within a week (or none is configured: then always open)."""
        if self.always or self.open(now):
            return None if self.always else now
        at = datetime.fromtimestamp(now, self._tz)
        starts = [t.get_next_fire_time(None, at) for t in self._triggers]
        found = [s.timestamp() for s in starts if s is not None]
        return min(found) if found else None

    def closes(self, now: float) -> float | None:
        """When the window open at ``now`` ends (the start of its first minute that matches no
        expression); None when none is open, or when it stays open for a week or more."""
        if self.always or not self.open(now):
            return None
        minute = math.floor(now / 60)
        for step in range(1, HORIZON_MINUTES):
            if not self._matches(minute + step):
                return float((minute + step) * 60)
        return None
