"""The SQLite ring buffer: compressed chunks under a byte budget, oldest evicted first.

Every method here is synchronous and must run on the store's own thread: async callers use
``await store.call(store.method, ...)``.

Invariants:
- A chunk is written in the same transaction that updates the loss counters of whatever it evicted,
  so after any crash the counters and the data agree.
- A chunk claimed by a batch (a row in ``claims``) is never evicted, compacted or expired: the batch
  must be re-sent byte for byte until the collector acknowledges it.
- ``bytes`` (the compressed size) is what the budget counts; SQLite's page overhead comes on top.
- A held chunk (``hold`` set) counts towards the budget and may be evicted like any other, but is
  never claimed, compacted or expired by its timestamps until released (:mod:`agent.buffer.holds`).
"""

from __future__ import annotations

import logging
import os

from agent.buffer.batches import Batches
from agent.buffer.holds import Holds
from agent.buffer.records import LOSS_KEYS, Batch, Losses, Totals
from agent.buffer.schema import IN_BATCH, UNCLAIMED
from backhaul.errors import StoreError
from backhaul.wire.histogram import HistogramSeriesMap
from backhaul.wire.metadata import MetadataMap
from backhaul.wire.series import SeriesMap, sample_count, time_range

__all__ = ["LOSS_KEYS", "Batch", "BufferStore", "Losses", "Totals"]

log = logging.getLogger(__name__)


class BufferStore(Batches, Holds):
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

    # -- writing -------------------------------------------------------------------------------------

    def append(
        self,
        series: SeriesMap,
        dropped: int,
        now_ms: int,
        hold: int = 0,
        histograms: HistogramSeriesMap | None = None,
        metadata: MetadataMap | None = None,
    ) -> Losses:
        """Durably add one chunk of ``series`` (and ``dropped`` refused samples to the counter);
        ``hold`` non-zero: the chunk is held, not sent, until released (see :mod:`agent.buffer.holds`).

        Native ``histograms`` or ``metadata`` make it a version 3 chunk. A chunk of metadata alone
        (remote write 1.0 sends it in requests of its own) holds no samples and spans ``now_ms``.
        """
        histograms = histograms or {}
        samples = sample_count(series) + sample_count(histograms)
        stored = samples or bool(metadata)
        blob = self.codec.encode(series, histograms, metadata) if stored else b""
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
            if stored:
                span = _span(series, histograms, now_ms)
                self._insert(blob, span, len(series) + len(histograms), samples, now_ms, hold=hold)
            self._bump("dropped_samples", dropped)
        if losses.evicted:
            self.evicted_samples += losses.evicted
            self._release_free_pages()
            self._recount()
        elif stored:
            t = self.totals
            lo = span[0]
            t.chunks, t.bytes, t.samples = t.chunks + 1, t.bytes + len(blob), t.samples + samples
            t.oldest_ts = lo if t.oldest_ts is None else min(t.oldest_ts, lo)
        return losses

    def _disk_room(self) -> int:
        """Bytes the buffer may hold without taking the filesystem below ``min_free_bytes``.

        What the buffer holds now, plus the file's free pages, plus what is free above the floor:
        SQLite reuses free pages before the file grows. Without the free pages, every append after
        an eviction would see the filesystem still below the floor (evicted pages stay in the file
        until there are ``free_bytes_kept`` of them) and evict again, most of the buffer in the end.
        """
        if not self.min_free_bytes:
            return 1 << 62
        stat = os.statvfs(self.path.parent)
        free_pages: int = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        page: int = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return self.totals.bytes + free_pages * page + stat.f_bavail * stat.f_frsize - self.min_free_bytes

    def _evict(self, total: int, limit: int) -> tuple[Losses, int]:
        """Evict the oldest unsent chunks until ``total`` (bytes held, the new chunk included) fits
        ``limit``; returns what was evicted and the bytes then held. Chunks in flight stay."""
        losses = Losses()
        while total > limit:
            victims = self.conn.execute(
                f"SELECT id, bytes, samples FROM chunks WHERE {UNCLAIMED} ORDER BY id LIMIT 64"
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

    def expire(self, cutoff_ms: int) -> Losses:
        """Drop data whose newest sample is older than ``cutoff_ms``, counting it as expired.

        Unclaimed chunks go one by one. A sealed batch goes only as a whole, once everything in it is
        past the cutoff: a batch the collector never acknowledged must not be retried forever, and a
        batch is never sent with different contents under the same sequence number.
        """
        with self.db.atomic():
            # Held chunks are left alone: their timestamps are not yet true (agent/buffer/holds.py).
            (samples,) = self.conn.execute(
                f"SELECT coalesce(sum(samples), 0) FROM chunks WHERE {UNCLAIMED} AND hold = 0 AND max_ts < ?",
                (cutoff_ms,),
            ).fetchone()
            self.conn.execute(f"DELETE FROM chunks WHERE {UNCLAIMED} AND hold = 0 AND max_ts < ?", (cutoff_ms,))
            stale_batches = self.conn.execute(
                "SELECT claims.batch_seq, sum(samples) FROM claims JOIN chunks ON chunks.id = claims.chunk_id"
                " GROUP BY claims.batch_seq HAVING max(max_ts) < ?",
                (cutoff_ms,),
            ).fetchall()
            for seq, batch_samples in stale_batches:
                self.conn.execute(f"DELETE FROM chunks WHERE {IN_BATCH}", (seq,))
                self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                samples += batch_samples
            if samples:
                self._bump("expired_samples", samples)
        if samples:
            self._release_free_pages()
            self._recount()
        return Losses(expired=samples)

    def ping(self) -> bool:
        """A no-op query: proves the worker thread and the database answer (for the watchdog)."""
        self.conn.execute("SELECT 1").fetchone()
        return True


def _span(series: SeriesMap, histograms: HistogramSeriesMap, now_ms: int) -> tuple[int, int]:
    """The oldest and newest timestamp of a chunk's samples; ``now_ms`` for one of metadata alone."""
    spans = [time_range(series)] if series else []
    spans += [time_range(histograms)] if histograms else []
    if not spans:
        return now_ms, now_ms
    return min(lo for lo, _ in spans), max(hi for _, hi in spans)
