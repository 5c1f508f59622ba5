"""The alert lane's own byte budget (``alerts.daily_bytes``): alerts ignore the bulk uplink's windows
and budgets, and spend from this one instead.

Every channel charges it: the HTTP channel through its HTTP client (this is that client's
``LinkHooks``: every byte of request and answer, headers included, and never a cap), MQTT and the
command channel with the message's size plus the protocol's few bytes. A message that the day's
budget cannot carry waits in the durable queue (the sender retries it) until the next day starts in
``uplink.budget_timezone``. What was spent is saved in the alert queue's file after each attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from backhaul.periods import Periods

# Held back per message for what its size does not show (headers, the answer).
OVERHEAD = 512


class AlertBudget:
    """Args: the daily limit in bytes (0: none); the calendar; the wall clock (seconds)."""

    def __init__(self, daily: int, periods: Periods, clock: Callable[[], float] = time.time) -> None:
        self.daily = int(daily)
        self.periods = periods
        self._clock = clock
        self._key = 0
        self._spent = 0
        self._unsaved = 0

    def load(self, key: int, spent: int) -> None:
        """What the queue file says was spent, and on which day."""
        self._key, self._spent = key, spent

    def _roll(self) -> int:
        key = self.periods.day(self._clock()).key
        if key > self._key:
            self._key, self._spent = key, 0
        return self._key

    def spent(self) -> int:
        self._roll()
        return self._spent

    async def admit(self, nbytes: int) -> str | None:
        self._roll()
        if self.daily and self._spent + nbytes + OVERHEAD > self.daily:
            return "budget"
        return None

    async def take(self, nbytes: int) -> None:
        return None  # alerts are never slowed down

    def count(self, nbytes: int) -> None:
        self._roll()
        self._spent += nbytes
        self._unsaved += nbytes

    def done(self) -> None:
        return None

    def slack(self, nbytes: int) -> float:
        return 0.0

    def unsaved(self) -> tuple[int, int]:
        """The day's key and the bytes counted since the last save (the caller saves them)."""
        key, n = self._roll(), self._unsaved
        self._unsaved = 0
        return key, n

    def unsave(self, nbytes: int) -> None:
        self._unsaved += nbytes
