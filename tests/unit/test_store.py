import os
import random
import sqlite3
from pathlib import Path

import pytest

from agent.buffer.store import BufferStore
from backhaul.wire.series import Labels

NOW = 1_700_000_000_000


def scrape(k: int, n: int = 200, prefix: str = "m", noisy: bool = False):
    rng = random.Random(k)
    return {
        (("__name__", f"{prefix}{i}"), ("job", "node")): ([NOW + 5000 * k], [rng.random() if noisy else float(i * k)])
        for i in range(n)
    }


@pytest.fixture
def open_store(tmp_path: Path):
    stores = []

    def make(budget: int = 64 * 1024 * 1024, path: Path | None = None, **kw) -> BufferStore:
        store = BufferStore(path or tmp_path / "buffer.db", budget, "FULL", **kw)
        store.open()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def all_samples(store: BufferStore) -> dict[tuple[Labels, int], float]:
    out: dict[tuple[Labels, int], float] = {}
    for (blob,) in store.conn.execute("SELECT data FROM chunks ORDER BY id"):
        for labels, (ts, vals) in store.codec.decode(blob, 1 << 30).items():
            for t, v in zip(ts, vals, strict=True):
                out[(labels, t)] = v
    return out


def test_claim_seals_a_batch_and_ack_removes_it(open_store):
    store = open_store()
    for k in range(5):
        store.append(scrape(k), dropped=0, now_ms=NOW)
    before = all_samples(store)
    batch = store.claim(4 << 20, NOW, report_losses=False)
    assert batch is not None and batch.samples == 1000
    assert len(batch.chunks) == 1  # five small chunks merged into one at seal time
    assert all_samples(store) == before  # merging changed nothing but the layout
    store.ack(batch.seq, reported_loss=0)
    assert store.totals.samples == 0 and store.totals.chunks == 0
    assert store.claim(4 << 20, NOW, report_losses=False) is None


def test_a_sealed_batch_is_resent_identically_after_a_restart(open_store, tmp_path):
    store = open_store()
    for k in range(3):
        store.append(scrape(k), 0, NOW)
    first = store.claim(4 << 20, NOW, False)
    store.append(scrape(9), 0, NOW)  # newer data must not join the sealed batch
    store.close()
    reopened = open_store(path=tmp_path / "buffer.db")
    again = reopened.claim(4 << 20, NOW + 1000, False)
    assert (again.seq, again.chunks, again.samples) == (first.seq, first.chunks, first.samples)
    assert reopened.buffer_id == store.buffer_id
    reopened.ack(again.seq, 0)
    nxt = reopened.claim(4 << 20, NOW, False)
    assert nxt.seq == first.seq + 1 and nxt.samples == 200


def test_budget_evicts_oldest_first_counts_it_and_spares_the_batch_in_flight(open_store):
    store = open_store(budget=1024 * 1024)
    store.append(scrape(0, prefix="inflight"), 0, NOW)
    in_flight = store.claim(4 << 20, NOW, False)
    evicted = 0
    k = 1
    while evicted == 0 or k < 60:
        # random values barely compress, so the budget fills in a few dozen chunks
        evicted += store.append(scrape(k, n=2000, prefix=f"s{k}_", noisy=True), 0, NOW).evicted
        k += 1
    assert store.totals.bytes <= 1024 * 1024
    assert store.counters()["evicted_samples"] == evicted
    held = all_samples(store)
    assert store.totals.samples == len(held)
    # exact accounting: what was written = what is held + what was evicted
    assert 200 + 2000 * (k - 1) == len(held) + evicted
    # the oldest unclaimed data went first; the newest is still there
    assert any(labels[0][1].startswith(f"s{k - 1}_") for labels, _ in held)
    assert not any(labels[0][1].startswith("s1_") for labels, _ in held)
    # the in-flight batch was never touched
    assert store.claim(4 << 20, NOW, False).chunks == in_flight.chunks


def test_expiry_drops_old_data_and_counts_it(open_store):
    store = open_store()
    store.append(scrape(0), 0, NOW)
    store.append(scrape(1000), 0, NOW)  # 5000 s later
    losses = store.expire(cutoff_ms=NOW + 1)
    assert losses.expired == 200
    assert store.counters()["expired_samples"] == 200
    assert store.totals.samples == 200


