"""The device's links in order of preference, and the one bulk uploads use now (``[[uplink.links]]``).

:class:`Links` is what the rest of the agent holds instead of a single :class:`~agent.uplink.link.Link`:

- the drain policy asks :meth:`Links.select` before every batch: the first link that is up, in its
  window and within its budget (:func:`~agent.uplink.link.choose`) becomes the active one; a switch
  is logged (from, to and why) and reported through ``on_switch`` (the metrics count it);
- the alert lane asks :meth:`Links.alert_route`: the first link that is up, alerts_only ones included;
- the inference proxy sees it as its :class:`~agent.proxy.link.LinkGate`: escalated requests count
  against the active link's budget;
- a reload (:meth:`Links.reconfigure`) applies new caps, budgets, windows and links in place: a link
  that keeps its name keeps what it spent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from agent.buffer.store import BufferStore
from agent.uplink.link import Link, choose, for_alerts
from agent.uplink.settings import UplinkSettings

log = logging.getLogger(__name__)

OnSwitch = Callable[[Link, Link, str], None]


class Links:
    """Args:
    settings: the ``[uplink]`` settings (``links``, or the one implicit link).
    clock: wall clock in seconds; make: builds a link (tests pass one with a fake interface check).
    """

    def __init__(
        self,
        settings: UplinkSettings,
        clock: Callable[[], float] = time.time,
        make: Callable[..., Link] = Link,
    ) -> None:
        self._start([make(s, name, clock) for name, s in settings.named_links()], clock, make)

    @classmethod
    def of(cls, link: Link) -> Links:
        """One given link (the uploader's and the policy's tests, the bench)."""
        self = cls.__new__(cls)
        self._start([link], link.now, Link)
        self._chosen = True
        return self

    def _start(self, links: list[Link], clock: Callable[[], float], make: Callable[..., Link]) -> None:
        self._clock = clock
        self._make = make
        self.all = links
        self.active = self.bulk()[0]
        self._chosen = False  # whether select() chose a link yet
        self.on_switch: OnSwitch | None = None
        self._store: BufferStore | None = None
        # Called with each link added by a reload (the uploader gives it a transport).
        self.on_added: Callable[[Link], None] | None = None

    def __iter__(self) -> Iterator[Link]:
        return iter(self.all)

    def bulk(self) -> list[Link]:
        """The links bulk uploads may use, in order."""
        return [link for link in self.all if not link.alerts_only]

    def get(self, name: str) -> Link | None:
        return next((link for link in self.all if link.name == name), None)

    # -- choosing ----------------------------------------------------------------------------------

    def select(self, nbytes: int) -> tuple[Link | None, str | None]:
        """The link for the next ``nbytes`` of bulk traffic (made the active one), or None and why
        the first bulk link may not carry it."""
        link, reason = choose(self.all, nbytes)
        if link is not None and not self._chosen:
            self._chosen = True  # the first choice after start is no switch
            if link is not self.active:
                log.info("uplink: using link %s (%s)", link.name, self._why(self.active, link, nbytes))
            self.active = link
        elif link is not None and link is not self.active:
            self._switch(link, nbytes)
        return link, reason

    def _why(self, was: Link, to: Link, nbytes: int) -> str:
        """Why bulk traffic moves from ``was`` to ``to``, for the log."""
        if was not in self.all:
            return f"{was.name} was removed"
        why = was.blocked(nbytes)
        if why is None:
            return f"{to.name} is usable again"
        if why == "down":
            state = was.down()
            why = "down" if state == "down" else f"down: {state}"
        return f"{was.name}: {why}"

    def _switch(self, to: Link, nbytes: int) -> None:
        was = self.active
        why = self._why(was, to, nbytes)
        log.info("uplink: link switch %s → %s (%s)", was.name, to.name, why)
        self.active = to
        if self.on_switch is not None:
            self.on_switch(was, to, why)

    def lifts_in(self, nbytes: int) -> float:
        """Seconds until one of the bulk links may lift its block."""
        waits = [link.lifts_in(link.blocked(nbytes) or "") for link in self.bulk()]
        return min(waits, default=3600.0)

    def alert_route(self) -> tuple[str, str | None] | None:
        """The link alerts go over (:data:`agent.alerts.channels.Via`): the first that is up, alerts_only
        ones included, as its name and source address; None when none is."""
        link = for_alerts(self.all)
        return None if link is None else (link.name, link.source_address)

    # -- the proxy's LinkGate ------------------------------------------------------------------------

    def blocked(self) -> str | None:
        link, reason = choose(self.all)
        return None if link is not None else reason

    def count(self, nbytes: int) -> None:
        self.active.count(nbytes)

    # -- persistence and reload ----------------------------------------------------------------------

    async def attach(self, store: BufferStore) -> None:
        """Each link starts from what it spent so far this day and month (saved under its name)."""
        self._store = store
        for link in self.all:
            await link.attach(store)

    async def flush(self) -> None:
        for link in self.all:
            await link.flush()

    async def reconfigure(self, settings: UplinkSettings) -> None:
        """A reload: the links of ``settings``, in their order. A link that keeps its name is
        reconfigured in place (its spent budget, cap state and connection stay); a new one starts from
        what was saved under its name; one no longer listed saves what it counted and is dropped."""
        kept: list[Link] = []
        for name, s in settings.named_links():
            link = self.get(name)
            if link is None:
                link = self._make(s, name, self._clock)
                if self._store is not None:
                    await link.attach(self._store)
                if self.on_added is not None:
                    self.on_added(link)
            else:
                link.reconfigure(s)
            kept.append(link)
        for gone in self.all:
            if gone not in kept:
                await gone.flush()
        self.all = kept
        bulk = self.bulk()
        if self.active not in bulk:
            self._switch(bulk[0], 0)

    def budget_reading(self, spent: Callable[[], bool]) -> Callable[[], tuple[float, bool]]:
        """For the budget alerts: the active link's largest share of a budget used, and ``spent()``.
        Read at each evaluation, so a budget a reload adds (or removes) counts from then on: without
        one it reads (0, False), and the alerts stay (or become) inactive."""

        def reading() -> tuple[float, bool]:
            if not self.active.budget.limited:
                return 0.0, False
            return self.active.budget.used(self._clock()), spent()

        return reading
