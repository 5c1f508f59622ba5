"""A target's durable queue: one SQLite file of what the target has not acknowledged yet.

An entry is what one device sent in one request, kept as it arrived, so enqueueing costs one insert
and no re-encoding on the ingest path; the sender converts it to remote-write requests when it sends.
Its ``kind`` says what ``body`` holds:

- ``chunks``: a batch's chunk frames back to back (each with its series table in it), their sizes in
  ``sizes``; the device is the entry's ``device``, so no batch envelope is built for the spool;
- ``remote_write``: a plain remote-write body;
- ``batch``: a whole batch body, as spools before version 2 kept batches (still read, never written).

``done`` counts the requests of an entry the target already acknowledged, so a restart resumes inside
a large entry instead of at its start.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

import sqlite_utils

from backhaul.errors import WireError
from backhaul.sqlite import Database, Synchronous
from backhaul.wire import batch as batchfmt

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
Kind = Literal["chunks", "remote_write", "batch"]


@dataclass(frozen=True)
class Chunks:
    """A device's batch as its chunk frames (compressed, each with its series table in it)."""

    frames: list[bytes]


@dataclass(frozen=True)
class RemoteWrite:
    """A plain remote-write body, as a device sent it."""

    body: bytes


Payload = Chunks | RemoteWrite
# What the ingest endpoints call to queue what a device sent, before the store commits it
# (:meth:`collector.forward.remote_write.Forwarding.enqueue`): device, payload, samples.
Forward = Callable[[str, Payload, int], Awaitable[None]]


@dataclass
class Entry:
    id: int
    device: str
    kind: Kind
    body: bytes
    samples: int
    created_ms: int
    done: int
    sizes: str = ""  # kind "chunks": the frames' sizes, comma-separated

    def payload(self) -> Payload:
        """What the entry holds; raises WireError when it does not read (a damaged spool)."""
        if self.kind == "remote_write":
            return RemoteWrite(self.body)
        if self.kind == "batch":
            return Chunks(batchfmt.decode(self.body)[1])
        try:
            sizes = [int(n) for n in self.sizes.split(",")] if self.sizes else []
        except ValueError:
            sizes = [-1]
        if any(n <= 0 for n in sizes) or sum(sizes) != len(self.body):
            raise WireError(f"spool entry {self.id}: its chunk sizes do not match its {len(self.body)} bytes")
        frames: list[bytes] = []
        pos = 0
        for n in sizes:
            frames.append(self.body[pos : pos + n])
            pos += n
        return Chunks(frames)


@dataclass
class Totals:
    entries: int = 0
    bytes: int = 0
    samples: int = 0
    oldest_ms: int | None = None


def _v1(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, kind TEXT NOT NULL,"
        " body BLOB NOT NULL, bytes INTEGER NOT NULL, samples INTEGER NOT NULL, created_ms INTEGER NOT NULL,"
        " done INTEGER NOT NULL DEFAULT 0)"
    )


def _v2(db: sqlite_utils.Database) -> None:
    # Batches are kept as chunk frames from now on ("chunks"); entries of kind "batch" stay readable.
    db.execute("ALTER TABLE entries ADD COLUMN sizes TEXT NOT NULL DEFAULT ''")


MIGRATIONS = [_v1, _v2]