def test_a_sealed_batch_expires_only_as_a_whole(open_store):
    store = open_store()
    store.append(scrape(0), 0, NOW)
    store.append(scrape(1000), 0, NOW)  # 5000 s later
    sealed = store.claim(4 << 20, NOW, False)  # both scrapes, merged into one chunk
    assert store.expire(cutoff_ms=NOW + 1).expired == 0  # part of it is still young
    assert store.claim(4 << 20, NOW, False).chunks == sealed.chunks
    assert store.expire(cutoff_ms=NOW + 5_000_001).expired == 400
    assert store.claim(4 << 20, NOW, False) is None
    assert store.totals.samples == 0


def test_compaction_merges_small_chunks_without_changing_data(open_store):
    store = open_store(target_samples=2000)
    for k in range(25):
        store.append(scrape(k), 0, NOW)
    before = all_samples(store)
    bytes_before = store.totals.bytes
    merged_away = store.compact(NOW)
    assert merged_away > 0
    assert store.totals.chunks < 25
    assert all_samples(store) == before
    assert store.totals.bytes < bytes_before


def test_release_and_reject(open_store):
    store = open_store()
    store.append(scrape(0), 0, NOW)
    batch = store.claim(4 << 20, NOW, False)
    store.release(batch.seq)
    again = store.claim(4 << 20, NOW, False)
    assert again.seq == batch.seq + 1 and again.chunks == batch.chunks
    assert store.reject(again.seq) == 200
    assert store.counters()["rejected_samples"] == 200
    assert store.totals.samples == 0


def test_losses_are_reported_once_in_an_empty_batch(open_store):
    store = open_store()
    store.append({}, dropped=7, now_ms=NOW)
    assert store.unsent_loss() == 7
    batch = store.claim(4 << 20, NOW, report_losses=True)
    assert batch.chunks == [] and batch.samples == 0
    store.ack(batch.seq, reported_loss=7)
    assert store.unsent_loss() == 0


def test_an_unreadable_file_is_moved_aside_and_a_new_buffer_starts(open_store, tmp_path):
    path = tmp_path / "buffer.db"
    path.write_bytes(b"this is not a database" * 100)
    store = open_store(path=path)
    assert store.totals.samples == 0
    moved = store.recovery.moved_aside
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not")
    store.append(scrape(0), 0, NOW)
    assert store.totals.samples == 200


def test_durable_across_connections_with_synchronous_full(open_store, tmp_path):
    store = open_store()
    store.append(scrape(0), 0, NOW)
    # another connection sees the committed chunk without any close/checkpoint
    other = sqlite3.connect(tmp_path / "buffer.db")
    assert other.execute("SELECT sum(samples) FROM chunks").fetchone()[0] == 200
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


def test_the_file_gives_space_back_after_a_backlog_drains(open_store, tmp_path):
    store = open_store(free_bytes_kept=64 * 1024)
    assert store.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    for k in range(20):
        store.append(scrape(k, n=5000, prefix=f"s{k}_", noisy=True), 0, NOW)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = (tmp_path / "buffer.db").stat().st_size
    assert full > 500_000
    while (batch := store.claim(1 << 20, NOW, False)) is not None:
        store.ack(batch.seq, 0)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    drained = (tmp_path / "buffer.db").stat().st_size
    assert drained < full / 2


def test_compaction_and_sealing_keep_histograms_and_metadata(open_store):
    from backhaul.wire.histogram import Histogram
    from backhaul.wire.metadata import Metadata

    store = open_store(target_samples=2000)
    h = Histogram(count=3, sum=0.75, schema=2, positive_spans=((-1, 2),), positive=(1, 1))
    latency = (("__name__", "latency_seconds"),)
    for k in range(6):
        meta = {"m0": Metadata("gauge", f"help {k}", "")}
        store.append(scrape(k, n=5), 0, NOW, histograms={latency: ([NOW + 5000 * k], [h])}, metadata=meta)
    store.append({}, 0, NOW, metadata={"latency_seconds": Metadata("histogram", "Latency.", "seconds")})
    assert store.totals.chunks == 7 and store.totals.samples == 36
    assert store.compact(NOW) == 6
    (blob,) = store.conn.execute("SELECT data FROM chunks").fetchone()
    held = store.codec.decode_contents(blob, 1 << 30)
    assert held.histograms == {latency: ([NOW + 5000 * k for k in range(6)], [h] * 6)}
    assert held.metadata == {
        "m0": Metadata("gauge", "help 5", ""),
        "latency_seconds": Metadata("histogram", "Latency.", "seconds"),
    }
    assert held.samples() == 36
    batch = store.claim(4 << 20, NOW, report_losses=False)
    assert batch is not None and batch.samples == 36


