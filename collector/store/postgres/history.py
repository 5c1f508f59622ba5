"""The fleet page's per-device history in the shared store (collector/store/history.py, migration 6).
Instances add to the same row: the upsert is one statement, so two batches of one device at once
both count."""

from __future__ import annotations

from collector.store.history import COLUMNS, KEEP_MS, BatchNote, HistoryRow
from collector.store.postgres.base import PostgresBase

_ADD = (
    "INSERT INTO device_history AS h (device, bucket_ms, bytes, samples, batches, backlog_bytes, lag_ms,"
    " clock_offset_ms, link) VALUES ($1,$2,$3,$4,1,$5,$6,$7,$8) ON CONFLICT (device, bucket_ms) DO UPDATE SET"
    " bytes = h.bytes + EXCLUDED.bytes, samples = h.samples + EXCLUDED.samples, batches = h.batches + 1,"
    " backlog_bytes = EXCLUDED.backlog_bytes, lag_ms = coalesce(EXCLUDED.lag_ms, h.lag_ms),"
    " clock_offset_ms = coalesce(EXCLUDED.clock_offset_ms, h.clock_offset_ms),"
    " link = CASE WHEN EXCLUDED.link = '' THEN h.link ELSE EXCLUDED.link END"
)


class PostgresHistory(PostgresBase):
    async def note_batch(self, note: BatchNote) -> None:
        """Count a stored batch into its device's current five minutes; forget rows past ``KEEP_MS``."""
        n = note
        async with self.connection(transaction=True) as conn:
            await conn.execute(
                _ADD, n.device, n.bucket_ms, n.bytes, n.samples, n.backlog_bytes, n.lag_ms, n.clock_offset_ms, n.link
            )
            await conn.execute(
                "DELETE FROM device_history WHERE device = $1 AND bucket_ms < $2", n.device, n.received_ms - KEEP_MS
            )

    async def history(self, device: str, since_ms: int) -> list[HistoryRow]:
        """The device's rows from ``since_ms`` on, oldest first."""
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM device_history WHERE device = $1 AND bucket_ms >= $2 ORDER BY bucket_ms",
            device,
            since_ms,
        )
        return [HistoryRow(*r) for r in rows]

    async def latest_history(self) -> dict[str, HistoryRow]:
        """Every device's newest row (for the fleet's clock offset and link columns)."""
        rows = await self._fetch(
            f"SELECT DISTINCT ON (device) device, {COLUMNS} FROM device_history ORDER BY device, bucket_ms DESC"
        )
        return {r[0]: HistoryRow(*tuple(r)[1:]) for r in rows}
