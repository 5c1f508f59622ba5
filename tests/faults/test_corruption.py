"""Damaged buffer files: the agent always starts, keeps every healthy chunk, moves the damaged file
aside and counts what was lost. Damage is done to real SQLite files the way disks and crashes do it:
garbage pages, a truncated WAL, a zero-length file, a file that is not a database, a bad chunk."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from agent.buffer.store import BufferStore
from backhaul.wire.series import SeriesMap
from tests.support import exported_samples, metric_value, wait_until

pytestmark = [pytest.mark.faults]

NOW = int(time.time() * 1000) - 3_600_000  # recent: the agent would expire data older than max_age


def chunk_of(k: int, n: int = 2000) -> SeriesMap:
    """~16 KB compressed: random values barely compress, so each chunk spans several pages."""
    rng = random.Random(k)
    return {(("__name__", f"m{i}"), ("k", str(k))): ([NOW + k * 1000], [rng.random()]) for i in range(n)}


def build(path: Path, chunks: int) -> int:
    store = BufferStore(path, 1 << 30, "FULL")
    store.open()
    for k in range(chunks):
        store.append(chunk_of(k), 0, NOW)
    store.close()  # checkpoints: everything in the main file
    return chunks * 2000


def reopen(path: Path) -> BufferStore:
    store = BufferStore(path, 1 << 30, "FULL")
    store.open()
    return store


def readable_samples(store: BufferStore) -> int:
    total = 0
    for (blob,) in store.conn.execute("SELECT data FROM chunks"):
        total += sum(len(ts) for ts, _ in store.codec.decode(blob, 1 << 30).values())
    return total


def test_garbage_pages_lose_only_the_damaged_chunks(tmp_path):
    path = tmp_path / "buffer.db"
    total = build(path, 40)
    page = 4096
    size = path.stat().st_size
    with path.open("r+b") as f:  # three pages of garbage in the middle of the file
        f.seek((size // page // 2) * page)
        f.write(os.urandom(3 * page))
    store = reopen(path)
    try:
        r = store.recovery
        assert r is not None, "the damage went unnoticed"
        assert r.lost_chunks >= 1
        assert r.salvaged_samples + r.lost_samples == total, "every sample is either kept or counted"
        assert r.salvaged_samples >= total - 4 * 2000  # only chunks on the damaged pages are gone
        assert readable_samples(store) == r.salvaged_samples
        assert store.counters()["corrupt_samples"] == r.lost_samples
        assert any(".corrupt-" in p.name for p in r.moved_aside)
        # and the buffer works: new data goes in, a batch comes out
        store.append(chunk_of(99), 0, NOW)
        batch = store.claim(64 << 20, NOW, False)
        assert batch is not None
        assert batch.samples == r.salvaged_samples + 2000
    finally:
        store.close()


def test_truncated_wal_keeps_what_was_checkpointed_and_starts(tmp_path):
    path = tmp_path / "buffer.db"
    build(path, 10)  # checkpointed
    store = reopen(path)
    for k in range(10, 20):
        store.append(chunk_of(k), 0, NOW)
    # The files as a crash leaves them: ten more chunks live only in the WAL.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(f"{path}{suffix}", f"{crashed / 'buffer.db'}{suffix}")
    store.close()
    wal = crashed / "buffer.db-wal"
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size // 2)
    store = reopen(crashed / "buffer.db")
    try:
        held = readable_samples(store)
        assert 10 * 2000 <= held < 20 * 2000  # the checkpointed part whole, the WAL's complete commits
        assert held % 2000 == 0  # no half chunk: a transaction is all or nothing
        store.append(chunk_of(50), 0, NOW)
    finally:
        store.close()


def test_zero_length_file_is_an_empty_buffer(tmp_path):
    path = tmp_path / "buffer.db"
    path.touch()
    store = reopen(path)
    try:
        assert store.recovery is None and store.totals.samples == 0
        store.append(chunk_of(1), 0, NOW)
        assert store.totals.samples == 2000
    finally:
        store.close()


def test_a_chunk_that_does_not_decode_is_quarantined_and_counted(tmp_path):
    path = tmp_path / "buffer.db"
    store = reopen(path)
    try:
        for k in range(5):
            store.append(chunk_of(k, n=100), 0, NOW)
        (bad_id,) = store.conn.execute("SELECT id FROM chunks ORDER BY id LIMIT 1 OFFSET 2").fetchone()
        store.conn.execute("UPDATE chunks SET data = zeroblob(64) WHERE id = ?", (bad_id,))
        batch = store.claim(64 << 20, NOW, False)  # merging the small chunks finds the bad one
        assert batch is not None
        assert batch.samples == 400
        assert store.counters()["corrupt_samples"] == 100
        (kept,) = store.conn.execute("SELECT count(*) FROM quarantine WHERE chunk_id = ?", (bad_id,)).fetchone()
        assert kept == 1
    finally:
        store.close()


@pytest.mark.integration
def test_agent_starts_on_a_damaged_buffer_and_delivers_the_healthy_part(tmp_path, start_collector, start_agent):
    path = tmp_path / "agent.db"  # where start_agent puts the buffer
    total = build(path, 30)
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(8192))
    collector = start_collector()
    start_agent(collector.url)
    got = wait_until(
        lambda: sum(len(p) for p in exported_samples(collector.url, '{__name__=~"m.*"}').values()) or None,
        20,
        "the salvaged samples at the collector",
    )
    lost = wait_until(
        lambda: metric_value(
            collector.url, "backhaul_collector_device_reported_lost_samples", 'cause="corrupt",device="dev-1"'
        ),
        20,
        "the corruption to be reported",
    )
    wait_until(
        lambda: sum(len(p) for p in exported_samples(collector.url, '{__name__=~"m.*"}').values()) + lost == total,
        20,
        "delivered + reported corrupt == what was buffered",
    )
    assert got > 0
    assert list(tmp_path.glob("agent.db.corrupt-*")), "the damaged file was not kept for inspection"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
