"""Converting a shared store that kept a row per sample into chunks (see
:mod:`collector.store.legacy`): at open, device by device, one transaction each, under the
migration lock, so instances that start together convert once."""

from __future__ import annotations

import json
import logging

import asyncpg

from backhaul.wire.series import Labels
from collector.store import legacy, records
from collector.store.postgres.samples import PostgresSamples
from collector.store.postgres.schema import MIGRATION_LOCK

log = logging.getLogger(__name__)


class PostgresLegacy(PostgresSamples):
    async def _convert(self) -> None:
        async with self.connection() as conn:
            if await conn.fetchval("SELECT to_regclass('samples')") is None:
                return
            by_device: dict[str, list[int]] = {}
            for r in await conn.fetch("SELECT id, labels FROM series"):
                found = legacy.agent_labels(r["labels"], self.device_label)
                by_device.setdefault(found[0] if found else "", []).append(r["id"])
        converted = 0
        for device, ids in sorted(by_device.items()):
            async with self.connection(transaction=True) as conn:
                await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                converted += await self._convert_device(conn, device, ids)
        async with self.connection(transaction=True) as conn:
            await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            if await conn.fetchval("SELECT to_regclass('samples')") is not None:
                left = await conn.fetchval("SELECT count(*) FROM samples")
                if left:  # another instance is still converting, or rows came in: the next open goes on
                    log.warning("store: %d rows of samples not converted yet", left)
                    return
                await conn.execute("DROP TABLE samples; DROP TABLE series")
        log.info("store: %d samples of %d devices converted from rows into chunks", converted, len(by_device))

    async def _convert_device(self, conn: asyncpg.Connection, device: str, ids: list[int]) -> int:
        labels: dict[int, Labels] = {}
        for r in await conn.fetch("SELECT id, labels FROM series WHERE id = ANY($1::bigint[])", ids):
            found = legacy.agent_labels(r["labels"], self.device_label)
            labels[r["id"]] = found[1] if found else tuple(sorted((n, v) for n, v in json.loads(r["labels"])))
        converted = 0
        first = "SELECT min(ts) FROM samples WHERE series_id = ANY($1::bigint[]) AND ts >= $2"
        start = await conn.fetchval(first, ids, -(2**63))
        fresh: dict[tuple[str, str], int] = {}
        while start is not None:
            window = start - start % legacy.WINDOW_MS
            end = window + legacy.WINDOW_MS
            rows = await conn.fetch(
                "SELECT series_id, ts, bits FROM samples WHERE series_id = ANY($1::bigint[]) AND ts >= $2 AND ts < $3"
                " ORDER BY series_id, ts",
                ids,
                window,
                end,
            )
            for chunk in legacy.window_chunks(((labels[r[0]], r[1], r[2]) for r in rows), self._codec):
                table_id = await self._table_id(conn, device, chunk, fresh)
                await self._insert_chunk(conn, device, chunk, table_id, chunk.scan.samples, 0)
                if chunk.fleet:
                    await conn.executemany(
                        "INSERT INTO fleet_samples (name, device, labels, ts, bits) VALUES ($1, $2, $3, $4, $5)"
                        " ON CONFLICT DO NOTHING",
                        records.fleet_rows(device, chunk.fleet, self.device_label),
                    )
                converted += chunk.scan.samples
            start = await conn.fetchval(first, ids, end)
        await conn.execute("DELETE FROM samples WHERE series_id = ANY($1::bigint[])", ids)
        await conn.execute("DELETE FROM series WHERE id = ANY($1::bigint[])", ids)
        return converted
