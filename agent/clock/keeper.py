"""The clock keeper: watches the agent's clock, learns each era's offset, and ends the holds.

- It reads the wall clock against CLOCK_BOOTTIME about once a second (and before every split and
  every upload), so a jump is seen within a second: logged, counted, written down with the boot id.
  After a backward jump it tells the scheduler, whose jobs are timed by the wall clock.
- The uploader tells it when a batch left and when the reply came, with the reply's ``Date``; while
  the current era is pending, the uploader sends a batch even with nothing to send (a probe), so the
  first reply settles it.
- Ingest hands it every request and scrape (:meth:`split`). A new era is written to the database
  before any chunk held under its id can be committed.
- Once an era settles, its held chunks are released (offset 0) or moved by its offset, a bounded
  step at a time on the database thread; once it is lost, they are expired and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.buffer.store import BufferStore
from agent.clock import journal
from agent.clock.clocks import Clocks, floor_of, read_boot_id
from agent.clock.eras import PENDING, SETTLED, EraBook, Jump
from agent.clock.holds import HeldSamples
from agent.clock.metrics import ClockMetrics
from agent.clock.recorder import Recorder
from agent.clock.refine import Refiner
from agent.clock.settings import ClockSettings
from agent.clock.split import Split, split
from backhaul.errors import StoreError
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)

WATCH_INTERVAL = 1.0  # seconds between readings of the clocks
SLACK_MS = 1000  # a timestamp this far outside an era's span still counts as its own
PROBE_PAUSE = 60.0  # after a reply that could not settle the era (no Date), no probe for this long


def iso_ms(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass
class Sent:
    """When an upload left: the era and the wall clock (ms)."""

    era: int
    wall_ms: int


class TimeKeeper:
    """The agent's judge of its own clock; an async context manager (enter after the buffer).

    Args:
        settings: the ``[clock]`` settings.
        store: the buffer (eras, jumps and held chunks are kept in it).
        metrics: the ``backhaul_clock_*`` metrics.
        max_age: seconds (``buffer.max_age``): the window back, and how long held samples may wait.
        max_future: seconds (``ingest.max_future``): the window ahead.
        clocks: where time is read.
        on_released: called when held samples may be sent (wakes the uploader).
        on_expired: called with the number of held samples expired (the buffer's expired counter).
        on_backward_jump: called after the clock stepped back.
    """

    def __init__(
        self,
        settings: ClockSettings,
        store: BufferStore,
        metrics: ClockMetrics,
        max_age: float,
        max_future: float,
        clocks: Clocks | None = None,
        on_released: Callable[[], None] = lambda: None,
        on_expired: Callable[[int], None] = lambda n: None,
        on_backward_jump: Callable[[Jump], None] = lambda jump: None,
    ) -> None:
        self.settings = settings
        self._store = store
        self._metrics = metrics
        self._max_age_ms = int(max_age * 1000)
        self._max_future_ms = int(max_future * 1000)
        self._clocks = clocks or Clocks(boot_id=lambda: read_boot_id(settings.boot_id_file))
        self._on_backward_jump = on_backward_jump
        self.held = HeldSamples(store, metrics, self._max_age_ms, self.wall_ms, on_released, on_expired)
        self.floor_ms = int(floor_of(settings.floor) * 1000)
        self._book: EraBook | None = None
        self.boot_id = ""
        self.recorder = Recorder(store)  # writes the book down (agent/clock/recorder.py)
        self._work = asyncio.Event()  # an era settled or was lost: end holds
        self._probe_paused_until = 0.0  # loop time
        self._refiner = Refiner(int(settings.max_skew.total_seconds() * 1000))
        self._corrected_before = 0  # what the buffer had counted when this process started
        self._corrected_in = 0  # corrected on the way in by this process
        self.jumps_total = 0
        metrics.floor.set(self.floor_ms / 1000)

    @property
    def correcting(self) -> bool:
        return self.settings.correct

    @property
    def entered(self) -> bool:
        return self._book is not None

    @property
    def book(self) -> EraBook:
        assert self._book is not None, "TimeKeeper not entered"
        return self._book

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> TimeKeeper:
        store = self._store
        s = self.settings
        eras = await store.call(journal.load, store)
        book = self._book = EraBook(
            eras, int(s.max_skew.total_seconds() * 1000), int(s.jump_threshold.total_seconds() * 1000), self.floor_ms
        )
        self.boot_id = self._clocks.boot_id()
        boot_ms, wall_ms = self._read()
        book.start(self.boot_id, boot_ms, wall_ms)
        self.recorder.book = book
        for jump in book.new_jumps:
            self._jumped(jump)
        await self.recorder.save()
        await self.held.refresh()
        self._corrected_before = (await store.call(store.counters)).get("corrected_samples", 0)
        self.jumps_total = await store.call(journal.jump_count, store)
        era = book.current
        if era.below_floor:
            floor = iso_ms(self.floor_ms)
            log.warning("clock: %s is earlier than the floor %s: samples are held", iso_ms(wall_ms), floor)
        log.info(
            "clock: era %d (%s, boot %s), %d samples held from earlier eras",
            era.id,
            era.state,
            self.boot_id[:8] or "unknown",
            sum(n for tag, n in self.held.by_era.items() if tag != era.id),
        )
        self._update_gauges()
        self._work.set()  # eras settled or lost at start (a boot that ended): end their holds
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._book is None:
            return
        self.observe()
        with contextlib.suppress(StoreError):
            await self.recorder.save_all()

    async def run(self) -> None:
        """Watch the clock and end holds; runs until cancelled."""
        loop = asyncio.get_running_loop()
        self.recorder.saved_at(loop.time())
        while True:
            self.observe()
            try:
                await self.recorder.tick(loop.time())
                if self._work.is_set():
                    self._work.clear()
                    await self.held.end(self.book)
            except StoreError as exc:  # a full disk, say: the next pass tries again
                log.error("clock: could not update the buffer: %s", exc)
            self._update_gauges()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), WATCH_INTERVAL)

    # -- the clock ---------------------------------------------------------------------------------

    def _read(self) -> tuple[int, int]:
        boot = self._clocks.boot()
        wall = self._clocks.wall()
        return int(boot * 1000), int(wall * 1000)

    def wall_ms(self) -> int:
        return int(self._clocks.wall() * 1000)

    def observe(self) -> Jump | None:
        """Read the clocks; a jump starts a new era (to be written down before it holds anything)."""
        boot_ms, wall_ms = self._read()
        jump = self.book.observe(boot_ms, wall_ms)
        if jump is not None:
            self._jumped(jump)
        return jump

    def _jumped(self, jump: Jump) -> None:
        self.recorder.unsaved_era = True
        before = self.book.eras.get(jump.from_era)
        if before is not None and before.low_ms is not None and before.high_ms is not None and before.state == PENDING:
            # its probes were cut short by the jump: what they measured settles it
            if self.book.measured(before.id, before.low_ms, before.high_ms, jump.wall_after_ms):
                self._announce(before.id)
        self.jumps_total += 1
        seconds = jump.jump_ms / 1000
        self._metrics.jumps.labels("forward" if seconds > 0 else "backward").inc()
        self._metrics.last_jump.set(seconds)
        self._metrics.last_jump_time.set(jump.wall_after_ms / 1000)
        era = self.book.current
        log.warning(
            "clock jumped %+.3f s%s: %s -> %s; era %d begins (%s%s)",
            seconds,
            " while the agent was stopped" if jump.while_stopped else "",
            iso_ms(jump.wall_before_ms),
            iso_ms(jump.wall_after_ms),
            era.id,
            era.state,
            f", offset {era.offset_ms / 1000:+.3f} s from the era before" if era.state == SETTLED else "",
        )
        if seconds < 0:
            self._on_backward_jump(jump)
        self._work.set()

    async def check(self) -> None:
        """Read the clocks; after a jump, wait until the new era is written down."""
        self.observe()
        if self.recorder.unsaved_era:
            await self.recorder.save()

    # -- ingest ------------------------------------------------------------------------------------

    async def split(self, series: SeriesMap) -> Split:
        """Sort one request's (or scrape's) samples: ready, held by era, or dropped."""
        await self.check()
        self.recorder.stamped = True
        boot_ms, wall_ms = self._read()
        return split(series, self.book, wall_ms, boot_ms, self._max_age_ms, self._max_future_ms, SLACK_MS)

    async def expire_held(self) -> None:
        """Expire held samples older than ``max_age`` (run with the buffer's own expiry)."""
        if self._book is not None:
            await self.held.expire(self.book, self._read()[0])

    def committed(self, done: Split) -> None:
        """``done`` is durable: count what it corrected and what it holds."""
        if done.corrected:
            self._metrics.corrected.inc(done.corrected)
            self.recorder.corrected += done.corrected
            self._corrected_in += done.corrected
        for era, series in done.held.items():
            self.held.add(era, sum(len(ts) for ts, _ in series.values()))
        if any(era in self.book.eras and self.book.eras[era].state != PENDING for era in done.held):
            self._work.set()  # an era that settled meanwhile: its pass is over, so wake the next

    # -- the uploader ------------------------------------------------------------------------------

    def needs_probe(self) -> bool:
        """Whether the uploader should send a batch even with nothing ready: the current era waits
        for its offset, and a reply's Date gives it."""
        if not self.correcting or self._book is None or self.book.current.state != PENDING:
            return False
        return asyncio.get_running_loop().time() >= self._probe_paused_until

    @property
    def refining(self) -> bool:
        """Whether the current era waits for more probes to narrow its offset (send them at once)."""
        return self._book is not None and self._refiner.wanted(self.book.current)

    def probe_delay(self) -> float:
        """Seconds to wait before the next upload leaves, so that it straddles the collector's
        second (0 unless :attr:`refining`)."""
        if not self.refining:
            return 0.0
        return self._refiner.delay_ms(self.book.current, self.wall_ms()) / 1000

    async def straddle(self) -> None:
        """Wait :meth:`probe_delay` (the uploader, just before it sends)."""
        delay = self.probe_delay()
        if delay > 0:
            await asyncio.sleep(delay)

    def sending(self) -> Sent:
        self.observe()
        return Sent(self.book.current.id, self.wall_ms())

    def replied(self, sent: Sent, server_date: float | None, ok: bool) -> None:
        """A reply came; ``server_date``: its ``Date`` in seconds (None when it had none)."""
        received_ms = self.wall_ms()
        self.observe()
        era = self.book.current
        if era.id != sent.era:
            return  # the clock jumped while the request was out: it measured nothing
        settled = False
        if server_date is None:
            if ok and era.state == PENDING and self.book.presume(era.id, "no date", received_ms):
                log.warning("clock: the uplink's replies carry no Date; era %d presumed right", era.id)
                settled = True
        else:
            # The reply's Date was made between our send and receipt, in a second [date, date + 1 s).
            date_ms = server_date * 1000
            low, high = date_ms - received_ms, date_ms + 1000 - sent.wall_ms
            settled = self.book.measured(era.id, low, high, received_ms, settle=False)
            self._refiner.measured(era, received_ms - sent.wall_ms)
            if era.state == PENDING and not self._refiner.wanted(era):
                assert era.low_ms is not None and era.high_ms is not None
                settled = self.book.measured(era.id, era.low_ms, era.high_ms, received_ms)
        if settled:
            self._announce(era.id)
            self._work.set()
        elif era.state == PENDING and not self.refining:  # e.g. no Date: probing again would not help soon
            self._probe_paused_until = asyncio.get_running_loop().time() + PROBE_PAUSE
        self._update_gauges()

    def _announce(self, era_id: int) -> None:
        era = self.book.eras[era_id]
        error = f" ± {era.error_ms / 1000:.3f} s" if era.error_ms is not None else ""
        log.info("clock: era %d settled by %s: offset %+.3f s%s", era.id, era.source, era.offset_ms / 1000, error)

    # -- reading -----------------------------------------------------------------------------------

    @property
    def corrected_total(self) -> int:
        """Samples corrected, ever (as the buffer counts them)."""
        return self._corrected_before + self._corrected_in + self.held.corrected

    def true_now(self) -> float:
        """The best estimate of true time, in seconds."""
        era = self.book.current
        return self._clocks.wall() + (era.offset_ms / 1000 if era.state == SETTLED else 0.0)

    def skew_seconds(self) -> float:
        """Agent clock minus true time, as far as known (for ClockSkew): measured or derived; for a
        clock below the floor and not measured, at least how far below it is."""
        era = self.book.current
        if era.estimate_ms is not None:
            return -era.estimate_ms / 1000
        if era.below_floor:
            return (self.wall_ms() - self.floor_ms) / 1000
        return 0.0

    def _update_gauges(self) -> None:
        era = self.book.current
        m = self._metrics
        m.offset.set(era.offset_ms / 1000)
        m.offset_error.set(era.error_ms / 1000 if era.error_ms is not None else 0.0)
        m.trusted.set(1 if era.state == SETTLED else 0)
        m.below_floor.set(1 if era.below_floor else 0)
