"""Samples, de-duplication, series tables and the devices' figures in the shared store, made safe
across instances:

- A batch's identity row goes into ``batches`` in the same transaction as its samples. Two instances
  that receive the same ``(device, buffer_id, seq)`` at once race on that primary key: the loser's
  ``INSERT ... ON CONFLICT DO NOTHING`` waits for the winner's commit and then inserts nothing, so it
  answers "duplicate" and stores no sample. If the winner rolls back, the loser goes on and stores it.
- Rows are written in one order (batch, series sorted by labels, samples sorted by key, buffer,
  device) so concurrent transactions queue rather than deadlock; a deadlock anyway is a transient
  :class:`~backhaul.errors.StoreError` (see :mod:`collector.store.postgres.base`).
- ``devices`` figures are updated relative to the stored row (``samples = samples + n``), never
  overwritten from an instance's memory.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg

from backhaul.errors import StoreError
from backhaul.wire.batch import BatchHeader
from backhaul.wire.series import Labels, SeriesMap
from collector.store import records
from collector.store.postgres.base import PostgresBase, count
from collector.store.records import DeviceState, IngestResult

log = logging.getLogger(__name__)


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
        self, device: str, series: SeriesMap, device_label: str, now_ms: int, batch: BatchHeader | None = None
    ) -> IngestResult:
        """Store ``series`` of ``device`` in one transaction (see the module docstring)."""
        total = sum(len(ts) for ts, _ in series.values())
        keyed = {records.stored_labels(labels, device_label, device): labels for labels in series}
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
            new_ids = await self._create_series(conn, keyed)
            ids = {**self._series_ids, **new_ids}
            stored = await self._insert_samples(conn, {ids[key]: series[labels] for key, labels in keyed.items()})
            losses = await self._record_losses(conn, batch) if batch is not None else None
            row = await self._update_device(conn, device, now_ms, stored, total - stored, batch, losses)
        self._series_ids.update(new_ids)  # committed: safe to remember
        self.devices[device] = DeviceState(*row)
        return IngestResult(duplicate_batch=False, samples=stored, duplicate_samples=total - stored)

    async def _create_series(self, conn: asyncpg.Connection, keyed: dict[str, Labels]) -> dict[str, int]:
        """Ids of series not cached yet, creating those that do not exist (in labels order)."""
        missing = sorted(key for key in keyed if key not in self._series_ids)
        if not missing:
            return {}
        await conn.execute(
            "INSERT INTO series (name, labels) SELECT * FROM unnest($1::text[], $2::text[]) AS t(name, labels)"
            " ORDER BY labels ON CONFLICT (labels) DO NOTHING",
            [records.series_name(keyed[key]) for key in missing],
            missing,
        )
        rows = await conn.fetch("SELECT labels, id FROM series WHERE labels = ANY($1::text[])", missing)
        return {r["labels"]: r["id"] for r in rows}

    async def _insert_samples(self, conn: asyncpg.Connection, by_id: dict[int, tuple[list[int], list[float]]]) -> int:
        sids: list[int] = []
        stamps: list[int] = []
        bits: list[int] = []
        for sid in sorted(by_id):
            ts, values = by_id[sid]
            sids += [sid] * len(ts)
            stamps += ts
            bits += records.to_bits(values)
        status = await conn.execute(
            "INSERT INTO samples (series_id, ts, bits)"
            " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS t(series_id, ts, bits)"
            " ORDER BY series_id, ts ON CONFLICT DO NOTHING",
            sids,
            stamps,
            bits,
        )
        return count(status)

    async def _record_losses(self, conn: asyncpg.Connection, header: BatchHeader) -> dict[str, int]:
        """Keep the newest loss counters of the batch's buffer; return the device's totals."""
        fields = ", ".join(records.LOSS_FIELDS)
        keep_max = ", ".join(f"{f} = greatest(buffers.{f}, excluded.{f})" for f in records.LOSS_FIELDS)
        await conn.execute(
            f"INSERT INTO buffers (device, buffer_id, {fields}) VALUES ($1, $2, $3, $4, $5, $6)"
            f" ON CONFLICT (device, buffer_id) DO UPDATE SET {keep_max}",
            header.device,
            header.buffer_id,
            *(getattr(header, f) for f in records.LOSS_FIELDS),
        )
        # sum() of bigints is numeric: held below 2**63 before it becomes a bigint again.
        sums = ", ".join(f"least(sum({f}), {records.MAX_COUNTER})::bigint AS {f}" for f in records.LOSS_FIELDS)
        row = await conn.fetchrow(f"SELECT {sums} FROM buffers WHERE device = $1", header.device)
        return {f: int(row[f] or 0) for f in records.LOSS_FIELDS}

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

    async def series(self) -> list[tuple[int, dict[str, str]]]:
        rows = await self._fetch("SELECT id, labels FROM series")
        return [(r["id"], dict(json.loads(r["labels"]))) for r in rows]

    async def samples(
        self, series_ids: list[int], start_ms: int, end_ms: int
    ) -> dict[int, tuple[list[int], list[float]]]:
        """Samples of several series in ``[start_ms, end_ms]``, by series id, in time order."""
        rows = await self._fetch(
            "SELECT series_id, ts, bits FROM samples WHERE series_id = ANY($1::bigint[]) AND ts >= $2 AND ts <= $3"
            " ORDER BY series_id, ts",
            series_ids,
            start_ms,
            end_ms,
        )
        return records.by_series(rows)

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
            "SELECT s.labels, max(m.ts) AS ts FROM series s JOIN samples m ON m.series_id = s.id"
            " WHERE s.name = 'backhaul_model_info' GROUP BY s.id, s.labels"
        )
        return records.newest_model_info(((dict(json.loads(r["labels"])), r["ts"]) for r in rows), device_label)
