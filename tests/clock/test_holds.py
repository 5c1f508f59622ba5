"""Held chunks in the buffer (agent/buffer/holds.py): durable and within the budget, but never
claimed, compacted or expired by their timestamps until released, shifted or dropped (counted)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.buffer.metrics import BufferMetrics
from agent.buffer.staging import Staging
from agent.buffer.store import BufferStore
from backhaul.wire.series import SeriesMap

NOW = 1_780_000_000_000
DAY = 86_400_000


def samples(ts: int, n: int = 50, name: str = "m") -> SeriesMap:
    return {(("__name__", name), ("i", str(i))): ([ts, ts + 1000], [float(i), float(i + 1)]) for i in range(n)}


@pytest.fixture
def store(tmp_path: Path):
    s = BufferStore(tmp_path / "buffer.db", 64 * 1024 * 1024, "FULL", target_samples=1000)
    s.open()
    yield s
    s.close()


def stamps_of(store: BufferStore) -> set[int]:
    out: set[int] = set()
    for (blob,) in store.conn.execute("SELECT data FROM chunks"):
        for ts, _ in store.codec.decode(blob, 1 << 30).values():
            out.update(ts)
    return out


def test_held_chunks_are_not_claimed_compacted_or_expired(store: BufferStore):
    store.append(samples(NOW - DAY), 0, NOW, hold=7)
    store.append(samples(NOW - DAY + 5000), 0, NOW, hold=7)
    store.append(samples(NOW, name="ready"), 0, NOW)
    assert store.held() == {7: 200}
    assert store.totals.samples == 300
    assert store.compact(NOW) == 0  # two small held chunks, not merged
    assert store.expire(NOW - 1000).expired == 0  # their stamps are a day old, but held
    batch = store.claim(1 << 20, NOW, report_losses=False)
    assert batch is not None and batch.samples == 100  # only the ready chunk
    store.ack(batch.seq, 0)
    assert store.claim(1 << 20, NOW, report_losses=False) is None


def test_shifting_a_hold_moves_every_timestamp_merges_and_counts_them(store: BufferStore):
    for k in range(30):
        store.append(samples(NOW - DAY + k * 2000, n=20), 0, NOW, hold=3)
    done = store.shift_hold(3, DAY, NOW, max_chunks=16)
    assert done == 16 * 40
    while step := store.shift_hold(3, DAY, NOW, max_chunks=16):
        done += step
    assert done == 30 * 40
    assert store.held() == {}
    assert stamps_of(store) == {NOW + k * 2000 + d for k in range(30) for d in (0, 1000)}
    assert store.counters()["corrected_samples"] == 1200
    (chunks,) = store.conn.execute("SELECT count(*) FROM chunks").fetchone()
    assert chunks <= 3  # merged into chunks of about target_samples
    assert store.totals.oldest_ts == NOW  # the stamps are true now
    batch = store.claim(1 << 20, NOW, report_losses=False)
    assert batch is not None and batch.samples == 1200


def test_released_holds_go_as_they_are_and_dropped_ones_count_as_expired(store: BufferStore):
    store.append(samples(NOW), 0, NOW, hold=1)
    store.append(samples(86_400_000), 0, NOW, hold=2)
    assert store.release_hold(1) == 100
    assert store.counters()["corrected_samples"] == 0
    assert store.drop_hold(2) == 100
    assert store.counters()["expired_samples"] == 100
    assert store.held() == {}
    assert stamps_of(store) == {NOW, NOW + 1000}


def test_dropping_by_age_takes_only_chunks_older_than_the_cutoff(store: BufferStore):
    store.append(samples(1000), 0, NOW, hold=4)
    store.append(samples(500_000), 0, NOW, hold=4)
    assert store.drop_hold(4, before_ts=400_000) == 100
    assert store.held() == {4: 100}


def test_held_chunks_count_towards_the_budget_and_are_evicted_oldest_first(tmp_path: Path):
    store = BufferStore(tmp_path / "small.db", 1024 * 1024, "FULL")
    store.open()
    try:
        rng = random.Random(1)
        noisy = {(("__name__", "n"), ("i", str(i))): ([NOW], [rng.random()]) for i in range(5000)}
        for k in range(40):
            store.append({labels: ([NOW - DAY + k], v) for labels, (_, v) in noisy.items()}, 0, NOW, hold=9)
        assert store.totals.bytes <= 1024 * 1024
        assert store.evicted_samples > 0
        assert store.counters()["evicted_samples"] == store.evicted_samples
        assert sum(store.held().values()) + store.evicted_samples == 40 * 5000
    finally:
        store.close()


async def test_staging_commits_held_parts_with_the_rest_in_one_group(tmp_path: Path):
    async with BufferStore(tmp_path / "s.db", 64 * 1024 * 1024, "FULL") as store:
        staging = Staging(store, BufferMetrics(CollectorRegistry()), 0.01, 100_000)
        task = asyncio.create_task(staging.run())
        try:
            await asyncio.gather(
                staging.submit(samples(NOW, name="a"), 200, 0, {5: samples(NOW - DAY, name="h")}),
                staging.submit(samples(NOW, name="b"), 100, 1),
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert await store.call(store.held) == {5: 100}
        assert store.totals.samples == 300
        assert (await store.call(store.counters))["dropped_samples"] == 1
