"""Held chunks: data that is durable and within the budget, but not to be sent yet.

A chunk's ``hold`` is 0 for data that may go, or a tag naming what the chunk waits for (the clock
keeper uses the id of the clock era whose offset its timestamps wait for, see agent/clock/). The
buffer does not know what a tag means; it keeps these rules:

- A held chunk counts towards the byte budget and is evicted oldest first like any other (counted
  as evicted), but it is never claimed by a batch, compacted, or expired by its timestamps.
- Whoever holds it ends the hold one of three ways: :meth:`release_hold` (the timestamps were right),
  :meth:`shift_hold` (they are moved by a known amount, counted in ``corrected_samples``), or
  :meth:`drop_hold` (they can never be made right: counted as expired).
"""

from __future__ import annotations

import logging

from agent.buffer import recovery
from agent.buffer.compaction import Compaction
from agent.buffer.schema import UNCLAIMED
from backhaul.wire import WireError
from backhaul.wire.series import SeriesMap, merge_owned, sample_count, time_range

log = logging.getLogger(__name__)


class Holds(Compaction):
    """Ending holds (see :class:`~agent.buffer.store.BufferStore` for the arguments)."""

    def held(self) -> dict[int, int]:
        """Samples held, by tag."""
        rows = self.conn.execute(
            f"SELECT hold, sum(samples) FROM chunks WHERE hold != 0 AND {UNCLAIMED} GROUP BY hold"
        ).fetchall()
        return {int(tag): int(samples) for tag, samples in rows}

    def release_hold(self, tag: int) -> int:
        """The chunks held under ``tag`` may be sent as they are; returns their samples."""
        with self.db.atomic():
            (samples,) = self.conn.execute(
                f"SELECT coalesce(sum(samples), 0) FROM chunks WHERE hold = ? AND {UNCLAIMED}", (tag,)
            ).fetchone()
            self.conn.execute(f"UPDATE chunks SET hold = 0 WHERE hold = ? AND {UNCLAIMED}", (tag,))
        self._recount()
        return int(samples)

    def shift_hold(self, tag: int, shift_ms: int, now_ms: int, max_chunks: int = 256) -> int:
        """Move every timestamp of (up to ``max_chunks``) chunks held under ``tag`` by ``shift_ms`` and
        release them, merged into chunks of about ``target_samples``; returns the samples done (0 when
        none are left). Bounded per call, so that commits of fresh data queued on the database
        thread wait for one such step at most. A chunk that does not decode is quarantined."""
        rows = self.conn.execute(
            f"SELECT id, samples, data FROM chunks WHERE hold = ? AND {UNCLAIMED} ORDER BY id LIMIT ?",
            (tag, max_chunks),
        ).fetchall()
        if not rows:
            return 0
        done = 0
        with self.db.atomic():
            group: list[tuple[int, SeriesMap]] = []
            group_samples = 0
            for chunk_id, samples, blob in rows:
                try:
                    series = self.codec.decode(blob, limit=recovery.MAX_CHUNK_BYTES)
                except WireError as exc:
                    self._quarantine_chunk(chunk_id, samples, blob, str(exc), now_ms)
                    self.conn.execute("DELETE FROM chunks WHERE id = ?", (chunk_id,))
                    continue
                if group and group_samples + samples > self.target_samples:
                    done += self._write_shifted(group, shift_ms, now_ms)
                    group, group_samples = [], 0
                group.append((chunk_id, series))
                group_samples += samples
            if group:
                done += self._write_shifted(group, shift_ms, now_ms)
            if shift_ms:
                self._bump("corrected_samples", done)
        self._recount()
        return done

    def _write_shifted(self, group: list[tuple[int, SeriesMap]], shift_ms: int, now_ms: int) -> int:
        ids = [chunk_id for chunk_id, _ in group]
        self.conn.execute(f"DELETE FROM chunks WHERE id IN ({','.join('?' * len(ids))})", ids)
        series = merge_owned([s for _, s in group])
        if shift_ms:
            series = {labels: ([t + shift_ms for t in ts], vs) for labels, (ts, vs) in series.items()}
        samples = sample_count(series)
        if samples:
            # The first id: eviction (oldest id first) keeps its order.
            self._insert(self.codec.encode(series), time_range(series), len(series), samples, now_ms, chunk_id=ids[0])
        return samples

    def drop_hold(self, tag: int, before_ts: int | None = None) -> int:
        """Delete the chunks held under ``tag`` (only those whose newest sample is older than
        ``before_ts``, when given), counting their samples as expired; returns how many."""
        where = f"hold = ? AND {UNCLAIMED}" + ("" if before_ts is None else " AND max_ts < ?")
        args: tuple[int, ...] = (tag,) if before_ts is None else (tag, before_ts)
        with self.db.atomic():
            (samples,) = self.conn.execute(
                f"SELECT coalesce(sum(samples), 0) FROM chunks WHERE {where}", args
            ).fetchone()
            self.conn.execute(f"DELETE FROM chunks WHERE {where}", args)
            self._bump("expired_samples", samples)
        if samples:
            self._release_free_pages()
            self._recount()
        return int(samples)

    def count_corrected(self, samples: int) -> None:
        """Add samples corrected on their way in (before they were stored) to ``corrected_samples``."""
        with self.db.atomic():
            self._bump("corrected_samples", samples)
