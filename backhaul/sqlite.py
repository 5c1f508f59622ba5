"""The SQLite kit every backhaul database stands on: the agent's buffer and alert queue, the
collector's store and its forward spools.

SQLite calls block (an fsync on commit can take tens of milliseconds on an SD card), and a blocked
event loop misses watchdog pings and HTTP requests. So a :class:`Database` owns one connection and one
thread of its own: every statement runs there, in order, and the loop only awaits the result
(``await db.run(fn, ...)``, typed with ``ParamSpec`` so mypy checks each call). Touching the connection
from a thread that runs an event loop raises at once, so no caller can block the loop by accident.
Programs without an event loop (the ``devices`` CLI, tests) may use the connection directly.

Opening runs ``PRAGMA quick_check``; a damaged file is handed to ``salvage`` (by default it is moved
aside with its ``-wal`` and ``-shm`` files, never deleted) and a new one is started, so a damaged
database is never a reason not to start. Then the registered migrations run (their count is kept in
``PRAGMA user_version``). :meth:`Database.atomic` and every call through :meth:`Database.run`
translate ``sqlite3.Error`` into :class:`~backhaul.errors.StoreError`; after any failed transaction,
whatever the exception, the rollback hooks run so that in-memory caches can be rebuilt from the file.
Closing is bounded by the caller's grace: a hung thread is abandoned (it is a daemon thread), never
waited for until systemd's SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from backhaul.call_thread import CallThread, finish
from backhaul.errors import StoreError

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger(__name__)

# How long a statement waits for a lock another connection holds (the writer and the reader alike).
BUSY_TIMEOUT_MS = 5000

P = ParamSpec("P")
T = TypeVar("T")

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
Migration = Callable[["sqlite_utils.Database"], None]
# Called on the database thread with the damaged file and what is wrong with it; it must leave no
# file at ``path`` that is still damaged. Returns the paths it moved aside.
Salvage = Callable[[Path, str], list[Path]]

# New database files are readable by their owner only, whatever the umask (SQLite gives the -wal and
# -shm files the main file's mode).
FILE_MODE = 0o600


def translate(exc: sqlite3.Error) -> StoreError:
    """Map SQLite's errors once, here: full disk, locks and I/O trouble are transient, the rest is not."""
    text = str(exc)
    transient = isinstance(exc, sqlite3.OperationalError) and (
        "full" in text or "locked" in text or "busy" in text or "disk I/O" in text
    )
    return StoreError(f"sqlite: {text}", transient=transient)


