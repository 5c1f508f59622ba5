"""Retention in the embedded store: whole chunks past ``[store] retention`` or over
``[store] max_bytes`` are removed, oldest first (see :mod:`collector.store.retention` for the rules).
Each step is one short transaction, so ingest (on the same thread) never waits long."""

from __future__ import annotations

import sqlite3

from collector.store.records import Removed
from collector.store.retention import FLEET_KEPT_MS, STEP_CHUNKS, Rules, enough
from collector.store.sqlite.base import SqliteBase


class SqliteRetention(SqliteBase):
    async def remove_old(self, rules: Rules, now_ms: int) -> Removed:
        """Apply the rules once through; returns the samples removed, by reason."""
        removed = Removed()
        while True:
            chunks, samples = await self.db.run(self._remove_step, "max_ts < ?", (now_ms - rules.retention_ms,))
            removed.retention += samples
            if not chunks:
                break
        if rules.max_bytes is not None:
            while (excess := await self.db.run(self._total_bytes) - rules.max_bytes) > 0:
                chunks, samples = await self.db.run(self._remove_step, "1", (), excess)
                removed.max_bytes += samples
                if not chunks:
                    break
        await self.db.run(self._tidy, now_ms - rules.dedup_kept_ms, now_ms - FLEET_KEPT_MS)
        return removed

    def _total_bytes(self) -> int:
        return int(self.db.conn.execute("SELECT coalesce(sum(bytes), 0) FROM chunk_tables").fetchone()[0])

    def _remove_step(self, condition: str, args: tuple[object, ...], free: int | None = None) -> tuple[int, int]:
        """Remove up to STEP_CHUNKS of the oldest chunks that meet ``condition`` (only as many as it
        takes to free ``free`` bytes, if given); returns how many, and the samples they had added."""
        with self.db.atomic() as conn:
            rows = conn.execute(
                f"SELECT id, table_id, samples, stored, bytes FROM chunks WHERE {condition} ORDER BY max_ts LIMIT ?",
                (*args, STEP_CHUNKS),
            ).fetchall()
            if free is not None:
                rows = enough(rows, free)
            if not rows:
                return 0, 0
            conn.executemany("DELETE FROM chunks WHERE id = ?", [(r[0],) for r in rows])
            conn.executemany("DELETE FROM chunk_data WHERE id = ?", [(r[0],) for r in rows])
            per_table: dict[int, list[int]] = {}
            for _, table_id, samples, _, size in rows:
                totals = per_table.setdefault(table_id, [0, 0, 0])
                totals[0] += 1
                totals[1] += samples
                totals[2] += size
            conn.executemany(
                "UPDATE chunk_tables SET chunks = chunks - ?, samples = samples - ?, bytes = bytes - ? WHERE id = ?",
                [(*totals, table_id) for table_id, totals in per_table.items()],
            )
        for chunk_id, *_ in rows:
            self._scans.discard(chunk_id)
        return len(rows), sum(r[3] for r in rows)

    def _tidy(self, batches_before_ms: int, fleet_before_ms: int) -> None:
        """Drop tables no chunk uses, de-duplication records past their time, old fleet samples."""
        with self.db.atomic() as conn:
            gone = [r[0] for r in conn.execute("SELECT id FROM chunk_tables WHERE chunks <= 0")]
            conn.executemany("DELETE FROM table_names WHERE table_id = ?", [(i,) for i in gone])
            conn.executemany("DELETE FROM table_series WHERE table_id = ?", [(i,) for i in gone])
            conn.executemany("DELETE FROM table_labels WHERE table_id = ?", [(i,) for i in gone])
            conn.executemany("DELETE FROM chunk_tables WHERE id = ?", [(i,) for i in gone])
            conn.execute("DELETE FROM batches WHERE received_ms < ?", (batches_before_ms,))
            _drop_old_fleet_samples(conn, fleet_before_ms)
        if gone:
            self._table_ids.clear()
            for table_id in gone:
                self._keys.discard(table_id)


def _drop_old_fleet_samples(conn: sqlite3.Connection, before_ms: int) -> None:
    # The newest sample of each series stays (a device's model is shown however long ago it came).
    conn.execute(
        "DELETE FROM fleet_samples WHERE ts < ? AND ts < (SELECT max(f.ts) FROM fleet_samples f"
        " WHERE f.name = fleet_samples.name AND f.device = fleet_samples.device AND f.labels = fleet_samples.labels)",
        (before_ms,),
    )
