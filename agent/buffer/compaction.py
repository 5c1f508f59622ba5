"""Compaction: runs of small unclaimed chunks (one per group commit) merged into chunks of about
``target_samples``, so a backlog is stored and sent with one series table per chunk, not per commit."""

from __future__ import annotations

import logging

from agent.buffer import recovery
from agent.buffer.core import StoreCore
from agent.buffer.schema import UNCLAIMED
from backhaul.wire import WireError
from backhaul.wire.chunk import Contents
from backhaul.wire.metadata import MetadataMap
from backhaul.wire.series import merge_owned, time_range

log = logging.getLogger(__name__)


class Compaction(StoreCore):
    """Merging small chunks (see :class:`~agent.buffer.store.BufferStore` for the arguments)."""

    def compact(self, now_ms: int, max_chunks: int = 2000, max_runs: int | None = None) -> int:
        """Merge runs of small unclaimed chunks into chunks of about ``target_samples``.

        Returns how many chunks were merged away. Bounded by ``max_chunks`` (and ``max_runs`` merges)
        per call: the agent compacts one run per call, so that commits of fresh data, queued on the
        same database thread, wait at most one merge behind it.
        """
        rows = self.conn.execute(
            f"SELECT id, samples FROM chunks WHERE {UNCLAIMED} AND hold = 0 ORDER BY id LIMIT ?", (max_chunks,)
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
        parts: list[Contents] = []
        with self.db.atomic():
            rows = self.conn.execute(
                f"SELECT id, samples, data, min_ts, max_ts FROM chunks WHERE id IN ({marks}) AND {UNCLAIMED}"
                " ORDER BY id",
                ids,
            ).fetchall()
            if len(rows) != len(ids):
                return 0
            whole = (min(r[3] for r in rows), max(r[4] for r in rows)) if rows else (now_ms, now_ms)
            for chunk_id, samples, blob, _, _ in rows:
                try:
                    parts.append(self.codec.decode_contents(blob, limit=recovery.MAX_CHUNK_BYTES))
                except WireError as exc:
                    self._quarantine_chunk(chunk_id, samples, blob, str(exc), now_ms)
            self.conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", ids)
            merged = _merged(parts)
            if merged.series or merged.histograms or merged.metadata:
                spans = [time_range(merged.series)] if merged.series else []
                spans += [time_range(merged.histograms)] if merged.histograms else []
                # A run of metadata alone keeps the span its chunks had (see BufferStore.append).
                span = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else whole
                # The merged chunk takes the first id, so eviction order (oldest first) holds.
                self._insert(
                    self.codec.encode(merged.series, merged.histograms, merged.metadata),
                    span,
                    len(merged.series) + len(merged.histograms),
                    merged.samples(),
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


def _merged(parts: list[Contents]) -> Contents:
    """One chunk's contents from several (which are not used again): samples in order, and the
    newest metadata of each family."""
    if not parts:
        return Contents()
    metadata: MetadataMap = {}
    for part in parts:
        metadata.update(part.metadata)
    return Contents(merge_owned([p.series for p in parts]), merge_owned([p.histograms for p in parts]), metadata)