def connect(path: Path, synchronous: Synchronous, page_size: int | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, at the given sync level;
    ``page_size``: for a new file (an existing one keeps its own)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # First, so that no write below is synced at another level than the configured one.
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        if pages == 0:
            # A new file only (before WAL mode writes the header; on an existing file the pragma would
            # write a page at every open): lets PRAGMA incremental_vacuum hand pages back to the filesystem.
            if page_size is not None:
                conn.execute(f"PRAGMA page_size = {int(page_size)}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        # Debian's SQLite is built with SECURE_DELETE on: every freed page (a chunk's overflow pages,
        # once acknowledged) was zeroed, i.e. written once more. FAST zeroes deleted content only in
        # pages written anyway (issue 16: flash writes).
        conn.execute("PRAGMA secure_delete = FAST")
        # Keep the WAL from growing without bound between checkpoints.
        conn.execute("PRAGMA journal_size_limit = 67108864")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> None:
    """Bring a database to the newest of its numbered ``migrations`` (the count done is kept in PRAGMA
    user_version), one transaction per migration."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version >= len(migrations):
        return
    # Only here: with click, dateutil and pluggy it is 4 MB of a small device's memory (issue 16), and
    # a database already at its newest version never needs it.
    import sqlite_utils

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


def move_aside(path: Path, problem: str = "") -> list[Path]:
    """Move a damaged database and its -wal/-shm files to ``<name>.corrupt-<time>[-wal|-shm]``."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            dst = Path(f"{path}.corrupt-{stamp}{suffix}")
            os.replace(src, dst)
            moved.append(dst)
    if moved:
        sync_directory(path.parent)
    return moved


def check(conn: sqlite3.Connection) -> str | None:
    """None when the database is sound, else what SQLite found wrong."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    found = [r[0] for r in rows]
    return None if found == ["ok"] else "; ".join(found[:5])


class Database:
    """One SQLite file, its writing connection and the thread that uses it; an async context manager.

    Reads that need no write lock may go to a second connection on a thread of its own
    (:meth:`run_read`): in WAL mode a reader sees the last committed snapshot and never waits for the
    writer, so a long read (an export) does not queue behind ingest, nor ingest behind it.

    Args:
        path: the database file, created (mode 0600, with its folder) when missing.
        synchronous: SQLite's synchronous level (FULL keeps every commit across a power cut).
        migrations: the schema, as numbered steps applied in order.
        name: the thread's name (shows in tracebacks and ``py-spy``).
        salvage: what to do with a damaged file (default: :func:`move_aside`).
        page_size: SQLite's page size for a new file (None: SQLite's default, 4096).
    """

    def __init__(
        self,
        path: Path,
        synchronous: Synchronous,
        migrations: Sequence[Migration],
        name: str,
        salvage: Salvage = move_aside,
        page_size: int | None = None,
    ) -> None:
        self.path = path
        self.page_size = page_size
        self.synchronous: Synchronous = synchronous
        self.name = name
        self._migrations = migrations
        self._salvage = salvage
        self._conn: sqlite3.Connection | None = None
        self._thread: CallThread | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_thread: CallThread | None = None
        self._depth = 0
        self._rollback_hooks: list[Callable[[], None]] = []
        self._entered = False
        # What open() found: the problem of a damaged file (None when sound) and where it went.
        self.damage: str | None = None
        self.moved_aside: list[Path] = []

    # -- on the database thread (or in a program without an event loop) ----------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.name}: database is not open", transient=False)
        if asyncio._get_running_loop() is not None:
            raise RuntimeError(f"{self.name}: blocking SQLite call on the event loop; use `await db.run(...)`")
        return self._conn

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def open(self) -> None:
        """Open the file: check it, salvage a damaged one, migrate. Raises :class:`StoreError`."""
        if self._conn is not None:
            return
        try:
            conn = self._connect_checked()
            self._conn = conn
            migrate(conn, self._migrations)
        except sqlite3.Error as exc:
            self._drop_connection()
            raise translate(exc) from exc
        except BaseException:
            self._drop_connection()
            raise

    def _connect_checked(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(self.path, self.synchronous, self.page_size)
            problem = check(conn)
        except sqlite3.DatabaseError as exc:
            if translate(exc).transient:
                raise  # a full disk or a lock: nothing is wrong with the file itself
            problem = str(exc)
        if problem is None:
            assert conn is not None
            return conn
        if conn is not None:
            conn.close()
        self.damage = problem
        log.error("database %s is damaged (%s)", self.path, problem)
        self.moved_aside = self._salvage(self.path, problem)
        if self.moved_aside:
            log.error("damaged %s moved aside: %s", self.path.name, ", ".join(p.name for p in self.moved_aside))
        return connect(self.path, self.synchronous, self.page_size)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Checkpoint the WAL into the file and close (a failed checkpoint is only logged)."""
        self._close_reader()
        if self._conn is None:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("%s: checkpoint on close failed: %s", self.name, exc)
        self._drop_connection()

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` after any failed transaction (to rebuild what memory holds of the file)."""
        self._rollback_hooks.append(hook)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (a savepoint when nested): committed when the block ends, rolled back
        on any exception, after which the rollback hooks run; ``sqlite3.Error`` becomes StoreError."""
        conn = self.conn
        depth = self._depth
        try:
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT s{depth}")
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        self._depth = depth + 1
        try:
            yield conn
        except BaseException as exc:
            self._depth = depth
            self._undo(conn, depth)
            if isinstance(exc, sqlite3.Error):
                raise translate(exc) from exc
            raise
        self._depth = depth
        try:
            conn.execute("COMMIT" if depth == 0 else f"RELEASE s{depth}")
        except sqlite3.Error as exc:
            self._undo(conn, depth)
            raise translate(exc) from exc

    def _undo(self, conn: sqlite3.Connection, depth: int) -> None:
        try:
            if depth == 0:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO s{depth}")
                conn.execute(f"RELEASE s{depth}")
        except sqlite3.Error as exc:
            log.error("%s: rollback failed: %s", self.name, exc)
        if depth == 0:
            for hook in self._rollback_hooks:
                hook()

    def _reading_conn(self) -> sqlite3.Connection:
        """The reader's connection on the reader thread (opened on first use, ``query_only``), else the
        writer's."""
        thread = self._reader_thread
        if thread is None or not thread.is_current():
            return self.conn
        if self._reader is None:
            if self._conn is None:
                raise StoreError(f"{self.name}: database is not open", transient=False)
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            reader.execute("PRAGMA query_only = ON")
            self._reader = reader
        return self._reader

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(sqlite3.Error):
                reader.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Reads that see one snapshot of the file (on the reader thread, the reader's connection);
        ``sqlite3.Error`` becomes StoreError."""
        conn = self._reading_conn()
        nested = conn.in_transaction
        try:
            if not nested:
                conn.execute("BEGIN")
            yield conn
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        finally:
            if not nested and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("COMMIT")

    # -- from the event loop ----------------------------------------------------------------------

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the database thread; ``sqlite3.Error`` becomes StoreError."""
        if self._thread is None:
            self._thread = CallThread(self.name)
        return await _translated(self._thread, functools.partial(fn, *args, **kwargs))

    async def run_read(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the reader thread, where :meth:`read` uses the reader's connection: for reads
        only (a write there fails: the connection is ``query_only``)."""
        if self._reader_thread is None:
            self._reader_thread = CallThread(f"{self.name}-reader")
        return await _translated(self._reader_thread, functools.partial(fn, *args, **kwargs))

    async def __aenter__(self) -> Database:
        if self._entered:
            raise RuntimeError(f"{self.name}: a Database is entered once")
        self._entered = True
        try:
            await self.run(self.open)
        except BaseException:
            await self.aclose(5.0)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self, grace: float | None = None) -> None:
        """Close on the database thread and stop it, within ``grace`` seconds (None: no limit).

        Past the grace the thread is abandoned (logged): the process can still exit.
        """
        reader, self._reader_thread = self._reader_thread, None
        if reader is not None:
            await finish(reader, self._close_reader, grace, f"{self.name}: the reader thread")
        thread, self._thread = self._thread, None
        if thread is None:
            self.close()
            return
        await finish(thread, self.close, grace, f"{self.name}: the database thread")


async def _translated(thread: CallThread, call: Callable[[], T]) -> T:
    """``call`` on ``thread``; ``sqlite3.Error`` becomes StoreError."""

    def translating() -> T:
        try:
            return call()
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    return await asyncio.wrap_future(thread.submit(translating))
