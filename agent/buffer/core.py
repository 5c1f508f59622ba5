"""The buffer database's core: the file and its thread, the totals kept in memory, the counters.

:class:`~agent.buffer.store.BufferStore` builds on it (compaction, batches, then writing, eviction
and expiry); every method runs on the database thread (``await store.call(store.method, ...)``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, Self, TypeVar

from agent.buffer import recovery, schema
from agent.buffer.records import Totals
from backhaul.sqlite import Database, Synchronous
from backhaul.wire import chunk as chunkfmt

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


class StoreCore:
    """The file, its thread, the totals and counters (the arguments are :class:`BufferStore`'s)."""

    def __init__(
        self,
        path: Path,
        budget_bytes: int,
        synchronous: Synchronous,
        zstd_level: int = 3,
        target_samples: int = 100_000,
        free_bytes_kept: int = 4 * 1024 * 1024,
        min_free_bytes: int = 0,
    ) -> None:
        self.min_free_bytes = min_free_bytes
        self.free_bytes_kept = free_bytes_kept
        self.path = path
        self.target_samples = target_samples
        self.budget_bytes = budget_bytes
        self.synchronous: Synchronous = synchronous
        self.codec = chunkfmt.Codec(zstd_level)
        self.db = Database(path, synchronous, schema.MIGRATIONS, "buffer-db", salvage=self._salvage)
        # After a failed transaction the file is the truth again.
        self.db.on_rollback(self._recount)
        self.totals = Totals()
        self.evicted_samples = 0  # since open (the persistent count is in the meta table)
        self.buffer_id = ""
        self.recovery: recovery.Recovery | None = None  # set when open() had to salvage a damaged file

    # -- lifecycle ---------------------------------------------------------------------------------

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this store's methods on its database thread."""
        return await self.db.run(fn, *args, **kwargs)

    async def __aenter__(self) -> Self:
        await self.db.__aenter__()
        try:
            await self.db.run(self._opened)
        except BaseException:
            await self.db.aclose(5.0)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.db.aclose()

    def open(self) -> None:
        """Open (or create) the buffer; a damaged file is salvaged, never a reason not to start."""
        self.db.open()
        self._opened()

    def _opened(self) -> None:
        (self.buffer_id,) = self.conn.execute("SELECT value FROM meta_text WHERE key='buffer_id'").fetchone()
        self._recount()
        log.info(
            "buffer %s opened: %d chunks, %d samples, %d bytes (budget %d)",
            self.path,
            self.totals.chunks,
            self.totals.samples,
            self.totals.bytes,
            self.budget_bytes,
        )

    def _salvage(self, path: Path, problem: str) -> list[Path]:
        self.recovery = recovery.salvage(path, self.synchronous, self.codec, problem)
        return self.recovery.moved_aside

    def close(self) -> None:
        self.db.close()

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def _recount(self) -> None:
        row = self.conn.execute(
            "SELECT count(*), coalesce(sum(bytes),0), coalesce(sum(samples),0), min(min_ts) FROM chunks"
        ).fetchone()
        self.totals = Totals(chunks=row[0], bytes=row[1], samples=row[2], oldest_ts=row[3])

    # -- counters ------------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT key, value FROM meta").fetchall()
        return {key: value for key, value in rows}

    def _bump(self, key: str, by: int) -> None:
        if by:
            self.conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (by, key))

    def _insert(
        self,
        blob: bytes,
        span: tuple[int, int],
        n_series: int,
        samples: int,
        now_ms: int,
        chunk_id: int | None = None,
        hold: int = 0,
    ) -> None:
        lo, hi = span
        self.conn.execute(
            "INSERT INTO chunks (id, created_ms, min_ts, max_ts, samples, series, bytes, batch_seq, data, hold)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
            (chunk_id, now_ms, lo, hi, samples, n_series, len(blob), blob, hold),
        )

    def _release_free_pages(self) -> None:
        """Give free pages back to the filesystem once there are many (after evictions, a drained
        backlog, compaction); a few are kept, since the next commits would only grow the file again."""
        if self.conn.in_transaction:
            return  # inside a caller's transaction (several appends in one): the next call does it
        try:
            (free,) = self.conn.execute("PRAGMA freelist_count").fetchone()
            (page,) = self.conn.execute("PRAGMA page_size").fetchone()
            if free * page > self.free_bytes_kept:
                # executescript steps the pragma to completion (execute() would free a single page);
                # it must run outside a transaction, which is why callers call this after committing.
                self.conn.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as exc:  # only housekeeping: the data is committed either way
            log.warning("could not release free pages: %s", exc)
