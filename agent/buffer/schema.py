"""The buffer database's schema, as explicit numbered migrations (tracked in PRAGMA user_version).

Inspect a buffer with the sqlite-utils CLI, e.g. ``sqlite-utils tables buffer.db --counts`` or
``sqlite-utils query buffer.db "select id, samples, bytes, batch_seq from chunks join claims on chunk_id = id"``.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import TYPE_CHECKING

from backhaul import sqlite

if TYPE_CHECKING:  # imported by backhaul.sqlite.migrate, only when a migration runs
    import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": int}, pk="key")  # counters and the sequence
    db.table("meta_text").create({"key": str, "value": str}, pk="key")  # buffer id
    db.table("chunks").create(
        {
            "id": int,
            "created_ms": int,  # agent wall clock when written
            "min_ts": int,  # oldest sample timestamp (ms) inside
            "max_ts": int,
            "samples": int,
            "series": int,
            "bytes": int,  # len(data): the unit of the byte budget
            "batch_seq": int,  # NULL until claimed by a batch; then never evicted
            "data": bytes,  # a zstd-compressed chunk (backhaul.wire.chunk)
        },
        pk="id",
    )
    db.table("chunks").create_index(["batch_seq"])
    db.table("batches").create({"seq": int, "sealed_ms": int, "samples": int}, pk="seq")
    db.table("meta_text").insert({"key": "buffer_id", "value": uuid.uuid4().hex})
    db.table("meta").insert_all(
        {"key": k, "value": 0}
        for k in (
            "next_seq",
            "evicted_samples",
            "expired_samples",
            "dropped_samples",
            "rejected_samples",
            "reported_loss",
        )
    )


MIGRATIONS: list[sqlite.Migration] = [_v1]


# Since v6 a chunk's batch is a row of ``claims``, never a column of the chunk: claiming must not
# rewrite the chunk's record (and its overflow pages). The queries of agent/buffer say which chunks
# they mean with these.
UNCLAIMED = "id NOT IN (SELECT chunk_id FROM claims)"
IN_BATCH = "id IN (SELECT chunk_id FROM claims WHERE batch_seq = ?)"


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database to the newest schema, one transaction per migration."""
    sqlite.migrate(conn, MIGRATIONS)


def _v2(db: sqlite_utils.Database) -> None:
    # Chunks that failed to decode are kept here (out of the budget's way) for a person to inspect.
    db.table("quarantine").create(
        {"id": int, "chunk_id": int, "quarantined_ms": int, "reason": str, "samples": int, "data": bytes},
        pk="id",
    )
    db.table("meta").insert_all({"key": k, "value": 0} for k in ("corrupt_samples", "corrupt_chunks"))


MIGRATIONS.append(_v2)


def _v3_clock(db: sqlite_utils.Database) -> None:
    # Issue 14, "clocks that lie": appended after what main has (v3 when written; metered's and
    # footprint's migrations, not on main yet, come before or after it as the lead merges).
    # A chunk may be held: ``hold`` names what it waits for (0: nothing, it may be sent). The clock
    # keeper uses the id of the clock era whose offset its timestamps wait for (agent/clock/).
    db.execute("ALTER TABLE chunks ADD COLUMN hold INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX chunks_held ON chunks (hold) WHERE hold != 0")
    # The clock's eras (between two jumps, within one boot) and what is known of each, and every
    # jump seen: the history survives restarts (see agent/clock/journal.py for the columns).
    db.execute(
        "CREATE TABLE clock_eras (id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL,"
        " start_boot_ms INTEGER NOT NULL, end_boot_ms INTEGER NOT NULL,"
        " start_wall_ms INTEGER NOT NULL, end_wall_ms INTEGER NOT NULL, jump_in_ms INTEGER,"
        " below_floor INTEGER NOT NULL, state TEXT NOT NULL, offset_ms INTEGER NOT NULL,"
        " estimate_ms REAL, low_ms REAL, high_ms REAL, source TEXT NOT NULL, changed_ms INTEGER NOT NULL)"
    )
    db.execute(
        "CREATE TABLE clock_jumps (id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL, boot_ms INTEGER NOT NULL,"
        " from_era INTEGER NOT NULL, to_era INTEGER NOT NULL, wall_before_ms INTEGER NOT NULL,"
        " wall_after_ms INTEGER NOT NULL, jump_ms INTEGER NOT NULL, while_stopped INTEGER NOT NULL)"
    )
    # Samples whose timestamps were corrected, ever (reported in every batch header).
    db.table("meta").insert({"key": "corrected_samples", "value": 0})


