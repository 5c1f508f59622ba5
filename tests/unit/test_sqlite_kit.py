"""The SQLite kit every database stands on (issue 11: reads leaked raw sqlite3 errors; a hung
database thread outlived the shutdown grace; a damaged file was handled twice, differently)."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
import sqlite_utils

from agent.alerts.queue import AlertQueue
from agent.buffer.store import BufferStore
from backhaul.errors import StoreError
from backhaul.sqlite import Database, move_aside
from collector.forward.spool import Spool


def _table(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")


def damage_table(path: Path, table: str) -> None:
    """What a damaged table looks like to the code: every statement on it fails."""
    conn = sqlite3.connect(path)
    conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()


async def test_reads_and_writes_raise_store_error_not_sqlite3(tmp_path: Path) -> None:
    async with Database(tmp_path / "k.db", "NORMAL", [_table], "kit") as db:

        def read() -> list[tuple[int, str]]:
            return db.conn.execute("SELECT k, v FROM missing").fetchall()

        with pytest.raises(StoreError, match="no such table"):
            await db.run(read)

        def write() -> None:
            with db.atomic() as conn:
                conn.execute("INSERT INTO missing VALUES (1)")

        with pytest.raises(StoreError, match="no such table"):
            await db.run(write)


async def test_store_reads_of_a_damaged_table_raise_store_error(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "b.db", 64 << 20, "NORMAL")
    async with store:
        damage_table(store.path, "batches")
        with pytest.raises(StoreError):
            await store.call(store.claim, 1 << 20, 0, True)  # its first SELECT reads batches
        damage_table(store.path, "meta")
        with pytest.raises(StoreError):
            await store.call(store.counters)
        with pytest.raises(StoreError):
            await store.call(store.unsent_loss)

    queue = AlertQueue(tmp_path / "a.db", 10)
    await queue.call(queue.open)
    damage_table(queue.path, "queue")
    with pytest.raises(StoreError):
        await queue.call(queue.peek, 10)
    await queue.db.aclose()

    spool = Spool(tmp_path / "s.db", "NORMAL", 1 << 20)
    await spool.call(spool.open)
    damage_table(spool.path, "entries")
    with pytest.raises(StoreError):
        await spool.call(spool.take, 100)
    await spool.db.aclose()


async def test_a_blocking_call_on_the_event_loop_is_refused(tmp_path: Path) -> None:
    async with Database(tmp_path / "k.db", "NORMAL", [_table], "kit") as db:
        with pytest.raises(RuntimeError, match="event loop"):
            db.conn.execute("SELECT 1")
        assert await db.run(lambda: db.conn.execute("SELECT 1").fetchone()) == (1,)


async def test_a_failed_transaction_runs_the_rollback_hooks_whatever_the_exception(tmp_path: Path) -> None:
    rolled_back: list[str] = []
    async with Database(tmp_path / "k.db", "NORMAL", [_table], "kit") as db:
        db.on_rollback(lambda: rolled_back.append("yes"))

        def overflow() -> None:
            with db.atomic() as conn:
                conn.execute("INSERT INTO t VALUES (1, 'a')")
                conn.execute("INSERT INTO t VALUES (?, 'b')", (2**63,))  # OverflowError, not sqlite3.Error

        with pytest.raises(OverflowError):
            await db.run(overflow)
        assert rolled_back == ["yes"]
        assert await db.run(lambda: db.conn.execute("SELECT count(*) FROM t").fetchone()) == (0,)


async def test_close_is_bounded_by_the_grace_even_when_the_thread_hangs(tmp_path: Path) -> None:
    db = Database(tmp_path / "k.db", "NORMAL", [_table], "hung-db")
    await db.__aenter__()
    release = threading.Event()
    hung = asyncio.ensure_future(db.run(release.wait, 30))  # the thread is stuck in a call
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await db.aclose(0.5)
    assert time.monotonic() - started < 2
    thread = next(t for t in threading.enumerate() if t.name == "hung-db")
    assert thread.daemon  # an abandoned thread cannot keep the process from exiting
    release.set()
    await hung


async def test_a_damaged_file_is_moved_aside_with_its_wal_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    async with Database(path, "NORMAL", [_table], "kit") as db:
        await db.run(lambda: db.conn.execute("INSERT INTO t VALUES (1, 'a')"))
    path.write_bytes(b"this is not a database" * 100)
    async with Database(path, "NORMAL", [_table], "kit") as db:
        assert db.damage is not None
        (aside,) = db.moved_aside
        assert aside.name.startswith("k.db.corrupt-") and aside.read_bytes() == b"this is not a database" * 100
        assert await db.run(lambda: db.conn.execute("SELECT count(*) FROM t").fetchone()) == (0,)


def test_moving_aside_takes_the_wal_and_shm_along(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    for suffix, data in (("", b"main"), ("-wal", b"wal"), ("-shm", b"shm")):
        Path(f"{path}{suffix}").write_bytes(data)
    moved = move_aside(path)
    assert [p.read_bytes() for p in moved] == [b"main", b"wal", b"shm"]
    assert not any(Path(f"{path}{suffix}").exists() for suffix in ("", "-wal", "-shm"))


async def test_new_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        async with Database(tmp_path / "k.db", "NORMAL", [_table], "kit"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.db").stat().st_mode) == 0o600


async def test_reads_on_the_reader_thread_do_not_wait_for_a_write_transaction(tmp_path: Path) -> None:
    # Issue 12 (fuzz run): exports queued behind ingest on the one database thread and took up to
    # 17 s; the reader's own connection sees the last commit while a write transaction is open.
    async with Database(tmp_path / "k.db", "FULL", [_table], "kit") as db:

        def insert(k: int) -> None:
            with db.atomic() as conn:
                conn.execute("INSERT INTO t VALUES (?, 'x')", (k,))

        await db.run(insert, 1)
        holding, release = threading.Event(), threading.Event()

        def long_write() -> None:
            with db.atomic() as conn:
                conn.execute("INSERT INTO t VALUES (2, 'y')")
                holding.set()
                release.wait(10)

        def keys() -> list[int]:
            with db.read() as conn:
                return [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")]

        writing = asyncio.ensure_future(db.run(long_write))
        await asyncio.to_thread(holding.wait, 10)
        try:
            assert await asyncio.wait_for(db.run_read(keys), 2) == [1]  # the snapshot before the open write
        finally:
            release.set()
        await writing
        assert await db.run_read(keys) == [1, 2]

        def write_on_reader() -> None:
            with db.read() as conn:
                conn.execute("INSERT INTO t VALUES (3, 'z')")

        with pytest.raises(StoreError, match="readonly"):
            await db.run_read(write_on_reader)
