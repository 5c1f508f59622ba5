"""The SQLite ring buffer: compressed chunks under a byte budget, oldest evicted first.

Every method here is synchronous and must run on the store's own thread: async callers use
``await store.call(store.method, ...)``.

Invariants:
- A chunk is written in the same transaction that updates the loss counters of whatever it evicted,
  so after any crash the counters and the data agree.
- A chunk claimed by a batch (``batch_seq`` set) is never evicted, compacted or expired: the batch
  must be re-sent byte for byte until the collector acknowledges it.
- ``bytes`` (the compressed size) is what the budget counts; SQLite's page overhead comes on top.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

from agent.buffer import recovery, schema
from backhaul.errors import StoreError
from backhaul.sqlite import Database, Synchronous
from backhaul.wire import WireError
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.series import SeriesMap, merge_owned, sample_count, time_range

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
LOSS_KEYS = (
    "evicted_samples",
    "expired_samples",
    "dropped_samples",
    "rejected_samples",
    "corrupt_samples",
)


@dataclass
class Totals:
    """What the buffer holds right now (kept in memory, recomputed at open)."""

    chunks: int = 0
    bytes: int = 0
    samples: int = 0
    oldest_ts: int | None = None  # oldest sample timestamp (ms) still buffered


@dataclass
class Batch:
    """Chunks sealed under one sequence number; re-sent unchanged until acknowledged."""

    seq: int
    sealed_ms: int
    samples: int
    chunks: list[bytes] = field(default_factory=list)


@dataclass
class Losses:
    """Samples removed by one operation, by cause."""

    evicted: int = 0
    expired: int = 0


class BufferStore:
    """Owns the buffer database file and its one connection.

    Args:
        path: database file; created (with its folder) when missing.
        budget_bytes: ceiling on the compressed bytes of all chunks.
        synchronous: SQLite's synchronous level (FULL keeps commits across a power cut).
        zstd_level: compression level for chunks.
        target_samples: size compaction merges small chunks up to (bounds a merge's memory too).
        free_bytes_kept: free pages up to this size stay in the file for the next commits to reuse;
            beyond it they go back to the filesystem.
        min_free_bytes: the filesystem's free-space floor: the buffer evicts (and finally refuses new
            data with a transient error) rather than take free space below it.
    """

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

    async def __aenter__(self) -> BufferStore:
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

    # -- writing -------------------------------------------------------------------------------------

    def append(self, series: SeriesMap, dropped: int, now_ms: int) -> Losses:
        """Durably add one chunk of ``series`` (and ``dropped`` refused samples to the counter)."""
        samples = sample_count(series)
        blob = self.codec.encode(series) if samples else b""
        disk_room = self._disk_room()
        with self.db.atomic():
            # Evict first: the insert then reuses the freed pages instead of growing the file.
            losses, held = self._evict(self.totals.bytes + len(blob), min(self.budget_bytes, disk_room))
            if held > disk_room:
                raise StoreError(
                    f"no room: the filesystem's free space would fall below the floor of "
                    f"{self.min_free_bytes} bytes, even with every unsent chunk evicted",
                    transient=True,
                )
            if samples:
                span = time_range(series)
                self._insert(blob, span, len(series), samples, now_ms)
            self._bump("dropped_samples", dropped)
        if losses.evicted:
            self.evicted_samples += losses.evicted
            self._release_free_pages()
            self._recount()
        elif samples:
            t = self.totals
            lo = span[0]
            t.chunks, t.bytes, t.samples = t.chunks + 1, t.bytes + len(blob), t.samples + samples
            t.oldest_ts = lo if t.oldest_ts is None else min(t.oldest_ts, lo)
        return losses

    def _insert(
        self, blob: bytes, span: tuple[int, int], n_series: int, samples: int, now_ms: int, chunk_id: int | None = None
    ) -> None:
        lo, hi = span
        self.conn.execute(
            "INSERT INTO chunks (id, created_ms, min_ts, max_ts, samples, series, bytes, batch_seq, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            (chunk_id, now_ms, lo, hi, samples, n_series, len(blob), blob),
        )

    def _disk_room(self) -> int:
        """Bytes the buffer may hold without taking the filesystem below ``min_free_bytes``.

        What the buffer holds now plus what is free above the floor: pages freed by eviction are
        reused by SQLite before the file grows.
        """
        if not self.min_free_bytes:
            return 1 << 62
        stat = os.statvfs(self.path.parent)
        return self.totals.bytes + stat.f_bavail * stat.f_frsize - self.min_free_bytes

    def _evict(self, total: int, limit: int) -> tuple[Losses, int]:
        """Evict the oldest unsent chunks until ``total`` (bytes held, the new chunk included) fits
        ``limit``; returns what was evicted and the bytes then held. Chunks in flight stay."""
        losses = Losses()
        while total > limit:
            victims = self.conn.execute(
                "SELECT id, bytes, samples FROM chunks WHERE batch_seq IS NULL ORDER BY id LIMIT 64"
            ).fetchall()
            if not victims:
                break  # only chunks in flight remain; the config check keeps them well under budget
            for chunk_id, size, samples in victims:
                self.conn.execute("DELETE FROM chunks WHERE id = ?", (chunk_id,))
                total -= size
                losses.evicted += samples
                if total <= limit:
                    break
        if losses.evicted:
            self._bump("evicted_samples", losses.evicted)
        return losses, total

    def _release_free_pages(self) -> None:
        """Give free pages back to the filesystem once there are many (after evictions, a drained
        backlog, compaction); a few are kept, since the next commits would only grow the file again."""
        try:
            (free,) = self.conn.execute("PRAGMA freelist_count").fetchone()
            (page,) = self.conn.execute("PRAGMA page_size").fetchone()
            if free * page > self.free_bytes_kept:
                # executescript steps the pragma to completion (execute() would free a single page);
                # it must run outside a transaction, which is why callers call this after committing.
                self.conn.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as exc:  # only housekeeping: the data is committed either way
            log.warning("could not release free pages: %s", exc)

    def expire(self, cutoff_ms: int) -> Losses:
        """Drop data whose newest sample is older than ``cutoff_ms``, counting it as expired.

        Unclaimed chunks go one by one. A sealed batch goes only as a whole, once everything in it is
        past the cutoff: a batch the collector never acknowledged must not be retried forever, and a
        batch is never sent with different contents under the same sequence number.
        """
        with self.db.atomic():
            (samples,) = self.conn.execute(
                "SELECT coalesce(sum(samples), 0) FROM chunks WHERE batch_seq IS NULL AND max_ts < ?",
                (cutoff_ms,),
            ).fetchone()
            self.conn.execute("DELETE FROM chunks WHERE batch_seq IS NULL AND max_ts < ?", (cutoff_ms,))
            stale_batches = self.conn.execute(
                "SELECT batch_seq, sum(samples) FROM chunks WHERE batch_seq IS NOT NULL"
                " GROUP BY batch_seq HAVING max(max_ts) < ?",
                (cutoff_ms,),
            ).fetchall()
            for seq, batch_samples in stale_batches:
                self.conn.execute("DELETE FROM chunks WHERE batch_seq = ?", (seq,))
                self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                samples += batch_samples
            if samples:
                self._bump("expired_samples", samples)
        if samples:
            self._release_free_pages()
            self._recount()
        return Losses(expired=samples)

    def compact(self, now_ms: int, max_chunks: int = 2000, max_runs: int | None = None) -> int:
        """Merge runs of small unclaimed chunks into chunks of about ``target_samples``.

        Returns how many chunks were merged away. Bounded by ``max_chunks`` (and ``max_runs`` merges)
        per call: the agent compacts one run per call, so that commits of fresh data, queued on the
        same database thread, wait at most one merge behind it.
        """
        rows = self.conn.execute(
            "SELECT id, samples FROM chunks WHERE batch_seq IS NULL ORDER BY id LIMIT ?", (max_chunks,)
        ).fetchall()
        runs = self._small_runs(rows)[:max_runs]
        merged_away = sum(self._merge(group, now_ms) for group in runs)
        if merged_away:
            self._release_free_pages()
            self._recount()
        return merged_away

    def _small_runs(self, rows: list[tuple[int, int]]) -> list[list[int]]:
        """Runs of consecutive small chunks (``(id, samples)`` in id order) worth merging.

        A chunk of at least half the target is left alone; a run stops before it would exceed the
        target, which also bounds the memory a merge needs.
        """
        target = self.target_samples
        runs: list[list[int]] = []
        current: list[int] = []
        current_samples = 0
        for chunk_id, samples in rows:
            big = samples >= target // 2
            if big or current_samples + samples > target:
                if len(current) > 1:
                    runs.append(current)
                current, current_samples = [], 0
                if big:
                    continue
            current.append(chunk_id)
            current_samples += samples
        if len(current) > 1:
            runs.append(current)
        return runs

    def _merge(self, ids: list[int], now_ms: int) -> int:
        """Replace chunks ``ids`` by one; a chunk that does not decode is quarantined instead."""
        marks = ",".join("?" * len(ids))
        parts: list[SeriesMap] = []
        with self.db.atomic():
            rows = self.conn.execute(
                f"SELECT id, samples, data FROM chunks WHERE id IN ({marks}) AND batch_seq IS NULL ORDER BY id",
                ids,
            ).fetchall()
            if len(rows) != len(ids):
                return 0
            for chunk_id, samples, blob in rows:
                try:
                    parts.append(self.codec.decode(blob, limit=recovery.MAX_CHUNK_BYTES))
                except WireError as exc:
                    self._quarantine_chunk(chunk_id, samples, blob, str(exc), now_ms)
            self.conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", ids)
            series = merge_owned(parts) if parts else {}
            if series:
                # The merged chunk takes the first id, so eviction order (oldest first) holds.
                self._insert(
                    self.codec.encode(series),
                    time_range(series),
                    len(series),
                    sample_count(series),
                    now_ms,
                    chunk_id=ids[0],
                )
        return len(ids) - 1

    def _quarantine_chunk(self, chunk_id: int, samples: int, blob: bytes, reason: str, now_ms: int) -> None:
        log.error("chunk %d does not decode (%s): quarantined, %d samples lost", chunk_id, reason, samples)
        self.conn.execute(
            "INSERT INTO quarantine (chunk_id, quarantined_ms, reason, samples, data) VALUES (?, ?, ?, ?, ?)",
            (chunk_id, now_ms, reason, samples, blob),
        )
        self._bump("corrupt_samples", samples)
        self._bump("corrupt_chunks", 1)

    # -- batches -------------------------------------------------------------------------------------

    def claim(self, max_bytes: int, now_ms: int, report_losses: bool) -> Batch | None:
        """The batch to send next: the one already sealed and unacknowledged, else a new one.

        A new batch takes the oldest unclaimed chunks up to ``max_bytes`` (at least one). With no
        data, an empty batch is sealed only when ``report_losses`` asks for one (so that loss
        counters reach the collector even when everything was evicted).
        """
        row = self.conn.execute("SELECT seq, sealed_ms, samples FROM batches ORDER BY seq LIMIT 1").fetchone()
        if row is not None:
            return self._load_batch(*row)
        candidates = self.conn.execute(
            "SELECT id, bytes, samples FROM chunks WHERE batch_seq IS NULL ORDER BY id LIMIT 10000"
        ).fetchall()
        chosen: list[int] = []
        size = 0
        for chunk_id, nbytes, _ in candidates:
            if chosen and size + nbytes > max_bytes:
                break
            chosen.append(chunk_id)
            size += nbytes
        if not chosen and not report_losses:
            return None
        with self.db.atomic():
            # One series table per batch instead of one per commit: merge small chunks first.
            merged = {ids[0]: ids for ids in self._small_runs([(c, n) for c, _, n in candidates[: len(chosen)]])}
            for first, ids in merged.items():
                self._merge(ids, now_ms)
                chosen = [c for c in chosen if c == first or c not in ids]
            (seq,) = self.conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            seq += 1
            self.conn.execute("UPDATE meta SET value = ? WHERE key='next_seq'", (seq,))
            for chunk_id in chosen:
                self.conn.execute("UPDATE chunks SET batch_seq = ? WHERE id = ?", (seq, chunk_id))
            # Counted after merging: a chunk quarantined by the merge is no longer in the batch.
            (samples,) = self.conn.execute(
                "SELECT coalesce(sum(samples), 0) FROM chunks WHERE batch_seq = ?", (seq,)
            ).fetchone()
            self.conn.execute("INSERT INTO batches (seq, sealed_ms, samples) VALUES (?, ?, ?)", (seq, now_ms, samples))
        if merged:
            self._recount()
        return self._load_batch(seq, now_ms, samples)

    def _load_batch(self, seq: int, sealed_ms: int, samples: int) -> Batch:
        blobs = self.conn.execute("SELECT data FROM chunks WHERE batch_seq = ? ORDER BY id", (seq,)).fetchall()
        return Batch(seq=seq, sealed_ms=sealed_ms, samples=samples, chunks=[b for (b,) in blobs])

    def oldest_unclaimed_ms(self) -> int | None:
        """When the oldest chunk not yet in a batch was written (agent clock, ms), if any."""
        (oldest,) = self.conn.execute("SELECT min(created_ms) FROM chunks WHERE batch_seq IS NULL").fetchone()
        return int(oldest) if oldest is not None else None

    def unsent_loss(self) -> int:
        """Losses counted since the collector last acknowledged a report of them."""
        c = self.counters()
        return sum(c[k] for k in LOSS_KEYS) - c["reported_loss"]

    def ack(self, seq: int, reported_loss: int) -> None:
        """The collector stored batch ``seq``: forget its chunks."""
        with self.db.atomic():
            self.conn.execute("DELETE FROM chunks WHERE batch_seq = ?", (seq,))
            self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self.conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'reported_loss'", (reported_loss,))
        self._release_free_pages()
        self._recount()

    def release(self, seq: int) -> None:
        """Unseal batch ``seq`` (the collector refused it whole): its chunks become claimable again."""
        with self.db.atomic():
            self.conn.execute("UPDATE chunks SET batch_seq = NULL WHERE batch_seq = ?", (seq,))
            self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def reject(self, seq: int) -> int:
        """Drop batch ``seq`` for good (the collector refused even a single chunk); count it."""
        with self.db.atomic():
            (samples,) = self.conn.execute(
                "SELECT coalesce(sum(samples), 0) FROM chunks WHERE batch_seq = ?", (seq,)
            ).fetchone()
            self.conn.execute("DELETE FROM chunks WHERE batch_seq = ?", (seq,))
            self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self._bump("rejected_samples", samples)
        self._recount()
        return int(samples)

    def ping(self) -> bool:
        """A no-op query: proves the worker thread and the database answer (for the watchdog)."""
        self.conn.execute("SELECT 1").fetchone()
        return True
