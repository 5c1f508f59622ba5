"""The shared store's schema: numbered migrations, applied under an advisory lock so that instances
starting together migrate once. The same tables as the embedded store (collector/store/sqlite/schema.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from backhaul.wire.chunk import Codec
from collector.store import label_index, series_index

log = logging.getLogger(__name__)

# Any constant, as long as every instance uses the same one.
MIGRATION_LOCK = 0x6261636B


IndexRows = Callable[[int, str, bytes, Codec], Sequence[tuple[Any, ...]]]


async def _backfill(conn: asyncpg.Connection, into: str, rows: IndexRows) -> None:
    """Index every stored table: ``rows(table id, device, data as stored, codec)`` inserted ``into``
    the index table (``name (columns)``), in the migration's transaction (as the embedded store's)."""
    codec = Codec()
    marks = ", ".join(f"${k + 1}" for k in range(len(into[into.index("(") + 1 : -1].split(","))))
    async for row in conn.cursor("SELECT id, device, data FROM chunk_tables"):
        found = rows(row["id"], row["device"], bytes(row["data"]), codec)
        await conn.executemany(f"INSERT INTO {into} VALUES ({marks})", found)


async def _index_tables(conn: asyncpg.Connection) -> None:
    """Hash the series of the tables stored before the series index existed (migration 9)."""
    await _backfill(conn, "table_series (table_id, hash)", series_index.backfill_rows)


async def _index_labels(conn: asyncpg.Connection) -> None:
    """Index the label pairs of the tables stored before the label index existed (migration 11)."""
    await _backfill(
        conn, "table_labels (name, value, table_id)", lambda i, _, data, c: label_index.backfill_rows(i, data, c)
    )


_MIGRATIONS: list[str | Callable[[asyncpg.Connection], Awaitable[None]]] = [
    """
    CREATE TABLE series (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, labels TEXT NOT NULL UNIQUE);
    CREATE INDEX series_by_name ON series (name);
    CREATE TABLE samples (series_id BIGINT NOT NULL, ts BIGINT NOT NULL, bits BIGINT NOT NULL,
        PRIMARY KEY (series_id, ts));
    CREATE TABLE batches (device TEXT NOT NULL, buffer_id TEXT NOT NULL, seq BIGINT NOT NULL,
        received_ms BIGINT NOT NULL, samples BIGINT NOT NULL, PRIMARY KEY (device, buffer_id, seq));
    CREATE TABLE buffers (device TEXT NOT NULL, buffer_id TEXT NOT NULL,
        evicted_samples BIGINT NOT NULL, expired_samples BIGINT NOT NULL, dropped_samples BIGINT NOT NULL,
        corrupt_samples BIGINT NOT NULL, PRIMARY KEY (device, buffer_id));
    CREATE TABLE devices (device TEXT PRIMARY KEY, last_seen_ms BIGINT NOT NULL DEFAULT 0,
        samples BIGINT NOT NULL DEFAULT 0, batches BIGINT NOT NULL DEFAULT 0,
        duplicate_samples BIGINT NOT NULL DEFAULT 0, evicted_samples BIGINT NOT NULL DEFAULT 0,
        expired_samples BIGINT NOT NULL DEFAULT 0, dropped_samples BIGINT NOT NULL DEFAULT 0,
        agent_version TEXT NOT NULL DEFAULT '', corrupt_samples BIGINT NOT NULL DEFAULT 0,
        duplicate_batches BIGINT NOT NULL DEFAULT 0, backlog_bytes BIGINT NOT NULL DEFAULT 0,
        backlog_oldest_ms BIGINT NOT NULL DEFAULT 0);
    CREATE TABLE registry (device TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE,
        created_ms BIGINT NOT NULL, rotated_ms BIGINT NOT NULL DEFAULT 0,
        revoked_ms BIGINT NOT NULL DEFAULT 0, source TEXT NOT NULL DEFAULT 'cli');
    """,
    # Alerts, as in the embedded store's migration 4 (see collector/store/sqlite/alerts.py).
    """
    CREATE TABLE alert_messages (device TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL,
        fingerprint BIGINT NOT NULL, rule TEXT NOT NULL, state TEXT NOT NULL, severity TEXT NOT NULL,
        value DOUBLE PRECISION, summary TEXT NOT NULL, received_ms BIGINT NOT NULL, via TEXT NOT NULL,
        PRIMARY KEY (device, seq, ts_ms));
    CREATE TABLE alerts (device TEXT NOT NULL, fingerprint BIGINT NOT NULL, rule TEXT NOT NULL,
        state TEXT NOT NULL, severity TEXT NOT NULL, value DOUBLE PRECISION, summary TEXT NOT NULL,
        starts_ms BIGINT NOT NULL, ends_ms BIGINT, updated_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL,
        seq BIGINT NOT NULL, PRIMARY KEY (device, fingerprint));
    """,
    # Series tables agents refer to by digest, as in the embedded store's migration 6.
    """
    CREATE TABLE series_tables (device TEXT NOT NULL, digest TEXT NOT NULL, data BYTEA NOT NULL,
        stored_ms BIGINT NOT NULL, PRIMARY KEY (device, digest));
    """,
    # Chunks instead of a row per sample, as in the embedded store's migration 7; the rows of series
    # and samples are converted at open (collector/store/postgres/legacy.py), which drops them.
    """
    CREATE TABLE chunk_tables (id BIGSERIAL PRIMARY KEY, device TEXT NOT NULL, digest TEXT NOT NULL,
        data BYTEA NOT NULL, n_series INTEGER NOT NULL, min_ts BIGINT NOT NULL, max_ts BIGINT NOT NULL,
        chunks BIGINT NOT NULL DEFAULT 0, samples BIGINT NOT NULL DEFAULT 0, bytes BIGINT NOT NULL DEFAULT 0,
        UNIQUE (device, digest));
    CREATE TABLE table_names (name TEXT NOT NULL, table_id BIGINT NOT NULL, PRIMARY KEY (name, table_id));
    CREATE INDEX table_names_by_table ON table_names (table_id);
    CREATE TABLE chunks (id BIGSERIAL PRIMARY KEY, device TEXT NOT NULL, table_id BIGINT NOT NULL,
        min_ts BIGINT NOT NULL, max_ts BIGINT NOT NULL, samples INTEGER NOT NULL, stored INTEGER NOT NULL,
        max_per_series INTEGER NOT NULL, bytes INTEGER NOT NULL, received_ms BIGINT NOT NULL);
    CREATE INDEX chunks_by_device ON chunks (device, max_ts);
    CREATE INDEX chunks_by_table ON chunks (table_id, max_ts);
    CREATE INDEX chunks_by_time ON chunks (max_ts);
    CREATE TABLE chunk_data (id BIGINT PRIMARY KEY, data BYTEA NOT NULL);
    ALTER TABLE chunk_data ALTER COLUMN data SET STORAGE EXTERNAL;
    CREATE TABLE fleet_samples (name TEXT NOT NULL, device TEXT NOT NULL, labels TEXT NOT NULL,
        ts BIGINT NOT NULL, bits BIGINT NOT NULL, PRIMARY KEY (name, device, labels, ts));
    CREATE INDEX batches_by_time ON batches (received_ms);
    """,
    # Samples an agent corrected (its clock was wrong), as in the embedded store's migration 8.
    """
    ALTER TABLE buffers ADD COLUMN corrected_samples BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN corrected_samples BIGINT NOT NULL DEFAULT 0;
    """,
    # Five-minute rows per device for the fleet page's charts, as the embedded store's migration 9.
    """
    CREATE TABLE device_history (device TEXT NOT NULL, bucket_ms BIGINT NOT NULL, bytes BIGINT NOT NULL,
        samples BIGINT NOT NULL, batches BIGINT NOT NULL, backlog_bytes BIGINT NOT NULL, lag_ms BIGINT,
        clock_offset_ms BIGINT, link TEXT NOT NULL DEFAULT '', PRIMARY KEY (device, bucket_ms));
    """,
    # The agent's link as its last batch reported it, as in the embedded store's migration 10.
    """
    ALTER TABLE devices ADD COLUMN uplink TEXT NOT NULL DEFAULT '';
    """,
    # Which tables share a series (collector/store/series_index.py), as in the embedded store's
    # migration 11: the table, then the tables stored before hashed in the same transaction.
    """
    CREATE TABLE table_series (table_id BIGINT NOT NULL, hash BIGINT NOT NULL, PRIMARY KEY (table_id, hash));
    CREATE INDEX table_series_by_hash ON table_series (hash);
    """,
    _index_tables,
    # Which tables hold a label pair (collector/store/label_index.py), as in the embedded store's
    # migration 12: the table, then the tables stored before indexed in the same transaction.
    """
    CREATE TABLE table_labels (name TEXT NOT NULL, value TEXT NOT NULL, table_id BIGINT NOT NULL,
        PRIMARY KEY (name, value, table_id));
    CREATE INDEX table_labels_by_table ON table_labels (table_id);
    """,
    _index_labels,
]


async def migrate(conn: asyncpg.Connection) -> None:
    """Bring the database to the newest schema, in the caller's transaction."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
    await conn.execute("CREATE TABLE IF NOT EXISTS backhaul_schema (version INTEGER NOT NULL)")
    version = await conn.fetchval("SELECT max(version) FROM backhaul_schema") or 0
    for number, step in enumerate(_MIGRATIONS[version:], start=version + 1):
        if isinstance(step, str):
            await conn.execute(step)
        else:
            await step(conn)
        await conn.execute("INSERT INTO backhaul_schema (version) VALUES ($1)", number)
        log.info("postgres store: schema migrated to version %d", number)
