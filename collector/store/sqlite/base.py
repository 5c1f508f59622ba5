"""The embedded store's file, its one connection (a :class:`backhaul.sqlite.Database`) and what
memory holds of it.

Every statement runs on the database's own thread: each public coroutine hands a private method of
the same name to ``db.run``, so the event loop never waits for an fsync, and every ``sqlite3.Error``
arrives as :class:`~backhaul.errors.StoreError` (HTTP 503). Memory holds the devices' figures (for
the metrics page) and bounded caches (table ids, tables' series keys, scanned chunks), never a
structure per stored series. After a failed transaction the rollback hook reloads the figures and
forgets every cache entry made during it (the ids of rows it inserted may come back for other rows),
so memory never holds what the file does not. Entries made before it stay: what they map never
changes under an id, and retention forgets the ids it deletes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import sqlite_utils

from backhaul.sqlite import Database, Synchronous
from backhaul.wire.chunk import Codec
from collector.store import overlap
from collector.store.cache import BoundedCache, K, V
from collector.store.chunks import Scan, TableInfo, scan
from collector.store.records import DeviceState
from collector.store.sqlite.schema import MIGRATIONS

# Bounds of what the store remembers: tables by id; the series keys of tables (the de-duplication's,
# ~57 bytes a series: 200,000 is ~11 MB), by series; chunks scanned for it, by samples.
CACHED_TABLE_IDS = 4096
CACHED_TABLE_KEYS = 200_000
CACHED_SCAN_SAMPLES = 200_000
# A new store's pages: a row holding a chunk lives on one table page when it fits, and the chunks of
# 10 s batches (2-3 KB) fit one to a 4 KB page, leaving a third of it empty; in 2 KB pages they spill
# over into overflow pages, which are filled. 3.16 -> 2.14 bytes per sample on disk in bench.collector
# at 10 s batches. An existing file keeps its page size (VACUUM would change it).
PAGE_SIZE = 2048


class SqliteBase:
    """Args: path of the database file (created when missing), SQLite's synchronous level (FULL:
    every acknowledged batch survives a power cut) and the device label (only to convert a store
    that kept a row per sample, see :mod:`collector.store.legacy`)."""

    def __init__(self, path: Path, synchronous: Synchronous, device_label: str = "device_id") -> None:
        self.path = path
        self.device_label = device_label
        self.db = Database(path, synchronous, MIGRATIONS, "collector-db", page_size=PAGE_SIZE)
        self.db.on_rollback(self._rolled_back)
        # The last known state of every device, for the metrics page (a scrape cannot await).
        self.devices: dict[str, DeviceState] = {}
        self._codec = Codec()  # used on the database thread only
        self._table_ids: BoundedCache[tuple[str, str], int] = BoundedCache(CACHED_TABLE_IDS)
        self._keys: BoundedCache[int, tuple[bytes, ...]] = BoundedCache(CACHED_TABLE_KEYS, lambda k: len(k) + 1)
        self._scans: BoundedCache[int, Scan] = BoundedCache(CACHED_SCAN_SAMPLES, lambda s: s.samples or 1)
        # Cache entries made since the last commit (forgotten if it fails); see _remember.
        self._made: list[tuple[BoundedCache[Any, Any], Hashable]] = []

    async def open(self) -> None:
        await self.db.run(self._open)

    def _open(self) -> None:
        self.db.open()
        self._load()
        if self._has_rows():
            self._convert()
            self._load()

    def _has_rows(self) -> bool:
        """Whether the file still holds a row per sample (collector/store/sqlite/legacy.py)."""
        return False

    def _convert(self) -> None:
        raise NotImplementedError

    def _load(self) -> None:
        self._load_devices()
        self._table_ids.clear()
        self._keys.clear()
        self._scans.clear()
        self._made.clear()

    def _rolled_back(self) -> None:
        # Not a clear of every cache: hostile batches that fail inside the transaction (a table
        # reference no longer offered, say) would make every device's next check parse and scan
        # its held chunks again.
        self._load_devices()
        for cache, key in self._made:
            cache.discard(key)
        self._made.clear()

    def _load_devices(self) -> None:
        rows = sqlite_utils.Database(self.db.conn)["devices"].rows
        self.devices = {row["device"]: DeviceState(**row) for row in rows}

    def _remember(self, cache: BoundedCache[K, V], key: K, value: V) -> None:
        """Put ``key`` in ``cache`` within a transaction (until it commits, see _committed)."""
        cache.put(key, value)
        self._made.append((cache, key))

    def _committed(self) -> None:
        self._made.clear()

    async def close(self, grace: float | None = None) -> None:
        """Close within ``grace`` seconds (None: no limit); see :meth:`Database.aclose`."""
        await self.db.aclose(grace)

    # -- on the database thread -------------------------------------------------------------------

    def _series_keys(self, conn: sqlite3.Connection, table_id: int) -> tuple[bytes, ...]:
        """A stored table's series keys (:func:`overlap.series_keys`), parsed once and cached."""
        found = self._keys.get(table_id)
        if found is None:
            digest, data = conn.execute("SELECT digest, data FROM chunk_tables WHERE id = ?", (table_id,)).fetchone()
            found = overlap.series_keys(TableInfo.parse(self._codec.decompress(data, 1 << 30), digest).labels())
            self._remember(self._keys, table_id, found)
        return found

    def _scan(self, conn: sqlite3.Connection, chunk_id: int) -> Scan:
        found = self._scans.get(chunk_id)
        if found is None:
            (data,) = conn.execute("SELECT data FROM chunk_data WHERE id = ?", (chunk_id,)).fetchone()
            found = scan(self._codec.decompress(data, 1 << 30))
            self._remember(self._scans, chunk_id, found)
        return found
