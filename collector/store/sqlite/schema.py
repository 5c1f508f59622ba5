"""The embedded store's schema: numbered migrations, applied in order by :mod:`backhaul.sqlite`.

A migration, once released, never changes: a new column or table is a new step at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlite_utils

from backhaul.sqlite import Migration
from backhaul.wire.chunk import Codec
from collector.store import label_index, series_index


def _v1(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE series (id INTEGER PRIMARY KEY, name TEXT NOT NULL, labels TEXT NOT NULL UNIQUE)")
    db.execute(
        "CREATE TABLE samples (series_id INTEGER NOT NULL, ts INTEGER NOT NULL, bits INTEGER NOT NULL,"
        " PRIMARY KEY (series_id, ts)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE batches (device TEXT NOT NULL, buffer_id TEXT NOT NULL, seq INTEGER NOT NULL,"
        " received_ms INTEGER NOT NULL, samples INTEGER NOT NULL, PRIMARY KEY (device, buffer_id, seq))"
        " WITHOUT ROWID"
    )
    db.table("devices").create(
        {
            "device": str,
            "last_seen_ms": int,
            "samples": int,
            "batches": int,
            "duplicate_samples": int,
            "evicted_samples": int,
            "expired_samples": int,
            "dropped_samples": int,
            "agent_version": str,
        },
        pk="device",
    )
    db.execute("CREATE INDEX series_by_name ON series (name)")


def _v2(db: sqlite_utils.Database) -> None:
    # Loss counters are cumulative per agent buffer; a device that re-created its buffer (after
    # corruption) starts a new set, so a device's total is the sum over its buffers.
    db.execute(
        "CREATE TABLE buffers (device TEXT NOT NULL, buffer_id TEXT NOT NULL, evicted_samples INTEGER NOT NULL,"
        " expired_samples INTEGER NOT NULL, dropped_samples INTEGER NOT NULL, corrupt_samples INTEGER NOT NULL,"
        " PRIMARY KEY (device, buffer_id)) WITHOUT ROWID"
    )
    db.execute("ALTER TABLE devices ADD COLUMN corrupt_samples INTEGER NOT NULL DEFAULT 0")


def _v3(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE devices ADD COLUMN duplicate_batches INTEGER NOT NULL DEFAULT 0")


def _v4(db: sqlite_utils.Database) -> None:
    # Alert messages (each (device, seq, ts_ms) once, so a re-sent message is recognised) and the
    # latest state of each alert instance (device, fingerprint). See collector/store/sqlite/alerts.py.
    db.execute(
        "CREATE TABLE alert_messages (device TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,"
        " fingerprint INTEGER NOT NULL, rule TEXT NOT NULL, state TEXT NOT NULL, severity TEXT NOT NULL,"
        " value REAL, summary TEXT NOT NULL, received_ms INTEGER NOT NULL, via TEXT NOT NULL,"
        " PRIMARY KEY (device, seq, ts_ms)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE alerts (device TEXT NOT NULL, fingerprint INTEGER NOT NULL, rule TEXT NOT NULL,"
        " state TEXT NOT NULL, severity TEXT NOT NULL, value REAL, summary TEXT NOT NULL,"
        " starts_ms INTEGER NOT NULL, ends_ms INTEGER, updated_ms INTEGER NOT NULL,"
        " received_ms INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (device, fingerprint)) WITHOUT ROWID"
    )


def _v5(db: sqlite_utils.Database) -> None:
    # The agent's reported backlog, for the fleet page; and the device registry, shared by every
    # process that opens this file (the collector and the `devices` CLI).
    db.execute("ALTER TABLE devices ADD COLUMN backlog_bytes INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE devices ADD COLUMN backlog_oldest_ms INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE TABLE registry (device TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE,"
        " created_ms INTEGER NOT NULL, rotated_ms INTEGER NOT NULL DEFAULT 0,"
        " revoked_ms INTEGER NOT NULL DEFAULT 0, source TEXT NOT NULL DEFAULT 'cli')"
    )


def _v6(db: sqlite_utils.Database) -> None:
    # Series tables agents may refer to by digest instead of sending them again (docs/wire-format.md).
    db.execute(
        "CREATE TABLE series_tables (device TEXT NOT NULL, digest TEXT NOT NULL, data BLOB NOT NULL,"
        " stored_ms INTEGER NOT NULL, PRIMARY KEY (device, digest)) WITHOUT ROWID"
    )


def _v7(db: sqlite_utils.Database) -> None:
    # Chunks instead of a row per sample (collector/store/chunks.py): the index (chunks), the chunks
    # themselves (chunk_data, apart so that index scans never read a blob), the series tables they
    # refer to (chunk_tables, zstd JSON, with the totals retention needs) and which metric names each
    # table holds (table_names); the samples the fleet page reads (fleet_samples). The rows of series
    # and samples are converted by collector/store/sqlite/legacy.py at open (it needs the device
    # label), which then drops those two tables.
    db.execute(
        "CREATE TABLE chunk_tables (id INTEGER PRIMARY KEY, device TEXT NOT NULL, digest TEXT NOT NULL,"
        " data BLOB NOT NULL, n_series INTEGER NOT NULL, min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL,"
        " chunks INTEGER NOT NULL DEFAULT 0, samples INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,"
        " UNIQUE (device, digest))"
    )
    db.execute(
        "CREATE TABLE table_names (name TEXT NOT NULL, table_id INTEGER NOT NULL, PRIMARY KEY (name, table_id))"
        " WITHOUT ROWID"
    )
    db.execute("CREATE INDEX table_names_by_table ON table_names (table_id)")
    db.execute(
        "CREATE TABLE chunks (id INTEGER PRIMARY KEY, device TEXT NOT NULL, table_id INTEGER NOT NULL,"
        " min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL, samples INTEGER NOT NULL, stored INTEGER NOT NULL,"
        " max_per_series INTEGER NOT NULL, bytes INTEGER NOT NULL, received_ms INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX chunks_by_device ON chunks (device, max_ts)")
    db.execute("CREATE INDEX chunks_by_table ON chunks (table_id, max_ts)")
    db.execute("CREATE INDEX chunks_by_time ON chunks (max_ts)")
    db.execute("CREATE TABLE chunk_data (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    db.execute(
        "CREATE TABLE fleet_samples (name TEXT NOT NULL, device TEXT NOT NULL, labels TEXT NOT NULL,"
        " ts INTEGER NOT NULL, bits INTEGER NOT NULL, PRIMARY KEY (name, device, labels, ts)) WITHOUT ROWID"
    )
    # retention removes batch records by age
    db.execute("CREATE INDEX batches_by_time ON batches (received_ms)")


def _v8(db: sqlite_utils.Database) -> None:
    # Issue 14 ("clocks that lie"): samples an agent
    # corrected because its clock was wrong, cumulative per buffer like the losses, summed per device.
    db.execute("ALTER TABLE buffers ADD COLUMN corrected_samples INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE devices ADD COLUMN corrected_samples INTEGER NOT NULL DEFAULT 0")


def _v9(db: sqlite_utils.Database) -> None:
    # Five-minute rows per device for the fleet page's charts (collector/store/history.py).
    db.execute(
        "CREATE TABLE device_history (device TEXT NOT NULL, bucket_ms INTEGER NOT NULL, bytes INTEGER NOT NULL,"
        " samples INTEGER NOT NULL, batches INTEGER NOT NULL, backlog_bytes INTEGER NOT NULL, lag_ms INTEGER,"
        " clock_offset_ms INTEGER, link TEXT NOT NULL DEFAULT '', PRIMARY KEY (device, bucket_ms)) WITHOUT ROWID"
    )


def _v10(db: sqlite_utils.Database) -> None:
    # Issue 13 (metered links): the agent's link as its last batch reported it
    # (budgets, bytes spent, windows, why uploads were held), JSON, for the fleet page (docs/uplink.md).
    db.execute("ALTER TABLE devices ADD COLUMN uplink TEXT NOT NULL DEFAULT ''")


def _v11(db: sqlite_utils.Database) -> None:
    # Which tables share a series (collector/store/series_index.py): a hash per series, once per
    # table, so the duplicate check finds the stored tables worth comparing without parsing any.
    # Tables stored before are hashed now, in this migration's transaction.
    db.execute(
        "CREATE TABLE table_series (table_id INTEGER NOT NULL, hash INTEGER NOT NULL, PRIMARY KEY (table_id, hash))"
        " WITHOUT ROWID"
    )
    db.execute("CREATE INDEX table_series_by_hash ON table_series (hash)")
    codec = Codec()
    _backfill(db, "table_series (table_id, hash)", lambda i, d, data: series_index.backfill_rows(i, d, data, codec))


def _v12(db: sqlite_utils.Database) -> None:
    # Which tables hold a label pair (collector/store/label_index.py), so that an export whose
    # selector names no metric reads only the tables that may match. Tables stored before are
    # indexed now, in this migration's transaction.
    db.execute(
        "CREATE TABLE table_labels (name TEXT NOT NULL, value TEXT NOT NULL, table_id INTEGER NOT NULL,"
        " PRIMARY KEY (name, value, table_id)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX table_labels_by_table ON table_labels (table_id)")
    codec = Codec()
    _backfill(db, "table_labels (name, value, table_id)", lambda i, _, data: label_index.backfill_rows(i, data, codec))


def _backfill(
    db: sqlite_utils.Database, into: str, rows: Callable[[int, str, bytes], Sequence[tuple[Any, ...]]]
) -> None:
    """Index every stored table: ``rows(table id, device, data as stored)`` inserted ``into`` the
    index table (``name (columns)``), in the migration's transaction."""
    conn = db.conn
    marks = ", ".join("?" for _ in into[into.index("(") + 1 : -1].split(","))
    for table_id, device, data in conn.execute("SELECT id, device, data FROM chunk_tables"):
        conn.executemany(f"INSERT INTO {into} VALUES ({marks})", rows(table_id, device, bytes(data)))


MIGRATIONS: list[Migration] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10, _v11, _v12]
