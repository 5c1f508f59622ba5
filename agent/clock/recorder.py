"""When the clock keeper's era book is written down (docs/clock.md, "The era's end on disk").

- A new era or a jump, or an era that settled: at once (:meth:`Recorder.save`); a new era before
  anything may be held under its id.
- The current era's end while samples come in: in the transaction of the buffer commit that stores
  them (:meth:`Recorder.rider`), once ``SAVE_INTERVAL`` has passed since it was last written, so it
  costs no transaction or fsync of its own (issue 16). Where no commit carries it (a keeper wired
  without the group commit), the keeper's own pass writes it every ``SAVE_INTERVAL``.
- With no samples coming in, every ``IDLE_SAVE_INTERVAL``: the end then only bounds what a local
  sender may still send stamped by this clock.

The samples corrected on their way in are counted in the buffer by the same writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.buffer.staging import Ride
from agent.buffer.store import BufferStore
from agent.clock import journal
from agent.clock.eras import Era, EraBook, Jump

SAVE_INTERVAL = 10.0
IDLE_SAVE_INTERVAL = 900.0


class Recorder:
    """Writes the era book (and the corrected count) to the buffer; ``book`` is set when the keeper enters."""

    def __init__(self, store: BufferStore) -> None:
        self._store = store
        self.book: EraBook | None = None
        self.unsaved_era = False  # a new era not written yet: nothing may be held under it before
        self.stamped = False  # samples split since the era's end was last written down
        self.corrected = 0  # samples corrected on their way in, not yet counted in the buffer
        self._saving = asyncio.Lock()
        self._saved_at = 0.0  # loop time the era's end was last written down
        self._rides = False  # the era's end rides with the buffer's commits

    def _book(self) -> EraBook:
        assert self.book is not None, "Recorder used before the keeper entered"
        return self.book

    async def save(self) -> None:
        """Write what changed in the book (eras, jumps), if anything."""
        book = self._book()
        async with self._saving:
            if not book.changed and not book.new_jumps:
                return
            unsaved = self.unsaved_era
            eras, jumps = book.take_changes()
            try:
                await self._store.call(journal.save, self._store, eras, jumps)
            except BaseException:
                self._unsaved(eras, jumps)
                raise
            if unsaved:
                self.unsaved_era = False

    async def save_all(self) -> None:
        """The current era's end and the corrected count too, now (at stop)."""
        await self._flush_corrected()
        self._book().changed.add(self._book().current.id)
        await self.save()

    def saved_at(self, now: float) -> None:
        """Count the time until the next save of the era's end from ``now`` (loop time)."""
        self._saved_at = now

    async def tick(self, now: float) -> None:
        """The keeper's pass: the era's end when it is due by its own pass, then whatever changed."""
        busy = self.stamped and not self._rides
        if now - self._saved_at >= (SAVE_INTERVAL if busy else IDLE_SAVE_INTERVAL):
            self._book().changed.add(self._book().current.id)
            await self._flush_corrected()
            self._saved_at, self.stamped = now, False
        await self.save()

    def rider(self) -> Callable[[], Ride | None]:
        """For the buffer's group commit (``Staging(rider=...)``): what rides along with each commit."""
        self._rides = True
        return self._ride

    def _ride(self) -> Ride | None:
        if self.book is None or not self.stamped or self.unsaved_era:
            return None  # a new era is written by save(), before anything may be held under it
        now = asyncio.get_running_loop().time()
        if now - self._saved_at < SAVE_INTERVAL:
            return None
        self.book.changed.add(self.book.current.id)
        eras, jumps = self.book.take_changes()
        corrected, self.corrected = self.corrected, 0
        self._saved_at, self.stamped = now, False
        store = self._store

        def write() -> None:
            journal.save(store, eras, jumps)
            if corrected:
                store.count_corrected(corrected)

        def settle(ok: bool) -> None:
            if not ok:  # the next commit or pass writes them instead
                self._unsaved(eras, jumps)
                self.corrected += corrected
                self._saved_at, self.stamped = float("-inf"), True

        return Ride(write, settle)

    def _unsaved(self, eras: list[Era], jumps: list[Jump]) -> None:
        """A write of ``eras`` and ``jumps`` failed: the next one takes them again."""
        book = self._book()
        book.changed.update(e.id for e in eras)
        book.new_jumps[:0] = jumps

    async def _flush_corrected(self) -> None:
        n, self.corrected = self.corrected, 0
        if n:
            try:
                await self._store.call(self._store.count_corrected, n)
            except BaseException:
                self.corrected += n
                raise
