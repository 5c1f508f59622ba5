"""What the export and the fleet page read from the embedded store: series tables by device, name
and time range, the chunk index, the chunks themselves (the decoding is the reader's,
:mod:`collector.store.reader`, off this thread). All on the database's reader thread and connection
(:meth:`backhaul.sqlite.Database.run_read`): an export never waits behind ingest's transactions."""

from __future__ import annotations

from collector.store.label_index import METRIC_NAMES_SQL, ODD
from collector.store.records import ChunkRef, TableRef
from collector.store.sqlite.base import SqliteBase

# Bound parameters per statement: far below SQLite's limit.
_IDS_PER_STATEMENT = 500


def _pages(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + _IDS_PER_STATEMENT] for i in range(0, len(ids), _IDS_PER_STATEMENT)]


class SqliteReading(SqliteBase):
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
        return await self.db.run_read(self._find_tables, start_ms, end_ms, devices, names, within, limit)

    def _find_tables(
        self,
        start_ms: int,
        end_ms: int,
        devices: list[str] | None,
        names: list[str] | None,
        within: set[int] | None,
        limit: int | None,
    ) -> list[TableRef]:
        # Rows are streamed and the scan stops at the limit: a selector that spans every stored
        # table costs as much as ``limit`` of them, not a list of all (a fuzz run's store of 30,000
        # tables took 0.5 s per such export, and eight at once queued for seconds). By name, the
        # walk starts from the name index, so nothing is built before the first row.
        if names is None:
            sql = "SELECT id, device, digest FROM chunk_tables t WHERE"
            args: list[object] = []
        else:
            sql = (
                "SELECT t.id, t.device, t.digest FROM table_names n JOIN chunk_tables t ON t.id = n.table_id"
                f" WHERE n.name IN ({','.join('?' * len(names))}) AND"
            )
            args = list(names)
        sql += " t.chunks > 0 AND t.max_ts >= ? AND t.min_ts <= ?"
        args += [start_ms, end_ms]
        if devices is not None:
            sql += f" AND t.device IN ({','.join('?' * len(devices))})"
            args += devices
        found: dict[int, TableRef] = {}
        with self.db.read() as conn:
            for table_id, device, digest in conn.execute(sql, args):
                if (within is None or table_id in within) and table_id not in found:
                    found[table_id] = TableRef(table_id, device, digest)
                    if limit is not None and len(found) >= limit:
                        break
        return sorted(found.values(), key=lambda r: (r.device, r.id))

    async def table_data(self, ids: list[int]) -> dict[int, bytes]:
        """The tables' JSON, zstd-compressed, by id."""
        return await self.db.run_read(self._table_data, ids)

    def _table_data(self, ids: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        with self.db.read() as conn:
            for page in _pages(ids):
                sql = f"SELECT id, data FROM chunk_tables WHERE id IN ({','.join('?' * len(page))})"
                out.update((i, bytes(data)) for i, data in conn.execute(sql, page))
        return out

    async def chunk_refs(self, table_ids: list[int], start_ms: int, end_ms: int) -> list[ChunkRef]:
        """The index entries of the tables' chunks that overlap ``[start_ms, end_ms]``, oldest first."""
        return await self.db.run_read(self._chunk_refs, table_ids, start_ms, end_ms)

    def _chunk_refs(self, table_ids: list[int], start_ms: int, end_ms: int) -> list[ChunkRef]:
        out: list[ChunkRef] = []
        with self.db.read() as conn:
            for page in _pages(table_ids):
                sql = (
                    "SELECT id, table_id, min_ts, max_ts, samples, max_per_series FROM chunks"
                    f" WHERE table_id IN ({','.join('?' * len(page))}) AND max_ts >= ? AND min_ts <= ?"
                )
                out += [ChunkRef(*row) for row in conn.execute(sql, (*page, start_ms, end_ms))]
        out.sort(key=lambda c: c.id)
        return out

    async def chunk_totals(self, table_ids: list[int], start_ms: int, end_ms: int) -> dict[int, tuple[int, int]]:
        """Per table, of its chunks that overlap ``[start_ms, end_ms]``: their samples, and the sum of
        each one's most samples of one series (what bounds a read, :mod:`collector.store.reader`)."""
        return await self.db.run_read(self._chunk_totals, table_ids, start_ms, end_ms)

    def _chunk_totals(self, table_ids: list[int], start_ms: int, end_ms: int) -> dict[int, tuple[int, int]]:
        out: dict[int, tuple[int, int]] = {}
        with self.db.read() as conn:
            for page in _pages(table_ids):
                marks = ",".join("?" * len(page))
                sql = (
                    "SELECT table_id, sum(samples), sum(max_per_series) FROM chunks"
                    f" WHERE table_id IN ({marks}) AND max_ts >= ? AND min_ts <= ? GROUP BY table_id"
                )
                out.update((t, (n, most)) for t, n, most in conn.execute(sql, (*page, start_ms, end_ms)))
        return out

    async def chunk_frames(self, ids: list[int]) -> dict[int, bytes]:
        """Stored chunks (zstd, without their table) by id; a chunk retention removed meanwhile is absent."""
        return await self.db.run_read(self._chunk_frames, ids)

    def _chunk_frames(self, ids: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        with self.db.read() as conn:
            for page in _pages(ids):
                sql = f"SELECT id, data FROM chunk_data WHERE id IN ({','.join('?' * len(page))})"
                out.update((i, bytes(data)) for i, data in conn.execute(sql, page))
        return out

    async def metric_names(self) -> list[str]:
        """Every metric name a stored table holds."""
        return await self.db.run_read(self._metric_names)

    def _metric_names(self) -> list[str]:
        with self.db.read() as conn:
            return [name for (name,) in conn.execute(METRIC_NAMES_SQL)]

    async def label_values(self, name: str) -> list[str]:
        """Every value of label ``name`` a stored table holds (:mod:`collector.store.label_index`)."""
        return await self.db.run_read(self._label_values, name)

    def _label_values(self, name: str) -> list[str]:
        with self.db.read() as conn:
            sql = "SELECT DISTINCT value FROM table_labels WHERE name = ? AND value != ?"
            return [value for (value,) in conn.execute(sql, (name, ODD))]

    async def tables_with(self, name: str, values: list[str]) -> set[int]:
        """The tables that hold label ``name`` with one of ``values`` (or may: a superset)."""
        return await self.db.run_read(self._tables_with, name, values)

    def _tables_with(self, name: str, values: list[str]) -> set[int]:
        found: set[int] = set()
        with self.db.read() as conn:
            found.update(i for (i,) in conn.execute("SELECT table_id FROM table_labels WHERE name = ?", (ODD,)))
            for first in range(0, len(values) + 1, _IDS_PER_STATEMENT):
                page = [ODD, *values[first : first + _IDS_PER_STATEMENT]]
                sql = f"SELECT table_id FROM table_labels WHERE name = ? AND value IN ({','.join('?' * len(page))})"
                found.update(i for (i,) in conn.execute(sql, [name, *page]))
        return found