class Spool:
    """Owns one spool file and its connection (used on the spool's own thread only).

    Args:
        path: database file, created with its folder when missing.
        synchronous: SQLite synchronous level; FULL keeps an enqueued entry across a power cut.
        max_bytes: over this many body bytes the oldest entries are dropped (the caller counts them).
    """

    def __init__(self, path: Path, synchronous: Synchronous, max_bytes: int) -> None:
        self.path = path
        self.synchronous: Synchronous = synchronous
        self.max_bytes = max_bytes
        self.db = Database(path, synchronous, MIGRATIONS, f"spool-{path.stem}")
        self.db.on_rollback(self._recount)
        self.totals = Totals()

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of the spool's methods on its database thread."""
        return await self.db.run(fn, *args, **kwargs)

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def open(self) -> None:
        self.db.open()
        self._recount()

    def close(self) -> None:
        self.db.close()

    def _recount(self) -> None:
        count, size, samples, oldest = self.conn.execute(
            "SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(samples), 0), min(created_ms) FROM entries"
        ).fetchone()
        self.totals = Totals(count, size, samples, oldest)

    def add(self, device: str, payload: Payload, samples: int, now_ms: int) -> int:
        """Enqueue one entry durably; returns the samples of old entries dropped to stay under ``max_bytes``."""
        if isinstance(payload, Chunks):
            kind, body, sizes = "chunks", b"".join(payload.frames), ",".join(str(len(f)) for f in payload.frames)
        else:
            kind, body, sizes = "remote_write", payload.body, ""
        conn = self.conn
        with self.db.atomic():
            cur = conn.execute(
                "INSERT INTO entries (device, kind, body, bytes, samples, created_ms, sizes)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device, kind, body, len(body), samples, now_ms, sizes),
            )
            doomed = self._over_budget(int(cur.lastrowid or 0), self.totals.bytes + len(body))
            conn.executemany("DELETE FROM entries WHERE id = ?", [(row[0],) for row in doomed])
        t = self.totals
        t.entries += 1 - len(doomed)
        t.bytes += len(body) - sum(row[1] for row in doomed)
        t.samples += samples - sum(row[2] for row in doomed)
        if doomed or t.oldest_ms is None:
            self._recount()
        return sum(row[2] for row in doomed)

    def _over_budget(self, newest: int, size: int) -> list[tuple[int, int, int]]:
        """The oldest entries to drop to get ``size`` under ``max_bytes``, never the one just added
        (the newest data is what a dashboard wants)."""
        doomed: list[tuple[int, int, int]] = []
        if size <= self.max_bytes:
            return doomed
        for entry_id, length, samples in self.conn.execute(
            "SELECT id, bytes, samples FROM entries WHERE id < ? ORDER BY id", (newest,)
        ):
            if size <= self.max_bytes:
                break
            doomed.append((entry_id, length, samples))
            size -= length
        return doomed

    def first(self) -> Entry | None:
        taken = self.take(0)
        return taken[0] if taken else None

    def take(self, max_samples: int, max_entries: int = 512) -> list[Entry]:
        """The oldest entries, in order: always the first, then more while they total at most ``max_samples``."""
        out: list[Entry] = []
        total = 0
        # Sizes first, bodies only of the entries taken.
        for entry_id, samples in self.conn.execute(
            "SELECT id, samples FROM entries ORDER BY id LIMIT ?", (max_entries,)
        ).fetchall():
            if out and total + samples > max_samples:
                break
            row = self.conn.execute(
                "SELECT id, device, kind, body, samples, created_ms, done, sizes FROM entries WHERE id = ?", (entry_id,)
            ).fetchone()
            out.append(Entry(*row))
            total += samples
        return out

    def progress(self, entry_id: int, done: int) -> None:
        self.conn.execute("UPDATE entries SET done = ? WHERE id = ?", (done, entry_id))

    def remove(self, *entries: Entry) -> None:
        """Delete sent entries, in one transaction."""
        gone: list[Entry] = []
        with self.db.atomic():
            for entry in entries:
                if self.conn.execute("DELETE FROM entries WHERE id = ?", (entry.id,)).rowcount:
                    gone.append(entry)  # (it may have been dropped for room meanwhile)
        t = self.totals
        t.entries -= len(gone)
        t.bytes -= sum(len(e.body) for e in gone)
        t.samples -= sum(e.samples for e in gone)
        row = self.conn.execute("SELECT created_ms FROM entries ORDER BY id LIMIT 1").fetchone()
        t.oldest_ms = None if row is None else row[0]
        if row is None and gone:
            # Drained (after an outage, perhaps of gigabytes): hand the free pages back to the filesystem.
            # executescript steps the pragma to completion (execute() would free one page).
            try:
                self.conn.executescript("PRAGMA incremental_vacuum;")
            except sqlite3.Error as exc:  # housekeeping only: the entries are gone either way
                log.warning("spool %s: could not release free pages: %s", self.path, exc)