MIGRATIONS.append(_v3_clock)


def _v4(db: sqlite_utils.Database) -> None:
    # Issue 13, metered links (v3 when written, appended after the clock's v3 at the merge).
    # Bytes each link spent per budget period (docs/uplink.md), written with the ack of the batch that
    # spent them, so that no restart, crash or power cut hands a spent budget back. ``key`` names the
    # period by its start date (yyyymmdd); a later key replaces an earlier one.
    db.execute(
        "CREATE TABLE link_usage (link TEXT NOT NULL, period TEXT NOT NULL, key INTEGER NOT NULL,"
        " bytes INTEGER NOT NULL, PRIMARY KEY (link, period)) WITHOUT ROWID"
    )
    # Summary batches (uplink.when_short = "summarise"): a reduced copy of unsent chunks, sealed under
    # its own sequence number and re-sent unchanged until acknowledged, while the chunks stay unsent.
    db.execute("ALTER TABLE batches ADD COLUMN summary_ms INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE TABLE summaries (seq INTEGER PRIMARY KEY, samples INTEGER NOT NULL, min_ts INTEGER NOT NULL,"
        " max_ts INTEGER NOT NULL, data BLOB NOT NULL)"
    )
    # The sample timestamps (ms) summaries cover so far: [summary_lo_ms, summary_hi_ms).
    db.table("meta").insert_all({"key": k, "value": 0} for k in ("summary_lo_ms", "summary_hi_ms"))


MIGRATIONS.append(_v4)


def _v5_footprint(db: sqlite_utils.Database) -> None:
    # Issue 16, flash writes: the index on batch_seq held an entry for every unclaimed chunk too, so
    # each append wrote one index page more (5 WAL frames instead of 4 for a scrape's chunk). Only
    # claimed chunks are looked up by their batch; the unclaimed are found in id order on the table.
    db.execute('DROP INDEX "idx_chunks_batch_seq"')
    db.execute("CREATE INDEX chunks_claimed ON chunks (batch_seq) WHERE batch_seq IS NOT NULL")


MIGRATIONS.append(_v5_footprint)


def _v6_claims(db: sqlite_utils.Database) -> None:
    # Issue 16, flash writes: ``UPDATE chunks SET batch_seq`` grew each claimed chunk's record, so
    # SQLite wrote all of it again (a 60 s chunk: 15 WAL frames for a claim instead of ~4). Batch
    # membership moves to a table of its own; ``chunks.batch_seq`` stays, always NULL, so that the
    # upgrade rewrites only the chunks in flight, not the buffer.
    db.execute("CREATE TABLE claims (chunk_id INTEGER PRIMARY KEY, batch_seq INTEGER NOT NULL)")
    db.execute("INSERT INTO claims SELECT id, batch_seq FROM chunks WHERE batch_seq IS NOT NULL")
    db.execute("UPDATE chunks SET batch_seq = NULL WHERE batch_seq IS NOT NULL")
    db.execute("DROP INDEX chunks_claimed")
    # However a chunk leaves (ack, reject, expiry, eviction), its claim goes with it.
    db.execute(
        "CREATE TRIGGER chunks_unclaim AFTER DELETE ON chunks BEGIN DELETE FROM claims WHERE chunk_id = OLD.id; END"
    )


MIGRATIONS.append(_v6_claims)
