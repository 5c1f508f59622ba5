"""Chunks, de-duplication, series tables and the devices' figures in the shared store, made safe
across instances:

- A batch's identity row goes into ``batches`` in the same transaction as its chunks. Two instances
  that receive the same ``(device, buffer_id, seq)`` at once race on that primary key: the loser's
  ``INSERT ... ON CONFLICT DO NOTHING`` waits for the winner's commit and then inserts nothing, so it
  answers "duplicate" and stores nothing. If the winner rolls back, the loser goes on and stores it.
- A device's chunks are written under a transaction-scoped advisory lock of that device, so the
  comparison with the chunks already stored (:mod:`collector.store.overlap`) sees every one another
  instance committed: a sample is counted new once, whichever instances received its copies.
  Locks are taken in one order (batch row, device lock), so instances queue rather than deadlock; a
  deadlock anyway is a transient :class:`~backhaul.errors.StoreError` (:mod:`collector.store.postgres.base`).
- ``devices`` figures are updated relative to the stored row (``samples = samples + n``), never
  overwritten from an instance's memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from backhaul.errors import StoreError, UnknownTables
from backhaul.wire.batch import BatchHeader
from collector.store import label_index, overlap, records, series_index
from collector.store.chunks import NewChunk, Scan, TableInfo
from collector.store.postgres.base import PostgresBase, count
from collector.store.records import DeviceState, IngestResult

log = logging.getLogger(__name__)

# The first key of the device locks (the second is the device's hashtext); the two-key lock space
# is apart from the one-key space of the migration lock.
_DEVICE_LOCKS = 0x62636B
# The held chunks worth comparing with new ones, as in the embedded store (collector/store/sqlite/samples.py).
_SHARING = (
    "SELECT id, table_id, samples FROM chunks WHERE device = $1 AND max_ts >= $2 AND min_ts <= $3"
    " AND table_id IN (SELECT b.table_id FROM table_series a JOIN table_series b ON b.hash = a.hash"
    " WHERE a.table_id = ANY($4::bigint[])) ORDER BY max_ts DESC LIMIT $5"
)


class PostgresSamples(PostgresBase):
    # -- samples and de-duplication --------------------------------------------------------------------

    async def seen(self, device: str, buffer_id: str, seq: int) -> bool:
        """A fast path only: :meth:`ingest` de-duplicates on its own, so when the database cannot
        answer here, say "not seen" and let ingest decide (or fail with its transient error)."""
        try:
            async with self.connection() as conn:
                found = await conn.fetchval(
                    "SELECT true FROM batches WHERE device = $1 AND buffer_id = $2 AND seq = $3", device, buffer_id, seq
                )
                if found:
                    await self._count_duplicate_batch(conn, device)
        except StoreError as exc:
            log.warning("could not look up batch %s/%s/%d: %s", device, buffer_id, seq, exc)
            return False
        return bool(found)

    async def _count_duplicate_batch(self, conn: asyncpg.Connection, device: str) -> None:
        await conn.execute("UPDATE devices SET duplicate_batches = duplicate_batches + 1 WHERE device = $1", device)
        if device in self.devices:
            self.devices[device].duplicate_batches += 1

    async def ingest(
        self, device: str, chunks: list[NewChunk], now_ms: int, batch: BatchHeader | None = None
    ) -> IngestResult:
        """Store the chunks of ``device`` in one transaction (see the module docstring)."""
        total = sum(c.scan.samples for c in chunks)
        fresh_ids: dict[tuple[str, str], int] = {}
        fresh_scans: dict[int, Scan] = {}
        async with self.connection(transaction=True) as conn:
            if batch is not None:
                won = await conn.fetchval(
                    "INSERT INTO batches (device, buffer_id, seq, received_ms, samples) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT DO NOTHING RETURNING true",
                    device,
                    batch.buffer_id,
                    batch.seq,
                    now_ms,
                    total,
                )
                if not won:  # stored before, or by another instance just now
                    await self._count_duplicate_batch(conn, device)
                    return IngestResult(duplicate_batch=True)
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _DEVICE_LOCKS, device)
            ids = [await self._table_id(conn, device, c, fresh_ids) for c in chunks]
            dups, capped = await self._duplicates(conn, device, chunks, ids)
            for chunk, table_id, dup in zip(chunks, ids, dups, strict=True):
                if dup < chunk.scan.samples:
                    chunk_id = await self._insert_chunk(conn, device, chunk, table_id, chunk.scan.samples - dup, now_ms)
                    fresh_scans[chunk_id] = chunk.scan
                if chunk.fleet:
                    await conn.executemany(
                        "INSERT INTO fleet_samples (name, device, labels, ts, bits) VALUES ($1, $2, $3, $4, $5)"
                        " ON CONFLICT DO NOTHING",
                        records.fleet_rows(device, chunk.fleet, self.device_label),
                    )
            duplicates = sum(dups)
            losses = await self._record_losses(conn, batch) if batch is not None else None
            row = await self._update_device(conn, device, now_ms, total - duplicates, duplicates, batch, losses)
        for key, table_id in fresh_ids.items():  # committed: safe to remember
            self._table_ids.put(key, table_id)
        for chunk_id, found in fresh_scans.items():
            self._scans.put(chunk_id, found)
        self.devices[device] = DeviceState(*row)
        return IngestResult(
            duplicate_batch=False, samples=total - duplicates, duplicate_samples=duplicates, capped=capped
        )

    async def _duplicates(
        self, conn: asyncpg.Connection, device: str, chunks: list[NewChunk], ids: list[int]
    ) -> tuple[list[int], bool]:
        """Per new chunk, its samples the store holds already (see :mod:`collector.store.overlap`);
        and whether the comparison reached its bound."""
        if not chunks:
            return [], False
        rows = await conn.fetch(
            _SHARING,
            device,
            min(c.scan.min_ts for c in chunks),
            max(c.scan.max_ts for c in chunks),
            sorted(set(ids)),
            overlap.MAX_HELD_CHUNKS + 1,
        )
        picked, capped = overlap.within_bound((r["id"], r["table_id"], r["samples"]) for r in rows)
        needs_entries = (
            bool(picked) or len(chunks) > 1 or not all(c.table.unique and overlap.increasing(c.scan) for c in chunks)
        )
        keys: dict[int, tuple[bytes, ...]] = {}
        if needs_entries:
            for table_id in {*ids, *(t for _, t in picked)}:
                keys[table_id] = await self._series_keys(conn, table_id)
        held = [_held(keys, table_id, await self._scan(conn, chunk_id)) for chunk_id, table_id in picked]
        new = [_held(keys, table_id, c.scan, c.table.unique) for c, table_id in zip(chunks, ids, strict=True)]
        # The comparison is CPU work: off the event loop.
        return await asyncio.to_thread(overlap.duplicates, new, held), capped

    async def _table_id(
        self, conn: asyncpg.Connection, device: str, chunk: NewChunk, fresh: dict[tuple[str, str], int]
    ) -> int:
        """The id of the chunk's table, stored now if it is new (from the chunk, or else from the
        tables agents refer to, when retention removed every chunk that used it)."""
        key = (device, chunk.table.digest)
        found = self._table_ids.get(key) or fresh.get(key)
        if found is not None:
            return found
        table_id: int | None = await conn.fetchval(
            "SELECT id FROM chunk_tables WHERE device = $1 AND digest = $2", device, chunk.table.digest
        )
        if table_id is None:
            table = chunk.table
            if table.data is None:
                data = await conn.fetchval(
                    "SELECT data FROM series_tables WHERE device = $1 AND digest = $2", device, table.digest
                )
                if data is None:
                    raise UnknownTables([table.digest])
                table = TableInfo.parse(bytes(data), table.digest)
            assert table.data is not None
            table_id = await conn.fetchval(
                "INSERT INTO chunk_tables (device, digest, data, n_series, min_ts, max_ts)"
                " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                device, table.digest, self._codec.compress(table.data), table.n_series,
                chunk.scan.min_ts, chunk.scan.max_ts,
            )  # fmt: skip
            await conn.executemany(
                "INSERT INTO table_names (name, table_id) VALUES ($1, $2)",
                [(name, table_id) for name in sorted(table.names)],
            )
            await conn.executemany(
                "INSERT INTO table_series (table_id, hash) VALUES ($1, $2)",
                series_index.rows_of(table_id, device, table),
            )
            await conn.executemany(
                "INSERT INTO table_labels (name, value, table_id) VALUES ($1, $2, $3)",
                label_index.rows_of(table_id, table),
            )
            if table.entries is not None:  # parsed already: the check need not read it back (ids are never reused)
                self._keys.put(table_id, overlap.series_keys(table.entries))
        assert table_id is not None
        fresh[key] = table_id
        return table_id

    async def _insert_chunk(
        self, conn: asyncpg.Connection, device: str, chunk: NewChunk, table_id: int, new: int, now_ms: int
    ) -> int:
        s = chunk.scan
        # First, as it locks the table's row: retention cannot drop the table under this chunk.
        status = await conn.execute(
            "UPDATE chunk_tables SET min_ts = least(min_ts, $1), max_ts = greatest(max_ts, $2),"
            " chunks = chunks + 1, samples = samples + $3, bytes = bytes + $4 WHERE id = $5",
            s.min_ts, s.max_ts, s.samples, len(chunk.frame), table_id,
        )  # fmt: skip
        if count(status) != 1:  # retention dropped it since this instance looked it up
            self._table_ids.discard((device, chunk.table.digest))
            raise StoreError("store: a series table was removed meanwhile; try again", transient=True)
        chunk_id: int = await conn.fetchval(
            "INSERT INTO chunks (device, table_id, min_ts, max_ts, samples, stored, max_per_series, bytes,"
            " received_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            device, table_id, s.min_ts, s.max_ts, s.samples, new, s.max_per_series, len(chunk.frame), now_ms,
        )  # fmt: skip
        await conn.execute("INSERT INTO chunk_data (id, data) VALUES ($1, $2)", chunk_id, chunk.frame)
        return chunk_id

    async def _record_losses(self, conn: asyncpg.Connection, header: BatchHeader) -> dict[str, int]:
        """Keep the newest loss counters of the batch's buffer; return the device's totals."""
        names = records.BUFFER_FIELDS
        keep_max = ", ".join(f"{f} = greatest(buffers.{f}, excluded.{f})" for f in names)
        marks = ", ".join(f"${i}" for i in range(1, len(names) + 3))
        await conn.execute(
            f"INSERT INTO buffers (device, buffer_id, {', '.join(names)}) VALUES ({marks})"
            f" ON CONFLICT (device, buffer_id) DO UPDATE SET {keep_max}",
            header.device,
            header.buffer_id,
            *(getattr(header, f) for f in names),
        )
        # sum() of bigints is numeric: held below 2**63 before it becomes a bigint again.
        sums = ", ".join(f"least(sum({f}), {records.MAX_COUNTER})::bigint AS {f}" for f in names)
        row = await conn.fetchrow(f"SELECT {sums} FROM buffers WHERE device = $1", header.device)
        return {f: int(row[f] or 0) for f in names}

    async def _update_device(
        self,
        conn: asyncpg.Connection,
        device: str,
        now_ms: int,
        stored: int,
        duplicates: int,
        batch: BatchHeader | None,
        losses: dict[str, int] | None,
    ) -> asyncpg.Record:
        counts = "last_seen_ms, samples, duplicate_samples, batches"
        values: list[Any] = [device, now_ms, stored, duplicates, 1 if batch else 0]
        update = [
            "last_seen_ms = greatest(devices.last_seen_ms, excluded.last_seen_ms)",
            "samples = devices.samples + excluded.samples",
            "duplicate_samples = devices.duplicate_samples + excluded.duplicate_samples",
            "batches = devices.batches + excluded.batches",
        ]
        if batch is not None and losses is not None:
            # What the agent says about itself: the newest report wins.
            reported = {
                "agent_version": batch.agent_version,
                "backlog_bytes": batch.backlog_bytes,
                "backlog_oldest_ms": batch.backlog_oldest_ms,
                **losses,
            }
            uplink = records.uplink_report(batch)
            if uplink:
                reported["uplink"] = uplink
            counts += ", " + ", ".join(reported)
            values += list(reported.values())
            update += [f"{name} = excluded.{name}" for name in reported]
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        return await conn.fetchrow(
            f"INSERT INTO devices (device, {counts}) VALUES ({marks})"
            f" ON CONFLICT (device) DO UPDATE SET {', '.join(update)} RETURNING {records.DEVICE_COLUMNS}",
            *values,
        )

    # -- series tables agents refer to by digest (docs/wire-format.md) ---------------------------------

    async def get_table(self, device: str, digest: str) -> bytes | None:
        row = await self._fetchrow("SELECT data FROM series_tables WHERE device = $1 AND digest = $2", device, digest)
        return None if row is None else bytes(row["data"])

    async def put_tables(self, device: str, tables: dict[str, bytes], now_ms: int, expire_before_ms: int) -> None:
        """Keep ``tables``; drop the device's tables stored before ``expire_before_ms``."""
        async with self.connection(transaction=True) as conn:
            await conn.execute(
                "DELETE FROM series_tables WHERE device = $1 AND stored_ms < $2", device, expire_before_ms
            )
            await conn.executemany(
                "INSERT INTO series_tables (device, digest, data, stored_ms) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING",
                [(device, digest, data, now_ms) for digest, data in tables.items()],
            )

    # -- fleet page ------------------------------------------------------------------------------------

    async def device_states(self) -> list[DeviceState]:
        """Every device's figures as stored (by all instances); refreshes ``devices`` too."""
        return await self._load_devices()

    async def model_info(self, device_label: str) -> dict[str, dict[str, str]]:
        """Per device, the labels of its ``backhaul_model_info`` series with the newest sample."""
        rows = await self._fetch(
            "SELECT device, labels, max(ts) AS ts FROM fleet_samples WHERE name = 'backhaul_model_info'"
            " GROUP BY device, labels"
        )
        return records.model_info_of(((r["device"], r["labels"], r["ts"]) for r in rows), device_label)

    async def fleet_samples(self, name: str, start_ms: int, end_ms: int) -> list[tuple[str, str, int, float]]:
        """The fleet page's samples of metric ``name`` in ``[start_ms, end_ms]``: (device, labels JSON,
        timestamp, value), in time order per series."""
        rows = await self._fetch(
            "SELECT device, labels, ts, bits FROM fleet_samples WHERE name = $1 AND ts >= $2 AND ts <= $3"
            " ORDER BY device, labels, ts",
            name,
            start_ms,
            end_ms,
        )
        values = records.from_bits([r["bits"] for r in rows])
        return [(r["device"], r["labels"], r["ts"], v) for r, v in zip(rows, values, strict=True)]


def _held(keys: dict[int, tuple[bytes, ...]], table_id: int, found: Scan, unique: bool = True) -> overlap.Held:
    return overlap.Held(lambda: keys[table_id], found, unique)
