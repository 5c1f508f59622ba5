"""Calendar periods for byte budgets: the day, and the month that restarts on a given day, in a time zone.

A period is named by an integer key, the date it started as ``yyyymmdd`` (20261201), so keys of one
kind sort in time order and fit the integer tables of the agent's databases. Used by the bulk
uplink's budgets (``uplink.daily_bytes``, ``uplink.monthly_bytes``) and by the alert lane's own
``alerts.daily_bytes``; both count in ``uplink.budget_timezone``.

A month that is shorter than ``reset_day`` restarts on its last day (a plan that renews on the 31st
renews on 30 April and on 28 or 29 February).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError (for the settings' messages) when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'UTC' or 'Europe/Berlin')") from exc


def key_of(day: date) -> int:
    return day.year * 10_000 + day.month * 100 + day.day


@dataclass(frozen=True)
class Period:
    """One period: its key (the start date as yyyymmdd) and when it starts and ends (epoch seconds)."""

    key: int
    start: float
    end: float


class Periods:
    """Days and months in a time zone.

    Args:
        timezone: an IANA time zone name.
        reset_day: the day of the month (1-31) on which a monthly period starts.
    """

    def __init__(self, timezone: str = "UTC", reset_day: int = 1) -> None:
        if not 1 <= reset_day <= 31:
            raise ValueError("reset_day must be from 1 to 31")
        self.tz = zone(timezone)
        self.reset_day = reset_day

    def _midnight(self, day: date) -> float:
        return datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()

    def _local_date(self, now: float) -> date:
        return datetime.fromtimestamp(now, self.tz).date()

    def day(self, now: float) -> Period:
        """The local day that contains ``now``."""
        today = self._local_date(now)
        return Period(key_of(today), self._midnight(today), self._midnight(today + timedelta(days=1)))

    def _month_start(self, year: int, month: int) -> date:
        return date(year, month, min(self.reset_day, calendar.monthrange(year, month)[1]))

    def month(self, now: float) -> Period:
        """The monthly period (starting on ``reset_day``) that contains ``now``."""
        today = self._local_date(now)
        start = self._month_start(today.year, today.month)
        if today < start:
            year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
            start = self._month_start(year, month)
        year, month = (start.year, start.month + 1) if start.month < 12 else (start.year + 1, 1)
        end = self._month_start(year, month)
        return Period(key_of(start), self._midnight(start), self._midnight(end))

    def period(self, kind: str, now: float) -> Period:
        """``kind`` is "day" or "month"."""
        return self.day(now) if kind == "day" else self.month(now)