def test_the_free_space_floor_evicts_what_the_next_chunk_needs_not_the_whole_buffer(open_store, monkeypatch):
    # A filesystem that stays 20 KB below the floor: evicted pages stay in the file as free pages
    # (up to free_bytes_kept), so evicting gives the filesystem nothing back.
    floor = 1 << 30
    real = os.statvfs

    class Stat:
        f_frsize = 4096
        f_bavail = 2 * floor // 4096

    store = open_store(min_free_bytes=floor, free_bytes_kept=64 << 20)
    monkeypatch.setattr(os, "statvfs", lambda path: Stat())
    for k in range(50):
        store.append(scrape(k, noisy=True), dropped=0, now_ms=NOW)
    Stat.f_bavail = (floor - 20_000) // 4096
    held_before = store.totals.samples
    evicted = sum(store.append(scrape(50 + k, noisy=True), dropped=0, now_ms=NOW).evicted for k in range(20))
    monkeypatch.setattr(os, "statvfs", real)
    # The first append makes the 20 KB of room; each later one reuses what its eviction freed.
    assert 0 < evicted <= 20 * 200 + 20_000 // 5, (evicted, held_before)
    assert store.totals.samples >= held_before - 20_000 // 5


def test_a_batch_sealed_before_the_claims_table_is_resent_identically_after_the_upgrade(open_store, tmp_path):
    """Buffer migration v6 moves batch membership out of the chunk rows (so that a claim does not
    rewrite the chunk): a batch in flight in a v5 file is re-sent byte for byte after the upgrade,
    the unclaimed chunks stay unclaimed, and the ack forgets exactly the batch."""
    path = tmp_path / "buffer.db"
    store = open_store(path=path)
    for k in range(3):
        store.append(scrape(k), 0, NOW)
    first = store.claim(4 << 20, NOW, False)
    store.append(scrape(9), 0, NOW)
    store.close()
    # The same file as schema v5 left it: the batch in chunks.batch_seq, no claims table.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE chunks SET batch_seq = (SELECT batch_seq FROM claims WHERE chunk_id = chunks.id)")
        conn.execute("DROP TRIGGER chunks_unclaim")
        conn.execute("DROP TABLE claims")
        conn.execute("CREATE INDEX chunks_claimed ON chunks (batch_seq) WHERE batch_seq IS NOT NULL")
        conn.execute("PRAGMA user_version = 5")
    conn.close()

    upgraded = open_store(path=path)
    assert upgraded.conn.execute("SELECT count(*) FROM chunks WHERE batch_seq IS NOT NULL").fetchone() == (0,)
    again = upgraded.claim(4 << 20, NOW + 1000, False)
    assert (again.seq, again.chunks, again.samples) == (first.seq, first.chunks, first.samples)
    upgraded.ack(again.seq, 0)
    assert upgraded.conn.execute("SELECT count(*) FROM claims").fetchone() == (0,)
    nxt = upgraded.claim(4 << 20, NOW, False)
    assert nxt.seq == first.seq + 1 and nxt.samples == 200


def test_a_claim_does_not_rewrite_the_chunks_it_seals(open_store):
    """The claim leaves each sealed chunk's row as it was (issue 16: rewriting a 30 KB chunk to mark
    it cost 15 WAL frames), and whatever deletes a chunk takes its claim with it."""
    store = open_store()
    store.append(scrape(0, n=2000, noisy=True), 0, NOW)  # one chunk with overflow pages
    (before,) = store.conn.execute("SELECT data FROM chunks").fetchone()
    pages_before = dict(
        store.conn.execute("SELECT pageno, sum(ncell) FROM dbstat WHERE name = 'chunks' GROUP BY pageno")
    )
    batch = store.claim(4 << 20, NOW, False)
    assert batch is not None and batch.chunks == [before]
    pages_after = dict(
        store.conn.execute("SELECT pageno, sum(ncell) FROM dbstat WHERE name = 'chunks' GROUP BY pageno")
    )
    assert pages_after == pages_before  # the record (and its overflow chain) stayed on its pages
    store.reject(batch.seq)
    assert store.conn.execute("SELECT count(*) FROM claims").fetchone() == (0,)
