"""Byte budgets (``uplink.daily_bytes``, ``uplink.monthly_bytes``): what a link spent this day and month.

Every byte the link carries is counted as it goes (request headers and bodies, answers, failed
attempts: they were paid for). What is counted lives here in memory and, until it is saved, in
:meth:`Budget.unsaved`: the uploader saves it with the acknowledgement of the batch that spent it, in
the same transaction, and before each request it saves a *reservation* of what the request will cost,
corrected once the request is over. So a crash or a power cut at any moment leaves the database with
at least what was really spent, and a restart never hands a spent budget back.
"""

from __future__ import annotations

from collections import defaultdict

from agent.buffer.records import UsageRow
from backhaul.periods import Periods

KINDS = ("day", "month")


class Budget:
    """Args:
    link: the link's name (the key its usage is saved under).
    daily, monthly: the limits in bytes, 0 for none.
    periods: the calendar the days and months are counted in.
    """

    def __init__(self, link: str, daily: int, monthly: int, periods: Periods) -> None:
        self.link = link
        self.limits = {"day": int(daily), "month": int(monthly)}
        self.periods = periods
        self._spent: dict[str, tuple[int, int]] = {}  # kind -> (period key, bytes)
        self._unsaved: dict[tuple[str, int], int] = defaultdict(int)
        self._reserved: list[tuple[str, int, int]] = []  # (kind, key, bytes) held for a request in flight

    @property
    def limited(self) -> bool:
        return any(self.limits.values())

    def load(self, rows: list[UsageRow]) -> None:
        """What the database says this link spent (at start)."""
        for link, kind, key, nbytes in rows:
            if link == self.link and kind in KINDS:
                self._spent[kind] = (key, nbytes)

    def _add(self, nbytes: int, now: float) -> list[tuple[str, int, int]]:
        added = []
        for kind in KINDS:
            key = self.periods.period(kind, now).key
            held_key, held = self._spent.get(kind, (0, 0))
            if key > held_key:  # a new period: the count starts again
                held_key, held = key, 0
            # (a key below the held one: the clock stepped back; keep counting into the later period)
            self._spent[kind] = (held_key, held + nbytes)
            self._unsaved[(kind, held_key)] += nbytes
            added.append((kind, held_key, nbytes))
        return added

    def count(self, nbytes: int, now: float) -> None:
        """``nbytes`` went out or came in."""
        if nbytes:
            self._add(nbytes, now)

    def reserve(self, nbytes: int, now: float) -> list[UsageRow]:
        """Hold ``nbytes`` for a request about to start; returns the rows to save before it starts.

        Held bytes count against what is left (:meth:`remaining`) but not as spent; once the request
        is over (:meth:`release`) what it really took is what stays."""
        rows = []
        for kind in KINDS:
            key = max(self.periods.period(kind, now).key, self._spent.get(kind, (0, 0))[0])
            self._reserved.append((kind, key, nbytes))  # saved by the caller now; undone at release
            rows.append((self.link, kind, key, nbytes))
        return rows

    def release(self) -> None:
        """The request is over: its reservation gives way to what was counted while it ran."""
        for kind, key, nbytes in self._reserved:
            self._unsaved[(kind, key)] -= nbytes
        self._reserved.clear()

    def unsaved(self) -> list[UsageRow]:
        """Bytes counted (or reservations released) since the last save; the caller saves them now."""
        rows = [(self.link, kind, key, n) for (kind, key), n in self._unsaved.items() if n]
        self._unsaved.clear()
        return rows

    def unsave(self, rows: list[UsageRow]) -> None:
        """Saving ``rows`` failed: keep them for the next save."""
        for _, kind, key, nbytes in rows:
            self._unsaved[(kind, key)] += nbytes

    def spent(self, kind: str, now: float) -> int:
        """Bytes counted in the current period of ``kind`` (a reservation held is not spent)."""
        key = self.periods.period(kind, now).key
        held_key, held = self._spent.get(kind, (0, 0))
        return held if held_key >= key else 0

    def _held(self, kind: str, now: float) -> int:
        key = self.periods.period(kind, now).key
        return sum(n for k, held_key, n in self._reserved if k == kind and held_key >= key)

    def remaining(self, now: float) -> int | None:
        """Bytes left before a budget is spent (the tighter of the two), reservations held counted as
        gone; None when there is no budget."""
        left = [limit - self.spent(k, now) - self._held(k, now) for k, limit in self.limits.items() if limit]
        return min(left) if left else None

    def renews(self, now: float) -> float | None:
        """When the budget that binds (the one with the least left) starts again; None without budgets."""
        left = [(limit - self.spent(kind, now), kind) for kind, limit in self.limits.items() if limit]
        if not left:
            return None
        _, kind = min(left)
        return self.periods.period(kind, now).end

    def used(self, now: float) -> float:
        """The largest share of a budget spent (0 without budgets)."""
        return max((self.spent(k, now) / limit for k, limit in self.limits.items() if limit), default=0.0)
