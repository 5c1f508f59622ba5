"""The fleet page's per-device history in the embedded store (collector/store/history.py, migration 9)."""

from __future__ import annotations

from collector.store.history import COLUMNS, KEEP_MS, BatchNote, HistoryRow
from collector.store.sqlite.base import SqliteBase

_ADD = (
    "INSERT INTO device_history (device, bucket_ms, bytes, samples, batches, backlog_bytes, lag_ms,"
    " clock_offset_ms, link) VALUES (?,?,?,?,1,?,?,?,?) ON CONFLICT (device, bucket_ms) DO UPDATE SET"
    " bytes = bytes + excluded.bytes, samples = samples + excluded.samples, batches = batches + 1,"
    " backlog_bytes = excluded.backlog_bytes, lag_ms = coalesce(excluded.lag_ms, lag_ms),"
    " clock_offset_ms = coalesce(excluded.clock_offset_ms, clock_offset_ms),"
    " link = CASE WHEN excluded.link = '' THEN link ELSE excluded.link END"
)


class SqliteHistory(SqliteBase):
    async def note_batch(self, note: BatchNote) -> None:
        """Count a stored batch into its device's current five minutes; forget rows past ``KEEP_MS``."""
        await self.db.run(self._note_batch, note)

    def _note_batch(self, n: BatchNote) -> None:
        with self.db.atomic() as conn:
            conn.execute(
                _ADD,
                (n.device, n.bucket_ms, n.bytes, n.samples, n.backlog_bytes, n.lag_ms, n.clock_offset_ms, n.link),
            )
            conn.execute(
                "DELETE FROM device_history WHERE device = ? AND bucket_ms < ?", (n.device, n.received_ms - KEEP_MS)
            )

    async def history(self, device: str, since_ms: int) -> list[HistoryRow]:
        """The device's rows from ``since_ms`` on, oldest first."""
        return await self.db.run(self._history, device, since_ms)

    def _history(self, device: str, since_ms: int) -> list[HistoryRow]:
        rows = self.db.conn.execute(
            f"SELECT {COLUMNS} FROM device_history WHERE device = ? AND bucket_ms >= ? ORDER BY bucket_ms",
            (device, since_ms),
        ).fetchall()
        return [HistoryRow(*row) for row in rows]

    async def latest_history(self) -> dict[str, HistoryRow]:
        """Every device's newest row (for the fleet's clock offset and link columns)."""
        return await self.db.run(self._latest)

    def _latest(self) -> dict[str, HistoryRow]:
        rows = self.db.conn.execute(
            f"SELECT device, {COLUMNS} FROM device_history h WHERE bucket_ms ="
            " (SELECT max(bucket_ms) FROM device_history WHERE device = h.device)"
        ).fetchall()
        return {row[0]: HistoryRow(*row[1:]) for row in rows}
