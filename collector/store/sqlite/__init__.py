"""The embedded store: one SQLite file with chunks and their index, batches seen, devices, the device
registry and alerts, behind the async :class:`collector.store.Store` interface.

One class per concern, sharing :class:`~collector.store.sqlite.base.SqliteBase` (the file, its
thread, the caches); the PostgreSQL back end (:mod:`collector.store.postgres`) has the same shape.
"""

from __future__ import annotations

from collector.store.sqlite.alerts import SqliteAlerts
from collector.store.sqlite.legacy import SqliteLegacy
from collector.store.sqlite.reading import SqliteReading
from collector.store.sqlite.registry import SqliteRegistry
from collector.store.sqlite.retention import SqliteRetention

__all__ = ["SqliteStore"]


class SqliteStore(SqliteLegacy, SqliteReading, SqliteRetention, SqliteRegistry, SqliteAlerts):
    """The embedded store. Args: path of the database file (created when missing), SQLite's
    synchronous level and the device label (see :class:`~collector.store.sqlite.base.SqliteBase`)."""
