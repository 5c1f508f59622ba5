"""The shared store: PostgreSQL through asyncpg, for several collector instances behind one address.

The same tables and rules as the embedded store, made safe across processes, in the same shape
(one class per concern on a shared base); asyncpg's errors become StoreError in one place
(:mod:`collector.store.postgres.base`).
"""

from __future__ import annotations

from collector.store.postgres.alerts import PostgresAlerts
from collector.store.postgres.legacy import PostgresLegacy
from collector.store.postgres.reading import PostgresReading
from collector.store.postgres.registry import PostgresRegistry
from collector.store.postgres.retention import PostgresRetention

__all__ = ["PostgresStore"]


class PostgresStore(PostgresLegacy, PostgresReading, PostgresRetention, PostgresRegistry, PostgresAlerts):
    """The shared store. Args: dsn, pool_size and device_label (see
    :class:`~collector.store.postgres.base.PostgresBase`)."""
