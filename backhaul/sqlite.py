"""One SQLite connection owned by one thread, driven from asyncio.

SQLite calls block (fsync on commit can take tens of milliseconds on an SD card), and a blocked event
loop misses watchdog pings and HTTP requests. So each store hands its connection to a dedicated
single-thread executor: every statement runs there, in order, and the loop only awaits the result.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

import sqlite_utils

T = TypeVar("T")

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


class StoreError(Exception):
    """A storage operation failed; ``transient`` says whether retrying later can help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def translate(exc: sqlite3.Error) -> StoreError:
    """Map SQLite's errors once, here: full disk and locks are transient, the rest is not."""
    text = str(exc)
    transient = isinstance(exc, sqlite3.OperationalError) and (
        "full" in text or "locked" in text or "busy" in text or "disk I/O" in text
    )
    return StoreError(f"sqlite: {text}", transient=transient)


def connect(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    # First, so that no write below is synced at another level than the configured one.
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    if pages == 0:
        # A new file only (before WAL mode writes the header; on an existing file the pragma would
        # write a page at every open): lets PRAGMA incremental_vacuum hand pages back to the filesystem.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    # Keep the WAL from growing without bound between checkpoints.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    return conn


Migration = Callable[[sqlite_utils.Database], None]


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> None:
    """Bring a database to the newest of its numbered ``migrations`` (the count done is kept in PRAGMA
    user_version), one transaction per migration."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    db = sqlite_utils.Database(conn)
    for number, step in enumerate(migrations[version:], start=version + 1):
        with db.atomic():
            step(db)
            conn.execute(f"PRAGMA user_version = {number}")


def sync_directory(path: Path) -> None:
    """fsync a directory, so that renames and deletions in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Worker:
    """Runs callables on one dedicated thread, in submission order."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
