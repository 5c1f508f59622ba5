"""What the export and the fleet page read from the shared store, as in the embedded store
(collector/store/sqlite/reading.py)."""

from __future__ import annotations

from collector.store.label_index import METRIC_NAMES_SQL, ODD
from collector.store.postgres.base import PostgresBase
from collector.store.records import ChunkRef, TableRef


class PostgresReading(PostgresBase):
    async def tables(
        self,
        start_ms: int,
        end_ms: int,
        devices: list[str] | None = None,
        names: list[str] | None = None,
        within: set[int] | None = None,
        limit: int | None = None,
    ) -> list[TableRef]:
        """Tables with chunks in ``[start_ms, end_ms]``, of those devices, holding those metric names
        and among the ids ``within`` (None: any), by device then id; at most ``limit`` of them."""
        sql = "SELECT id, device, digest FROM chunk_tables WHERE chunks > 0 AND max_ts >= $1 AND min_ts <= $2"
        args: list[object] = [start_ms, end_ms]
        if devices is not None:
            args.append(devices)
            sql += f" AND device = ANY(${len(args)}::text[])"
        if names is not None:
            args.append(names)
            sql += f" AND id IN (SELECT table_id FROM table_names WHERE name = ANY(${len(args)}::text[]))"
        if within is not None:
            args.append(list(within))
            sql += f" AND id = ANY(${len(args)}::bigint[])"
        sql += " ORDER BY device, id"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        rows = await self._fetch(sql, *args)
        return [TableRef(r["id"], r["device"], r["digest"]) for r in rows]

    async def table_data(self, ids: list[int]) -> dict[int, bytes]:
        """The tables' JSON, zstd-compressed, by id."""
        rows = await self._fetch("SELECT id, data FROM chunk_tables WHERE id = ANY($1::bigint[])", ids)
        return {r["id"]: bytes(r["data"]) for r in rows}

    async def chunk_refs(self, table_ids: list[int], start_ms: int, end_ms: int) -> list[ChunkRef]:
        """The index entries of the tables' chunks that overlap ``[start_ms, end_ms]``, oldest first."""
        rows = await self._fetch(
            "SELECT id, table_id, min_ts, max_ts, samples, max_per_series FROM chunks"
            " WHERE table_id = ANY($1::bigint[]) AND max_ts >= $2 AND min_ts <= $3 ORDER BY id",
            table_ids,
            start_ms,
            end_ms,
        )
        return [ChunkRef(*r) for r in rows]

    async def chunk_totals(self, table_ids: list[int], start_ms: int, end_ms: int) -> dict[int, tuple[int, int]]:
        """Per table, of its chunks that overlap ``[start_ms, end_ms]``: their samples, and the sum of
        each one's most samples of one series (what bounds a read, :mod:`collector.store.reader`)."""
        rows = await self._fetch(
            "SELECT table_id, sum(samples)::bigint AS n, sum(max_per_series)::bigint AS most FROM chunks"
            " WHERE table_id = ANY($1::bigint[]) AND max_ts >= $2 AND min_ts <= $3 GROUP BY table_id",
            table_ids,
            start_ms,
            end_ms,
        )
        return {r["table_id"]: (r["n"], r["most"]) for r in rows}

    async def chunk_frames(self, ids: list[int]) -> dict[int, bytes]:
        """Stored chunks (zstd, without their table) by id; a chunk retention removed meanwhile is absent."""
        rows = await self._fetch("SELECT id, data FROM chunk_data WHERE id = ANY($1::bigint[])", ids)
        return {r["id"]: bytes(r["data"]) for r in rows}

    async def metric_names(self) -> list[str]:
        """Every metric name a stored table holds."""
        return [r["name"] for r in await self._fetch(METRIC_NAMES_SQL)]

    async def label_values(self, name: str) -> list[str]:
        """Every value of label ``name`` a stored table holds (:mod:`collector.store.label_index`)."""
        rows = await self._fetch("SELECT DISTINCT value FROM table_labels WHERE name = $1 AND value != $2", name, ODD)
        return [r["value"] for r in rows]

    async def tables_with(self, name: str, values: list[str]) -> set[int]:
        """The tables that hold label ``name`` with one of ``values`` (or may: a superset)."""
        rows = await self._fetch(
            "SELECT table_id FROM table_labels WHERE name = $3 OR (name = $1 AND value = ANY($2::text[]))",
            name,
            [ODD, *values],
            ODD,
        )
        return {r["table_id"] for r in rows}
