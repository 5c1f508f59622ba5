"""The buffer's side of the drain policy: newest-first claims, chunks split at the fresh window or to
fit a budget, and summary batches that leave the full data in place."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.buffer.store import BufferStore
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap

T0 = 1_800_000_000_000
INTERVAL = 5000


def scrape(k: int, n: int = 50, rng: random.Random | None = None) -> SeriesMap:
    r = rng or random.Random(k)
    return {(("__name__", "m"), ("i", str(i))): ([T0 + INTERVAL * k], [r.random()]) for i in range(n)}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BufferStore]:
    s = BufferStore(tmp_path / "b.db", 256 << 20, "NORMAL", target_samples=10_000)
    await s.call(s.open)
    yield s
    await s.call(s.close)
    await s.db.aclose()


def stamps(blobs: list[bytes]) -> list[int]:
    codec = Codec()
    return sorted({t for blob in blobs for ts, _ in codec.decode(blob, 1 << 30).values() for t in ts})


async def drain(store: BufferStore, **claim: object) -> list[list[int]]:
    """Claim and acknowledge batch after batch; the timestamps each held."""
    out = []
    limit = int(claim.pop("max_bytes", 1 << 22))  # type: ignore[call-overload]
    while (batch := await store.call(store.claim, limit, T0, False, **claim)) is not None:  # type: ignore[arg-type]
        out.append(stamps(batch.chunks))
        await store.call(store.ack, batch.seq, 0)
    return out


async def test_newest_first_sends_live_data_first_then_the_backlog_newest_to_oldest(store: BufferStore) -> None:
    for k in range(60):
        await store.call(store.append, scrape(k), 0, T0)
    await store.call(store.compact, T0)  # as the agent's maintenance does during an outage
    batches = await drain(store, max_bytes=6000, newest_first=True)
    assert len(batches) > 3
    firsts = [b[-1] for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # each batch older than the one before
    assert batches[0][-1] == T0 + INTERVAL * 59
    assert sorted(t for b in batches for t in b) == [T0 + INTERVAL * k for k in range(60)]  # every sample once


async def test_the_fresh_window_splits_a_compacted_chunk(store: BufferStore) -> None:
    for k in range(120):
        await store.call(store.append, scrape(k), 0, T0)
    await store.call(store.compact, T0)
    assert store.totals.chunks <= 2
    since = T0 + INTERVAL * 114  # the last 30 s
    batch = await store.call(store.claim, 1 << 22, T0, False, True, since)
    assert batch is not None and stamps(batch.chunks) == [T0 + INTERVAL * k for k in range(114, 120)]
    await store.call(store.ack, batch.seq, 0)
    assert store.totals.samples == 114 * 50  # the rest stays, unsent


async def test_strict_claims_fit_what_the_budget_has_left(store: BufferStore) -> None:
    for k in range(120):
        await store.call(store.append, scrape(k), 0, T0)
    await store.call(store.compact, T0)
    batch = await store.call(store.claim, 5000, T0, False, False, None, True)
    assert batch is not None and sum(map(len, batch.chunks)) <= 5000
    assert stamps(batch.chunks)[0] == T0  # oldest first: the oldest part of the chunk
    await store.call(store.ack, batch.seq, 0)
    nothing = await store.call(store.claim, 100, T0, False, True, None, True)
    assert nothing is None  # no part that small can be cut


async def test_summaries_take_the_last_real_sample_per_interval_and_leave_the_data(store: BufferStore) -> None:
    for k in range(72):  # 6 minutes of 5 s scrapes
        await store.call(store.append, scrape(k), 0, T0)
    interval = 60_000
    now = T0 + INTERVAL * 72
    summaries = []
    while (batch := await store.call(store.summarise, interval, now)) is not None:
        assert batch.summary_ms == interval
        summaries.append(batch)
        await store.call(store.ack, batch.seq, 0)
    assert store.totals.samples == 72 * 50  # nothing claimed
    got = stamps([c for b in summaries for c in b.chunks])
    # the last scrape of every complete minute (T0 is a multiple of the interval)
    assert got == [T0 + INTERVAL * (12 * m + 11) for m in range(6)]
    assert all(b.samples == 50 for b in summaries) or sum(b.samples for b in summaries) == 6 * 50
    # new data: only its complete minutes are summarised, and nothing twice
    for k in range(72, 96):
        await store.call(store.append, scrape(k), 0, T0)
    batch = await store.call(store.summarise, interval, T0 + INTERVAL * 96)
    assert batch is not None and stamps(batch.chunks) == [T0 + INTERVAL * (12 * m + 11) for m in (6, 7)]
    await store.call(store.ack, batch.seq, 0)
    assert await store.call(store.summarise, interval, T0 + INTERVAL * 96) is None
    # the full data goes later, whole
    batches = await drain(store, newest_first=True)
    assert sorted(t for b in batches for t in b) == [T0 + INTERVAL * k for k in range(96)]


async def test_a_sealed_summary_is_resent_unchanged_after_a_restart(tmp_path: Path) -> None:
    s = BufferStore(tmp_path / "b.db", 64 << 20, "FULL")
    await s.call(s.open)
    for k in range(24):
        await s.call(s.append, scrape(k), 0, T0)
    first = await s.call(s.summarise, 60_000, T0 + INTERVAL * 24)
    await s.call(s.close)
    await s.db.aclose()
    s = BufferStore(tmp_path / "b.db", 64 << 20, "FULL")
    await s.call(s.open)
    try:
        again = await s.call(s.claim, 1 << 22, T0, False, True)
        assert first is not None and again is not None
        assert (again.seq, again.chunks, again.summary_ms) == (first.seq, first.chunks, 60_000)
    finally:
        await s.call(s.close)
        await s.db.aclose()
