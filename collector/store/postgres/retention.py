"""Retention in the shared store, as in the embedded store (collector/store/sqlite/retention.py;
the rules: collector/store/retention.py). One instance removes at a time: each step takes a
transaction-scoped advisory lock, or skips when another instance holds it."""

from __future__ import annotations

import asyncpg

from collector.store.postgres.base import PostgresBase
from collector.store.records import Removed
from collector.store.retention import FLEET_KEPT_MS, STEP_CHUNKS, Rules, enough

_RETENTION_LOCK = 0x62636C


class PostgresRetention(PostgresBase):
    async def remove_old(self, rules: Rules, now_ms: int) -> Removed:
        """Apply the rules once through; returns the samples removed, by reason."""
        removed = Removed()
        while True:
            chunks, samples = await self._remove_step("max_ts < $1", now_ms - rules.retention_ms)
            removed.retention += samples
            if not chunks:
                break
        if rules.max_bytes is not None:
            while (excess := await self._total_bytes() - rules.max_bytes) > 0:
                chunks, samples = await self._remove_step("true", free=excess)
                removed.max_bytes += samples
                if not chunks:
                    break
        await self._tidy(now_ms - rules.dedup_kept_ms, now_ms - FLEET_KEPT_MS)
        return removed

    async def _total_bytes(self) -> int:
        async with self.connection() as conn:
            return int(await conn.fetchval("SELECT coalesce(sum(bytes), 0) FROM chunk_tables"))

    async def _remove_step(self, condition: str, *args: object, free: int | None = None) -> tuple[int, int]:
        """Remove up to STEP_CHUNKS of the oldest chunks that meet ``condition`` (only as many as it
        takes to free ``free`` bytes, if given); returns how many, and the samples they had added."""
        async with self.connection(transaction=True) as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RETENTION_LOCK):
                return 0, 0  # another instance is at it
            n = len(args) + 1
            rows = await conn.fetch(
                f"SELECT id, table_id, samples, stored, bytes FROM chunks WHERE {condition} ORDER BY max_ts LIMIT ${n}",
                *args,
                STEP_CHUNKS,
            )
            if free is not None:
                rows = enough(rows, free)
            if not rows:
                return 0, 0
            await conn.execute("DELETE FROM chunks WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
            await conn.execute("DELETE FROM chunk_data WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
            await _subtract(conn, rows)
        for r in rows:
            self._scans.discard(r["id"])
        return len(rows), sum(r["stored"] for r in rows)

    async def _tidy(self, batches_before_ms: int, fleet_before_ms: int) -> None:
        """Drop tables no chunk uses, de-duplication records past their time, old fleet samples."""
        async with self.connection(transaction=True) as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RETENTION_LOCK):
                return
            gone = [r["id"] for r in await conn.fetch("DELETE FROM chunk_tables WHERE chunks <= 0 RETURNING id")]
            await conn.execute("DELETE FROM table_names WHERE table_id = ANY($1::bigint[])", gone)
            await conn.execute("DELETE FROM table_series WHERE table_id = ANY($1::bigint[])", gone)
            await conn.execute("DELETE FROM table_labels WHERE table_id = ANY($1::bigint[])", gone)
            await conn.execute("DELETE FROM batches WHERE received_ms < $1", batches_before_ms)
            # The newest sample of each series stays (a device's model is shown however long ago it came).
            await conn.execute(
                "DELETE FROM fleet_samples f WHERE ts < $1 AND ts < (SELECT max(g.ts) FROM fleet_samples g"
                " WHERE g.name = f.name AND g.device = f.device AND g.labels = f.labels)",
                fleet_before_ms,
            )
        if gone:
            self._table_ids.clear()
            for table_id in gone:
                self._keys.discard(table_id)


async def _subtract(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> None:
    per_table: dict[int, list[int]] = {}
    for r in rows:
        totals = per_table.setdefault(r["table_id"], [0, 0, 0])
        totals[0] += 1
        totals[1] += r["samples"]
        totals[2] += r["bytes"]
    await conn.executemany(
        "UPDATE chunk_tables SET chunks = chunks - $1, samples = samples - $2, bytes = bytes - $3 WHERE id = $4",
        [(*totals, table_id) for table_id, totals in sorted(per_table.items())],
    )
