"""Chunks, de-duplication, series tables and the devices' figures in the embedded store.

- A batch is recorded in ``batches`` in the same transaction as its chunks, so
  ``(device, buffer_id, seq)`` is stored once, whatever the agent re-sends, and a crash can never
  leave a batch half stored or stored without its record.
- Chunks are kept as they came (without their series table, which is kept once per device and
  digest in ``chunk_tables``). Samples a chunk shares with a stored one are counted as duplicates
  (:mod:`collector.store.overlap`); a chunk of nothing but duplicates is not stored.
- The samples the fleet page reads are kept aside in ``fleet_samples`` (values as IEEE-754 bits).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace

from backhaul.errors import StoreError, UnknownTables
from backhaul.wire.batch import BatchHeader
from collector.store import label_index, overlap, records, series_index
from collector.store.chunks import NewChunk, Scan, TableInfo
from collector.store.records import DeviceState, IngestResult
from collector.store.sqlite.base import SqliteBase

log = logging.getLogger(__name__)

# One statement, prepared once (sqlite_utils' upsert looks the table up on every call: too slow for
# every batch); it sets only the record's columns.
_DEVICE_FIELDS = records.DEVICE_COLUMNS.split(", ")
_UPSERT_DEVICE = (
    f"INSERT INTO devices ({records.DEVICE_COLUMNS}) VALUES ({', '.join('?' * len(_DEVICE_FIELDS))})"
    " ON CONFLICT (device) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _DEVICE_FIELDS[1:])
)

# The held chunks worth comparing with new ones: the device's, overlapping the new chunks' time
# range, of a table that shares a series hash with a new chunk's table (a table shares with itself);
# newest first, one more than the bound (collector/store/overlap.py).
_SHARING = (
    "SELECT id, table_id, samples FROM chunks WHERE device = ? AND max_ts >= ? AND min_ts <= ?"
    " AND table_id IN (SELECT b.table_id FROM table_series a JOIN table_series b ON b.hash = a.hash"
    " WHERE a.table_id IN ({marks})) ORDER BY max_ts DESC LIMIT ?"
)


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
        self, device: str, chunks: list[NewChunk], now_ms: int, batch: BatchHeader | None = None
    ) -> IngestResult:
        """Store the chunks of ``device`` in one transaction; returns how many samples were new.

        With ``batch`` (a backhaul batch) its identity is recorded in the same transaction and a repeat
        stores nothing. Without (plain remote write) only the samples' comparison de-duplicates.
        """
        return await self.db.run(self._ingest, device, chunks, now_ms, batch)

    def _ingest(self, device: str, chunks: list[NewChunk], now_ms: int, batch: BatchHeader | None) -> IngestResult:
        total = sum(c.scan.samples for c in chunks)
        # A failed transaction reloads the figures and empties the caches (the rollback hook).
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
            ids = [self._table_id(conn, device, c) for c in chunks]
            dups, capped = self._duplicates(conn, device, chunks, ids)
            for chunk, table_id, dup in zip(chunks, ids, dups, strict=True):
                if dup < chunk.scan.samples:
                    self._insert_chunk(conn, device, chunk, table_id, chunk.scan.samples - dup, now_ms)
                if chunk.fleet:
                    conn.executemany(
                        "INSERT OR IGNORE INTO fleet_samples (name, device, labels, ts, bits) VALUES (?,?,?,?,?)",
                        records.fleet_rows(device, chunk.fleet, self.device_label),
                    )
            duplicates = sum(dups)
            updated = replace(self.devices.get(device) or DeviceState(device))
            updated.last_seen_ms = now_ms
            updated.samples += total - duplicates
            updated.duplicate_samples += duplicates
            if batch is not None:
                updated.batches += 1
                updated.agent_version = batch.agent_version
                updated.backlog_bytes = batch.backlog_bytes
                updated.backlog_oldest_ms = batch.backlog_oldest_ms
                updated.uplink = records.uplink_report(batch) or updated.uplink
                for name, value in self._record_losses(conn, batch).items():
                    setattr(updated, name, value)
            conn.execute(_UPSERT_DEVICE, [getattr(updated, f) for f in _DEVICE_FIELDS])
        self._committed()
        self.devices[device] = updated
        return IngestResult(
            duplicate_batch=False, samples=total - duplicates, duplicate_samples=duplicates, capped=capped
        )

    def _duplicates(
        self, conn: sqlite3.Connection, device: str, chunks: list[NewChunk], ids: list[int]
    ) -> tuple[list[int], bool]:
        """Per new chunk, its samples the store holds already (see :mod:`collector.store.overlap`);
        and whether the comparison reached its bound."""
        if not chunks:
            return [], False
        new = [self._held(conn, table_id, c.scan, c.table.unique) for c, table_id in zip(chunks, ids, strict=True)]
        tables = sorted(set(ids))
        rows = conn.execute(_SHARING.format(marks=",".join("?" * len(tables))), (
            device, min(c.scan.min_ts for c in chunks), max(c.scan.max_ts for c in chunks),
            *tables, overlap.MAX_HELD_CHUNKS + 1,
        ))  # fmt: skip
        picked, capped = overlap.within_bound(rows)
        held = [self._held(conn, table_id, self._scan(conn, chunk_id)) for chunk_id, table_id in picked]
        return overlap.duplicates(new, held), capped

    def _held(self, conn: sqlite3.Connection, table_id: int, scan: Scan, unique: bool = True) -> overlap.Held:
        return overlap.Held(lambda: self._series_keys(conn, table_id), scan, unique)

    def _table_id(self, conn: sqlite3.Connection, device: str, chunk: NewChunk) -> int:
        """The id of the chunk's table, stored now if it is new (from the chunk, or else from the
        tables agents refer to, when retention removed every chunk that used it)."""
        key = (device, chunk.table.digest)
        found = self._table_ids.get(key)
        if found is not None:
            return found
        row = conn.execute("SELECT id FROM chunk_tables WHERE device = ? AND digest = ?", key).fetchone()
        if row is None:
            table = chunk.table if chunk.table.data is not None else self._offered(conn, device, chunk.table.digest)
            assert table.data is not None
            cur = conn.execute(
                "INSERT INTO chunk_tables (device, digest, data, n_series, min_ts, max_ts) VALUES (?,?,?,?,?,?)",
                (device, table.digest, self._codec.compress(table.data), table.n_series,
                 chunk.scan.min_ts, chunk.scan.max_ts),
            )  # fmt: skip
            table_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO table_names (name, table_id) VALUES (?, ?)",
                [(name, table_id) for name in sorted(table.names)],
            )
            conn.executemany(
                "INSERT INTO table_series (table_id, hash) VALUES (?, ?)", series_index.rows_of(table_id, device, table)
            )
            conn.executemany(
                "INSERT INTO table_labels (name, value, table_id) VALUES (?, ?, ?)",
                label_index.rows_of(table_id, table),
            )
            if table.entries is not None:
                self._remember(self._keys, table_id, overlap.series_keys(table.entries))
        else:
            table_id = row[0]
        self._remember(self._table_ids, key, table_id)
        return table_id

    def _offered(self, conn: sqlite3.Connection, device: str, digest: str) -> TableInfo:
        row = conn.execute(
            "SELECT data FROM series_tables WHERE device = ? AND digest = ?", (device, digest)
        ).fetchone()
        if row is None:
            raise UnknownTables([digest])
        return TableInfo.parse(bytes(row[0]), digest)

    def _insert_chunk(
        self, conn: sqlite3.Connection, device: str, chunk: NewChunk, table_id: int, new: int, now_ms: int
    ) -> None:
        s = chunk.scan
        cur = conn.execute(
            "UPDATE chunk_tables SET min_ts = min(min_ts, ?), max_ts = max(max_ts, ?), chunks = chunks + 1,"
            " samples = samples + ?, bytes = bytes + ? WHERE id = ?",
            (s.min_ts, s.max_ts, s.samples, len(chunk.frame), table_id),
        )
        if cur.rowcount != 1:  # cannot happen while retention clears the cache of ids it drops
            raise StoreError("store: a series table was removed meanwhile; try again", transient=True)
        cur = conn.execute(
            "INSERT INTO chunks (device, table_id, min_ts, max_ts, samples, stored, max_per_series, bytes,"
            " received_ms) VALUES (?,?,?,?,?,?,?,?,?)",
            (device, table_id, s.min_ts, s.max_ts, s.samples, new, s.max_per_series, len(chunk.frame), now_ms),
        )
        chunk_id = int(cur.lastrowid or 0)
        conn.execute("INSERT INTO chunk_data (id, data) VALUES (?, ?)", (chunk_id, chunk.frame))
        self._remember(self._scans, chunk_id, s)

    def _record_losses(self, conn: sqlite3.Connection, header: BatchHeader) -> dict[str, int]:
        """Keep the newest loss (and correction) counters of the batch's buffer; return the device's totals."""
        names = records.BUFFER_FIELDS
        keep_max = ", ".join(f"{f} = max({f}, excluded.{f})" for f in names)
        conn.execute(
            f"INSERT INTO buffers (device, buffer_id, {', '.join(names)}) VALUES (?, ?{', ?' * len(names)})"
            f" ON CONFLICT (device, buffer_id) DO UPDATE SET {keep_max}",
            (header.device, header.buffer_id, *(getattr(header, f) for f in names)),
        )
        # total() never overflows (sum() of two counters near 2**63 would); the total is held below 2**63.
        sums = ", ".join(f"CAST(min(total({f}), {records.MAX_COUNTER}) AS INTEGER)" for f in names)
        row = conn.execute(f"SELECT {sums} FROM buffers WHERE device = ?", (header.device,)).fetchone()
        return dict(zip(names, row, strict=True))

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
        still refers to one is asked for it again: a 409, then the batch in full). The chunks keep
        their own copy (``chunk_tables``), so this never touches stored data."""
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
            "SELECT device, labels, max(ts) FROM fleet_samples WHERE name = 'backhaul_model_info'"
            " GROUP BY device, labels"
        ).fetchall()
        return records.model_info_of(rows, device_label)

    async def fleet_samples(self, name: str, start_ms: int, end_ms: int) -> list[tuple[str, str, int, float]]:
        """The fleet page's samples of metric ``name`` in ``[start_ms, end_ms]``: (device, labels JSON,
        timestamp, value), in time order per series."""
        return await self.db.run(self._fleet_samples, name, start_ms, end_ms)

    def _fleet_samples(self, name: str, start_ms: int, end_ms: int) -> list[tuple[str, str, int, float]]:
        rows = self.db.conn.execute(
            "SELECT device, labels, ts, bits FROM fleet_samples WHERE name = ? AND ts >= ? AND ts <= ?"
            " ORDER BY device, labels, ts",
            (name, start_ms, end_ms),
        ).fetchall()
        values = records.from_bits([r[3] for r in rows])
        return [(d, labels, ts, v) for (d, labels, ts, _), v in zip(rows, values, strict=True)]
