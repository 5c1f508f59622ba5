"""The embedded store: one SQLite file with series, samples, batches seen, devices, the device
registry and alerts, behind the async :class:`collector.store.Store` interface.

One class per concern, sharing :class:`~collector.store.sqlite.base.SqliteBase` (the file, its
thread, the caches); the PostgreSQL back end (:mod:`collector.store.postgres`) has the same shape.
"""

from __future__ import annotations

from collector.store.sqlite.alerts import SqliteAlerts
from collector.store.sqlite.history import SqliteHistory
from collector.store.sqlite.registry import SqliteRegistry
from collector.store.sqlite.samples import SqliteSamples

__all__ = ["SqliteStore"]


class SqliteStore(SqliteSamples, SqliteRegistry, SqliteAlerts, SqliteHistory):
    """The embedded store. Args: path of the database file (created when missing) and SQLite's
    synchronous level (see :class:`~collector.store.sqlite.base.SqliteBase`)."""
