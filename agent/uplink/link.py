"""The link: one place for what a metered, intermittent link allows — its cap, budgets and windows.

A :class:`Link` is built from :class:`~agent.uplink.settings.LinkSettings` and asked by everything
that puts bulk traffic on the link:

- the HTTP post helper (:mod:`backhaul.http`, as its ``LinkHooks``), for every request of the bulk
  uplink: :meth:`Link.admit` refuses a request that a closed window or the budget does not allow (and
  saves a reservation of its cost first), :meth:`Link.take` paces the body to the cap, :meth:`Link.count`
  counts every byte that goes out or comes in;
- the uploader and its drain policy (:mod:`agent.uplink.policy`): is the link usable now, how many
  bytes may the next batch have, when does the block lift;
- the inference proxy (as its :class:`~agent.proxy.link.LinkGate`): escalated requests count against
  the same budget and are refused while the link is blocked (``proxy.cloud.respect_budget``).

A device has one link (``[uplink]``) or several (``[[uplink.links]]``): a list of these, in order, of
which :func:`choose` picks the one to use (:mod:`agent.uplink.links` keeps the list and the one in use).
A link with an ``interface`` is usable only while that interface is up with an address; one that is
``alerts_only`` never carries bulk traffic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from agent.buffer.records import UsageRow
from agent.buffer.store import BufferStore
from agent.uplink import iface
from agent.uplink.budget import Budget
from agent.uplink.cap import TokenBucket
from agent.uplink.settings import LinkSettings, NamedLink
from agent.uplink.windows import Windows
from backhaul.errors import StoreError
from backhaul.periods import Periods

log = logging.getLogger(__name__)

# Held back per request for what the body does not include: the request's headers and the answer.
OVERHEAD = 1024
# A batch smaller than this is not worth its headers: with less budget left, the link counts as spent.
MIN_BATCH = 4 * OVERHEAD
# How often a link whose interface is down is looked at again.
DOWN_RECHECK = 1.0

Save = Callable[[list[UsageRow]], Awaitable[None]]


class Link:
    """One link's policy and state.

    Args:
        settings: the link's cap, budgets and windows.
        name: the link's name (its usage is saved under it).
        clock: wall clock in seconds (days, months and windows follow it).
        cap: the token bucket for ``max_bytes_per_second`` (default: one on the monotonic clock).
        interface_state: why an interface cannot carry traffic now, or None (default: :func:`iface.state`).

    A :class:`~agent.uplink.settings.NamedLink` also gives the link its interface, source address and
    whether it is for alerts only.
    """

    def __init__(
        self,
        settings: LinkSettings,
        name: str = "uplink",
        clock: Callable[[], float] = time.time,
        cap: TokenBucket | None = None,
        interface_state: Callable[[str], str | None] = iface.state,
    ) -> None:
        self.settings = settings
        self.name = name
        self._clock = clock
        self._interface_state = interface_state
        self.cap = cap
        periods = Periods(settings.budget_timezone, settings.budget_reset_day)
        self.budget = Budget(name, int(settings.daily_bytes), int(settings.monthly_bytes), periods)
        self.reconfigure(settings)  # the rest (a cap given here is kept: its rate is the setting's)
        self._save: Save | None = None
        # Bytes counted on the wire since start, both directions (for the metrics).
        self.wire_bytes = 0

    def reconfigure(self, settings: LinkSettings) -> None:
        """A reload: the new cap, budgets, windows (and interface, address, alerts_only) from now on;
        what the link spent this day and month stays spent, a request in flight finishes as it was."""
        self.settings = settings
        named = settings if isinstance(settings, NamedLink) else None
        self.interface = named.interface if named is not None else ""
        self.source_address = str(named.source_address) if named and named.source_address else None
        self.alerts_only = named.alerts_only if named is not None else False
        rate = int(settings.max_bytes_per_second)
        if not rate:
            self.cap = None
        elif self.cap is None or self.cap.rate != rate:
            self.cap = TokenBucket(rate)
        budget = self.budget
        budget.limits = {"day": int(settings.daily_bytes), "month": int(settings.monthly_bytes)}
        budget.periods = Periods(settings.budget_timezone, settings.budget_reset_day)
        self.windows = Windows(settings.windows, settings.budget_timezone)

    def persist(self, rows: list[UsageRow], save: Save) -> None:
        """Start from what was saved (``rows``) and save through ``save`` from now on."""
        self.budget.load(rows)
        self._save = save

    async def attach(self, store: BufferStore) -> None:
        """Keep the usage in ``store`` (the buffer): start from what the link spent so far this day
        and month, so that no restart, crash or power cut hands a spent budget back."""
        usage = await store.call(store.usage)
        self.persist(usage, lambda rows: store.call(store.add_usage, rows))

    # -- state -------------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def down(self) -> str | None:
        """Why the link's interface cannot carry anything now ("down", "no address", ...), or None."""
        return self._interface_state(self.interface) if self.interface else None

    def blocked(self, nbytes: int = 0) -> str | None:
        """Why the link may not carry ``nbytes`` more of bulk traffic now ("alerts_only", "down",
        "window" or "budget"), or None. With ``nbytes`` 0 (the proxy's question): whether anything
        at all may go."""
        if self.alerts_only:
            return "alerts_only"
        if self.down() is not None:
            return "down"
        now = self._clock()
        if not self.windows.open(now):
            return "window"
        left = self.budget.remaining(now)
        if left is not None and left < nbytes + OVERHEAD:
            return "budget"
        return None

    def affordable(self) -> int | None:
        """The most body bytes a request may have now; None when no budget limits it."""
        left = self.budget.remaining(self._clock())
        return None if left is None else max(0, left - OVERHEAD)

    def lifts_in(self, reason: str) -> float:
        """Seconds until a block for ``reason`` may lift (a window opens, the budget renews)."""
        now = self._clock()
        if reason == "window":
            opens = self.windows.next_open(now)
            return 3600.0 if opens is None else max(0.0, opens - now)
        if reason == "budget":
            renews = self.budget.renews(now)
            return 3600.0 if renews is None else max(0.0, renews - now)
        if reason == "down":
            return DOWN_RECHECK
        return 3600.0 if reason == "alerts_only" else 0.0

    @property
    def throttling(self) -> bool:
        return self.cap is not None and self.cap.throttling

    # -- the HTTP post helper's hooks (backhaul.http.LinkHooks) ------------------------------------

    async def admit(self, nbytes: int) -> str | None:
        """Before a request of ``nbytes`` (its body): None and its cost reserved (saved), or why not."""
        reason = self.blocked(nbytes)
        if reason is not None or not self.budget.limited:
            return reason
        rows = self.budget.reserve(nbytes + OVERHEAD, self._clock())
        if self._save is not None:
            try:
                await self._save(rows)
            except StoreError as exc:  # the request goes anyway; the next save carries the rows
                log.warning("could not save the link's reservation: %s", exc)
                self.budget.unsave(rows)
        return None

    async def take(self, nbytes: int) -> None:
        if self.cap is not None:
            await self.cap.take(nbytes)

    def count(self, nbytes: int) -> None:
        """``nbytes`` went out or came in (also the proxy's escalated traffic)."""
        self.wire_bytes += nbytes
        self.budget.count(nbytes, self._clock())

    def done(self) -> None:
        """A request is over: its reservation gives way to what was counted."""
        self.budget.release()

    def slack(self, nbytes: int) -> float:
        """Seconds ``nbytes`` take at the cap (added to a request's timeout)."""
        return self.cap.seconds_for(nbytes) if self.cap is not None else 0.0

    async def flush(self) -> None:
        """Save what was counted and not yet saved (the proxy's bytes, a failed attempt)."""
        rows = self.budget.unsaved()
        if not rows or self._save is None:
            return
        try:
            await self._save(rows)
        except StoreError as exc:
            log.warning("could not save the link's usage: %s", exc)
            self.budget.unsave(rows)

    # -- for the batch header, /healthz and the fleet page -------------------------------------------

    def report(self, blocked: str | None) -> dict[str, int | str]:
        """The link's state as the batch header carries it (see :class:`~backhaul.wire.batch.BatchHeader`),
        with why bulk uploads are held (``blocked``, else "cap" while throttled)."""
        blocked = blocked or ("cap" if self.throttling else None)
        now = self._clock()
        closes = self.windows.closes(now)
        reopens = self.windows.next_open(closes if closes is not None else now)
        return {
            "link": self.name,
            "spent_day": self.budget.spent("day", now),
            "budget_day": self.budget.limits["day"],
            "spent_month": self.budget.spent("month", now),
            "budget_month": self.budget.limits["month"],
            "blocked": blocked or "",
            "window_ends_ms": int(closes * 1000) if closes is not None else 0,
            "next_window_ms": int(reopens * 1000) if reopens is not None and not self.windows.always else 0,
        }


def choose(links: Sequence[Link], nbytes: int = 0) -> tuple[Link | None, str | None]:
    """The first link that may carry ``nbytes`` of bulk traffic now, or None and why the first bulk
    link may not (an alerts_only link is never the reason bulk traffic waits)."""
    first_reason: str | None = None
    for link in links:
        reason = link.blocked(nbytes)
        if reason is None:
            return link, None
        if reason != "alerts_only":
            first_reason = first_reason or reason
    return None, first_reason


def for_alerts(links: Sequence[Link]) -> Link | None:
    """The first link whose interface is up, alerts_only ones included (alerts ignore windows and bulk
    budgets); None when none is."""
    return next((link for link in links if link.down() is None), None)
