"""A real PostgreSQL server (Debian's postgresql 15) for the fleet tests, started once per session.

PostgreSQL refuses to run as root, so under root its data folder belongs to the ``postgres`` user and
initdb/postgres run as that user (setpriv execs in place, so the process we signal is postgres itself).
Each test gets a database of its own.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from backhaul.labels import LabelRules
from collector.store import Store
from collector.store.postgres import PostgresStore
from collector.store.sqlite import SqliteStore
from collector.store.tables import TableInfo
from tests.support import free_port, require_program

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PgServer:
    def __init__(self, root: Path, port: int, as_user: list[str]) -> None:
        self.root = root
        self.port = port
        self.as_user = as_user
        self.popen: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=60, cwd=self.root)

    def start(self) -> None:
        data = self.root / "data"
        self.run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        with (self.root / "postgres.log").open("ab") as log:
            self.popen = subprocess.Popen(
                [
                    *self.as_user,
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.root}",
                    # Durability of the test database itself is not under test; speed on a shared machine is.
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"postgres exited:\n{(self.root / 'postgres.log').read_text()}")
            ready = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("postgres did not become ready in 30 s")

    def new_database(self) -> str:
        name = f"test_{next(self._names)}"
        self.run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.dsn(name)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, then exit
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    require_program(str(PG_BIN / "postgres"))
    # Not under pytest's tmp folder: that one is private to root, and postgres must reach its folder.
    root = Path(tempfile.mkdtemp(prefix="backhaul-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
        as_user = ["setpriv", f"--reuid={pg.pw_uid}", f"--regid={pg.pw_gid}", "--clear-groups", "--"]
    server = PgServer(root, free_port(), as_user)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """Each store back end in turn: (back end, its file or a fresh database's DSN)."""
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("pg_dsn")
    return "sqlite", str(tmp_path / "c.db")


@asynccontextmanager
async def opened(where: tuple[str, str]) -> AsyncIterator[Store]:
    """The store, opened afresh (a restarted collector: nothing cached), closed at the end."""
    backend, at = where
    store: Store = PostgresStore(at, pool_size=2) if backend == "postgres" else SqliteStore(Path(at), "NORMAL")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(where: tuple[str, str]) -> AsyncIterator[Store]:
    """Each back end's store, open on an empty database (tests that both back ends must pass)."""
    async with opened(where) as s:
        yield s


async def rewind(where: tuple[str, str], tables: list[str]) -> None:
    """Take the store back to before its last migrations, each of which made one of ``tables``
    (newest first): the tables dropped and the schema version set back, so that they run again at
    the next open (an upgrade from an older collector)."""
    backend, at = where
    if backend == "postgres":
        conn = await asyncpg.connect(at)
        try:
            version = await conn.fetchval("SELECT max(version) FROM backhaul_schema")
            for table in tables:
                await conn.execute(f"DROP TABLE {table}")
            # a migration that fills its table is a step of its own after the one that makes it
            await conn.execute("DELETE FROM backhaul_schema WHERE version > $1", version - 2 * len(tables))
        finally:
            await conn.close()
        return
    db = sqlite3.connect(at, isolation_level=None)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for table in tables:
            db.execute(f"DROP TABLE {table}")
        db.execute(f"PRAGMA user_version = {version - len(tables)}")
    finally:
        db.close()


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[frozenset[str]]:
    """The metric names of every series table parsed from now on."""
    names: list[frozenset[str]] = []
    real = TableInfo.parse

    def counting(data: bytes, digest: str | None = None, rules: LabelRules | None = None) -> TableInfo:
        found = real(data, digest, rules)
        names.append(found.names)
        return found

    monkeypatch.setattr(TableInfo, "parse", staticmethod(counting))
    return names
