"""Ending the holds of samples whose era settled or was lost, and expiring those held too long.

The buffer keeps held chunks under their era's id (agent/buffer/holds.py); this decides, era by era,
what becomes of them: released as they are (offset 0), moved by the era's offset and released
(counted as corrected), or expired (counted) when the offset can never be learnt, or when they have
waited longer than ``buffer.max_age``, measured by CLOCK_BOOTTIME, which is right when the wall
clock is not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.buffer.store import BufferStore
from agent.clock.eras import LOST, PENDING, EraBook
from agent.clock.metrics import ClockMetrics

log = logging.getLogger(__name__)


class HeldSamples:
    """What is held, by era, and the work of ending holds.

    Args:
        store: the buffer.
        metrics: the clock's metrics (corrected, expired, held).
        max_age_ms: how long a sample may wait (``buffer.max_age``).
        wall_ms: the agent's wall clock (ms), for the rows it writes.
        on_released: called when held samples may be sent, or were expired (wakes the uploader).
        on_expired: called with the number of samples expired (the buffer's expired counter).
    """

    def __init__(
        self,
        store: BufferStore,
        metrics: ClockMetrics,
        max_age_ms: int,
        wall_ms: Callable[[], int],
        on_released: Callable[[], None],
        on_expired: Callable[[int], None],
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._max_age_ms = max_age_ms
        self._wall_ms = wall_ms
        self._on_released = on_released
        self._on_expired = on_expired
        self.by_era: dict[int, int] = {}  # samples held, by era (refreshed from the file at each pass)
        self.corrected = 0  # samples corrected by this process, ending holds
        metrics.held.set_function(lambda: sum(self.by_era.values()))

    @property
    def total(self) -> int:
        return sum(self.by_era.values())

    def add(self, era: int, samples: int) -> None:
        self.by_era[era] = self.by_era.get(era, 0) + samples

    async def refresh(self) -> None:
        self.by_era = await self._store.call(self._store.held)

    async def end(self, book: EraBook) -> None:
        """End the holds of every era that is no longer pending."""
        store = self._store
        await self.refresh()
        released = False
        for tag in list(self.by_era):
            era = book.eras.get(tag)
            if era is not None and era.state == PENDING:
                continue
            if era is None or era.state == LOST:
                why = "its era is unknown" if era is None else f"era {tag}'s offset can never be learnt ({era.source})"
                self._expired(await store.call(store.drop_hold, tag), why)
            elif era.offset_ms == 0:
                await store.call(store.release_hold, tag)
                released = True
            else:
                done = 0
                while step := await store.call(store.shift_hold, tag, era.offset_ms, self._wall_ms()):
                    done += step
                    released = True
                    self._on_released()  # the first chunks may go while the rest are corrected
                self._metrics.corrected.inc(done)
                self.corrected += done
                log.info("clock: %d held samples of era %d corrected by %+.3f s", done, tag, era.offset_ms / 1000)
            self.by_era.pop(tag, None)
        if released:
            self._on_released()

    async def expire(self, book: EraBook, boot_ms: int) -> None:
        """Expire samples of this boot's pending eras stamped more than ``max_age`` ago by
        CLOCK_BOOTTIME, as any sample that age would be."""
        store = self._store
        await self.refresh()
        for tag in list(self.by_era):
            era = book.eras.get(tag)
            if era is None or era.state != PENDING or era.boot_id != book.current.boot_id:
                continue
            # A timestamp ts of this era was stamped at CLOCK_BOOTTIME ts - base.
            cutoff = boot_ms - self._max_age_ms + era.base_ms
            self._expired(await store.call(store.drop_hold, tag, cutoff), f"held longer than max_age in era {tag}")
        await self.refresh()

    def _expired(self, samples: int, why: str) -> None:
        if not samples:
            return
        self._metrics.expired.inc(samples)
        self._on_expired(samples)
        self._on_released()  # a loss to report: the uploader need not wait for data to carry it
        log.warning("clock: expired %d held samples: %s", samples, why)
