"""The embedded store's file, its one connection (a :class:`backhaul.sqlite.Database`) and what
memory holds of it.

Every statement runs on the database's own thread: each public coroutine hands a private method of
the same name to ``db.run``, so the event loop never waits for an fsync, and every ``sqlite3.Error``
arrives as :class:`~backhaul.errors.StoreError` (HTTP 503). After a failed transaction the rollback
hook rebuilds the caches (series ids, device figures) from the file, so memory never holds what the
file does not.
"""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from backhaul.sqlite import Database, Synchronous
from collector.store.records import DeviceState
from collector.store.sqlite.schema import MIGRATIONS


class SqliteBase:
    """Args: path of the database file (created when missing) and SQLite's synchronous level (FULL:
    every acknowledged batch survives a power cut)."""

    def __init__(self, path: Path, synchronous: Synchronous) -> None:
        self.path = path
        self.db = Database(path, synchronous, MIGRATIONS, "collector-db")
        self.db.on_rollback(self._load)
        # The last known state of every device, for the metrics page (a scrape cannot await).
        self.devices: dict[str, DeviceState] = {}
        # Series ids are never reused: labels (as stored_labels) -> id, for every series in the file.
        self._series_ids: dict[str, int] = {}

    async def open(self) -> None:
        await self.db.run(self._open)

    def _open(self) -> None:
        self.db.open()
        self._load()

    def _load(self) -> None:
        conn = self.db.conn
        self._series_ids = {labels: sid for sid, labels in conn.execute("SELECT id, labels FROM series")}
        self.devices = {row["device"]: DeviceState(**row) for row in sqlite_utils.Database(conn)["devices"].rows}

    async def close(self, grace: float | None = None) -> None:
        """Close within ``grace`` seconds (None: no limit); see :meth:`Database.aclose`."""
        await self.db.aclose(grace)
