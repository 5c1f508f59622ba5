"""Opening a buffer that may be damaged: check it, salvage what is healthy, move the rest aside.

A buffer exists so that data survives; refusing to start over a damaged file would lose everything
that arrives afterwards, and throwing the file away would lose its healthy part. So:

1. ``PRAGMA quick_check`` at every start (a damaged page, a WAL whose frames do not fit, ...): the
   SQLite kit (:class:`backhaul.sqlite.Database`) runs it and calls :func:`salvage` on a problem.
2. On a problem, every chunk that can still be read *and decoded* is copied into a new database file;
   chunks that cannot are counted (their samples too, where their row still says how many), and
   those whose bytes could be read are kept in the new file's ``quarantine`` table.
3. The damaged file (with its -wal and -shm) is moved aside as ``<name>.corrupt-<time>`` and the new
   file takes its place. The new file has a new buffer id, so its batch sequence starts afresh without
   any risk of colliding with batches the collector already holds from the old one.

A file SQLite cannot open at all (not a database) is moved aside whole; its contents are unknown.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.buffer import schema
from backhaul.sqlite import Synchronous, connect, move_aside, sync_directory
from backhaul.wire import WireError
from backhaul.wire.chunk import Codec

log = logging.getLogger(__name__)

# A chunk that decodes to more than this is not one we wrote.
MAX_CHUNK_BYTES = 1 << 30


@dataclass
class Recovery:
    """What opening a damaged buffer did."""

    problem: str
    moved_aside: list[Path] = field(default_factory=list)
    salvaged_chunks: int = 0
    salvaged_samples: int = 0
    lost_chunks: int = 0
    lost_samples: int = 0  # where the damaged chunk's row still said how many


def salvage(path: Path, synchronous: Synchronous, codec: Codec, problem: str) -> Recovery:
    """Copy the healthy chunks of the damaged buffer at ``path`` into a new file that replaces it."""
    result = Recovery(problem=problem)
    target = Path(f"{path}.salvage")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    new = connect(target, synchronous)
    try:
        schema.migrate(new)
        try:
            old = sqlite3.connect(path)
            try:
                _copy_chunks(old, new, codec, result)
                _copy_clock_history(old, new)
            finally:
                old.close()
        except sqlite3.DatabaseError as exc:
            log.error("buffer %s cannot be read at all (%s)", path, exc)
        new.execute("BEGIN")
        for key, value in (("corrupt_samples", result.lost_samples), ("corrupt_chunks", result.lost_chunks)):
            new.execute("UPDATE meta SET value = value + ? WHERE key = ?", (value, key))
        new.execute("COMMIT")
        new.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        new.close()
    result.moved_aside = move_aside(path)
    os.replace(target, path)
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    sync_directory(path.parent)  # the swap must not be undone by a power cut
    log.error(
        "buffer %s was damaged (%s): salvaged %d chunks (%d samples), lost %d chunks (%d samples known); "
        "damaged file moved to %s",
        path,
        problem,
        result.salvaged_chunks,
        result.salvaged_samples,
        result.lost_chunks,
        result.lost_samples,
        [str(p) for p in result.moved_aside],
    )
    return result


def _chunk_ids(old: sqlite3.Connection) -> list[int]:
    """Every chunk id that can be found, even when parts of the table's b-tree are damaged."""
    try:
        return [r[0] for r in old.execute("SELECT id FROM chunks ORDER BY id")]
    except sqlite3.DatabaseError:
        pass
    ids: list[int] = []
    try:
        (top,) = old.execute("SELECT max(id) FROM chunks").fetchone()
    except sqlite3.DatabaseError:
        return ids
    candidate = 0
    while top is not None and candidate < top:
        try:
            row = old.execute("SELECT id FROM chunks WHERE id > ? ORDER BY id LIMIT 1", (candidate,)).fetchone()
        except sqlite3.DatabaseError:
            candidate += 1  # step over the damaged stretch one id at a time
            continue
        if row is None:
            break
        ids.append(row[0])
        candidate = row[0]
    return ids


def _samples_of(old: sqlite3.Connection, chunk_id: int) -> int:
    try:
        row = old.execute("SELECT samples FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
    except sqlite3.DatabaseError:
        return 0
    return int(row[0]) if row and isinstance(row[0], int) else 0


def _copy_clock_history(old: sqlite3.Connection, new: sqlite3.Connection) -> None:
    """The clock's eras and jumps, as far as they can be read: a held chunk keeps the era it waits for
    (one whose era is gone is expired by the clock keeper, counted)."""
    for table in ("clock_eras", "clock_jumps"):
        try:
            rows = old.execute(f"SELECT * FROM {table}").fetchall()
        except sqlite3.DatabaseError:
            continue
        if rows:
            marks = ",".join("?" * len(rows[0]))
            new.execute("BEGIN")
            new.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", rows)
            new.execute("COMMIT")


def _hold_of(old: sqlite3.Connection, chunk_id: int) -> int:
    try:
        row = old.execute("SELECT hold FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
    except sqlite3.DatabaseError:  # a file from before holds, or a damaged row
        return 0
    return int(row[0]) if row and isinstance(row[0], int) else 0


def _copy_chunks(old: sqlite3.Connection, new: sqlite3.Connection, codec: Codec, result: Recovery) -> None:
    now_ms = int(time.time() * 1000)
    new.execute("BEGIN")
    for chunk_id in _chunk_ids(old):
        try:
            row = old.execute(
                "SELECT created_ms, min_ts, max_ts, samples, series, bytes, data FROM chunks WHERE id = ?",
                (chunk_id,),
            ).fetchone()
        except sqlite3.DatabaseError:
            # The blob's overflow pages are damaged; the row's leading columns may still say how many.
            result.lost_chunks += 1
            result.lost_samples += _samples_of(old, chunk_id)
            continue
        if row is None:
            continue
        created, lo, hi, samples, series, size, data = row
        try:
            decoded = codec.decode(data, MAX_CHUNK_BYTES)
            if sum(len(ts) for ts, _ in decoded.values()) != samples:
                raise WireError("sample count differs from the chunk's row")
        except (WireError, TypeError) as exc:
            result.lost_chunks += 1
            result.lost_samples += samples if isinstance(samples, int) else 0
            new.execute(
                "INSERT INTO quarantine (chunk_id, quarantined_ms, reason, samples, data) VALUES (?, ?, ?, ?, ?)",
                (chunk_id, now_ms, str(exc), samples, data if isinstance(data, bytes) else None),
            )
            continue
        new.execute(
            "INSERT INTO chunks (id, created_ms, min_ts, max_ts, samples, series, bytes, batch_seq, data, hold)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
            (chunk_id, created, lo, hi, samples, series, size, data, _hold_of(old, chunk_id)),
        )
        result.salvaged_chunks += 1
        result.salvaged_samples += samples
    new.execute("COMMIT")
