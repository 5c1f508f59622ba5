"""Samples, de-duplication, series tables and the devices' figures in the embedded store.

- A batch is recorded in ``batches`` in the same transaction as its samples, so
  ``(device, buffer_id, seq)`` is stored once, whatever the agent re-sends, and a crash can never
  leave a batch half stored or stored without its record.
- Samples are keyed by (series, timestamp): the same sample sent twice (a sender retrying a request
  the agent had already committed) is stored once and counted as a duplicate sample.
- Values are stored as their IEEE-754 bits in an INTEGER column (:func:`records.to_bits`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import asdict, replace

import sqlite_utils

from backhaul.wire.batch import BatchHeader
from backhaul.wire.series import SeriesMap
from collector.store import records
from collector.store.records import DeviceState, IngestResult
from collector.store.sqlite.base import SqliteBase

log = logging.getLogger(__name__)


class SqliteSamples(SqliteBase):
    # -- samples and de-duplication --------------------------------------------------------------------

    async def seen(self, device: str, buffer_id: str, seq: int) -> bool:
        """Whether this batch is already stored; a repeat is counted (it survives restarts)."""
        return await self.db.run(self._seen, device, buffer_id, seq)

    def _seen(self, device: str, buffer_id: str, seq: int) -> bool:
        row = self.db.conn.execute(
            "SELECT 1 FROM batches WHERE device=? AND buffer_id=? AND seq=?", (device, buffer_id, seq)
        ).fetchone()
        if row is not None:
            self._count_duplicate_batch(device)
        return row is not None

    def _count_duplicate_batch(self, device: str) -> None:
        try:
            self.db.conn.execute(
                "UPDATE devices SET duplicate_batches = duplicate_batches + 1 WHERE device = ?", (device,)
            )
        except sqlite3.Error as exc:  # a statistic: never a reason to refuse the repeat
            log.warning("could not count a duplicate batch: %s", exc)
            return
        if device in self.devices:
            self.devices[device].duplicate_batches += 1

    async def ingest(
        self, device: str, series: SeriesMap, device_label: str, now_ms: int, batch: BatchHeader | None = None
    ) -> IngestResult:
        """Store samples of ``device`` in one transaction; returns how many were new.

        With ``batch`` (a backhaul batch) its identity is recorded in the same transaction and a repeat
        stores nothing. Without (plain remote write) only the per-sample key de-duplicates.
        """
        return await self.db.run(self._ingest, device, series, device_label, now_ms, batch)

    def _ingest(
        self, device: str, series: SeriesMap, device_label: str, now_ms: int, batch: BatchHeader | None
    ) -> IngestResult:
        total = sum(len(ts) for ts, _ in series.values())
        new_series = 0
        # A failed transaction rebuilds _series_ids and devices from the file (the rollback hook).
        with self.db.atomic() as conn:
            if batch is not None:
                try:
                    conn.execute(
                        "INSERT INTO batches (device, buffer_id, seq, received_ms, samples) VALUES (?,?,?,?,?)",
                        (device, batch.buffer_id, batch.seq, now_ms, total),
                    )
                except sqlite3.IntegrityError:  # a concurrent repeat stored it first
                    self._count_duplicate_batch(device)
                    return IngestResult(duplicate_batch=True)
            before = conn.total_changes
            for labels, (stamps, values) in series.items():
                key = records.stored_labels(labels, device_label, device)
                sid = self._series_ids.get(key)
                if sid is None:
                    cur = conn.execute(
                        "INSERT INTO series (name, labels) VALUES (?, ?)", (records.series_name(labels), key)
                    )
                    sid = int(cur.lastrowid or 0)
                    self._series_ids[key] = sid
                    new_series += 1
                conn.executemany(
                    "INSERT OR IGNORE INTO samples (series_id, ts, bits) VALUES (?, ?, ?)",
                    zip([sid] * len(stamps), stamps, records.to_bits(values), strict=True),
                )
            stored = conn.total_changes - before - new_series
            updated = replace(self.devices.get(device) or DeviceState(device))
            updated.last_seen_ms = now_ms
            updated.samples += stored
            updated.duplicate_samples += total - stored
            if batch is not None:
                updated.batches += 1
                updated.agent_version = batch.agent_version
                updated.backlog_bytes = batch.backlog_bytes
                updated.backlog_oldest_ms = batch.backlog_oldest_ms
                updated.uplink = records.uplink_report(batch) or updated.uplink
                for name, value in self._record_losses(conn, batch).items():
                    setattr(updated, name, value)
            sqlite_utils.Database(conn).table("devices").upsert(asdict(updated), pk="device")
        self.devices[device] = updated
        return IngestResult(duplicate_batch=False, samples=stored, duplicate_samples=total - stored)

    def _record_losses(self, conn: sqlite3.Connection, header: BatchHeader) -> dict[str, int]:
        """Keep the newest loss counters of the batch's buffer; return the device's totals."""
        fields = ", ".join(records.LOSS_FIELDS)
        keep_max = ", ".join(f"{f} = max({f}, excluded.{f})" for f in records.LOSS_FIELDS)
        conn.execute(
            f"INSERT INTO buffers (device, buffer_id, {fields}) VALUES (?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT (device, buffer_id) DO UPDATE SET {keep_max}",
            (header.device, header.buffer_id, *(getattr(header, f) for f in records.LOSS_FIELDS)),
        )
        # total() never overflows (sum() of two counters near 2**63 would); the total is held below 2**63.
        sums = ", ".join(f"CAST(min(total({f}), {records.MAX_COUNTER}) AS INTEGER)" for f in records.LOSS_FIELDS)
        row = conn.execute(f"SELECT {sums} FROM buffers WHERE device = ?", (header.device,)).fetchone()
        return dict(zip(records.LOSS_FIELDS, row, strict=True))

    async def series(self) -> list[tuple[int, dict[str, str]]]:
        return await self.db.run(self._series)

    def _series(self) -> list[tuple[int, dict[str, str]]]:
        return [(sid, dict(json.loads(labels))) for labels, sid in self._series_ids.items()]

    async def samples(
        self, series_ids: list[int], start_ms: int, end_ms: int
    ) -> dict[int, tuple[list[int], list[float]]]:
        """Samples of several series in ``[start_ms, end_ms]``, by series id, in time order."""
        return await self.db.run(self._samples, series_ids, start_ms, end_ms)

    def _samples(self, series_ids: list[int], start_ms: int, end_ms: int) -> dict[int, tuple[list[int], list[float]]]:
        marks = ",".join("?" * len(series_ids))
        rows = self.db.conn.execute(
            f"SELECT series_id, ts, bits FROM samples WHERE series_id IN ({marks}) AND ts >= ? AND ts <= ?"
            " ORDER BY series_id, ts",
            (*series_ids, start_ms, end_ms),
        ).fetchall()
        return records.by_series(rows)

    # -- series tables agents refer to by digest (docs/wire-format.md) ---------------------------------

    async def get_table(self, device: str, digest: str) -> bytes | None:
        return await self.db.run(self._get_table, device, digest)

    def _get_table(self, device: str, digest: str) -> bytes | None:
        row = self.db.conn.execute(
            "SELECT data FROM series_tables WHERE device = ? AND digest = ?", (device, digest)
        ).fetchone()
        return None if row is None else bytes(row[0])

    async def put_tables(self, device: str, tables: dict[str, bytes], now_ms: int, expire_before_ms: int) -> None:
        """Keep ``tables``; drop the device's tables stored before ``expire_before_ms`` (an agent that
        still refers to one is asked for it again: a 409, then the batch in full)."""
        await self.db.run(self._put_tables, device, tables, now_ms, expire_before_ms)

    def _put_tables(self, device: str, tables: dict[str, bytes], now_ms: int, expire_before_ms: int) -> None:
        with self.db.atomic() as conn:
            conn.execute("DELETE FROM series_tables WHERE device = ? AND stored_ms < ?", (device, expire_before_ms))
            conn.executemany(
                "INSERT OR IGNORE INTO series_tables (device, digest, data, stored_ms) VALUES (?, ?, ?, ?)",
                [(device, digest, data, now_ms) for digest, data in tables.items()],
            )

    # -- fleet page ------------------------------------------------------------------------------------

    async def device_states(self) -> list[DeviceState]:
        """Every device's figures, read from the file (another process may have written them)."""
        return await self.db.run(self._device_states)

    def _device_states(self) -> list[DeviceState]:
        return [DeviceState(*row) for row in self.db.conn.execute(f"SELECT {records.DEVICE_COLUMNS} FROM devices")]

    async def model_info(self, device_label: str) -> dict[str, dict[str, str]]:
        """Per device, the labels of its ``backhaul_model_info`` series with the newest sample."""
        return await self.db.run(self._model_info, device_label)

    def _model_info(self, device_label: str) -> dict[str, dict[str, str]]:
        rows = self.db.conn.execute(
            "SELECT s.labels, max(m.ts) FROM series s JOIN samples m ON m.series_id = s.id"
            " WHERE s.name = 'backhaul_model_info' GROUP BY s.id"
        ).fetchall()
        return records.newest_model_info(((dict(json.loads(labels)), ts) for labels, ts in rows), device_label)
