"""Staging's deferred passes (``buffer.source_commit_interval``), on a real buffer file: they wait
for their interval or ride with the next pushed group, in one chunk, and while they wait the passes
of one series share one label tuple instead of each holding its own."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.buffer.metrics import BufferMetrics
from agent.buffer.staging import Staging
from agent.buffer.store import BufferStore
from backhaul.wire.series import SeriesMap

NOW = 1_780_000_000_000


def scrape(k: int, n: int) -> SeriesMap:
    """A pass with freshly built labels, as a parser builds them for every scrape."""
    return {
        (("__name__", f"node_metric_{i}"), ("instance", "127.0.0.1:9100"), ("job", "node")): (
            [NOW + 5000 * k],
            [float(i + k)],
        )
        for i in range(n)
    }


@contextlib.asynccontextmanager
async def running(tmp_path: Path, defer_for: float) -> AsyncIterator[tuple[BufferStore, Staging]]:
    """A buffer and its staging, with staging's commit loop running."""
    async with BufferStore(tmp_path / "b.db", 64 << 20, "FULL") as store:
        staging = Staging(store, BufferMetrics(CollectorRegistry()), 0.001, 1_000_000, defer_for=defer_for)
        task = asyncio.create_task(staging.run())
        try:
            yield store, staging
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_deferred_passes_ride_with_a_push_as_one_chunk(tmp_path: Path) -> None:
    async with running(tmp_path, 600) as (store, staging):
        passes = [staging.defer(scrape(k, 50), 50, 0) for k in range(3)]
        await asyncio.sleep(0.05)
        assert store.totals.samples == 0 and not any(p.done() for p in passes)  # waiting for 600 s
        await staging.submit({(("__name__", "pushed"),): ([NOW], [1.0])}, 1, 0)
        assert all(p.done() and p.exception() is None for p in passes)
        assert store.totals.samples == 151 and store.totals.chunks == 1


async def test_deferred_passes_commit_on_their_own_after_the_interval(tmp_path: Path) -> None:
    async with running(tmp_path, 0.2) as (store, staging):
        first = staging.defer(scrape(0, 10), 10, 0)
        second = staging.defer(scrape(1, 10), 15, 0, held={7: scrape(2, 5)})  # samples count the held too
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert store.totals.samples == 25 and store.totals.chunks == 2  # the held part is a chunk of its own
        assert await store.call(store.held) == {7: 5}


async def test_waiting_passes_share_their_labels(tmp_path: Path) -> None:
    async with BufferStore(tmp_path / "b.db", 64 << 20, "FULL") as store:
        staging = Staging(store, BufferMetrics(CollectorRegistry()), 0.001, 1_000_000, defer_for=600)
        n = 2000
        gc.collect()
        tracemalloc.start()
        try:
            staging.defer(scrape(0, n), n, 0)
            one_pass, _ = tracemalloc.get_traced_memory()
            for k in range(1, 12):
                staging.defer(scrape(k, n), n, 0)
            gc.collect()
            twelve, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Each later pass adds its values only (two list slots and two numbers a series, < 100 bytes),
        # not its own label tuples and strings (~400 bytes a series here).
        assert twelve - one_pass < 11 * n * 150, (one_pass, twelve)
        await staging.drain()
        assert store.totals.samples == 12 * n


async def test_waiting_passes_are_committed_early_once_they_hold_too_many_series(tmp_path: Path) -> None:
    """Under series churn every pass brings new series; the waiting group may not grow without bound
    (buffer.source_commit_max_series), while passes of the same series keep waiting."""
    async with BufferStore(tmp_path / "b.db", 64 << 20, "FULL") as store:
        staging = Staging(store, BufferMetrics(CollectorRegistry()), 0.001, 1_000_000, defer_for=600, defer_series=250)
        task = asyncio.create_task(staging.run())
        try:
            same = [staging.defer(scrape(k, 100), 100, 0) for k in range(5)]  # 100 series, 5 passes
            await asyncio.sleep(0.05)
            assert store.totals.samples == 0 and not any(p.done() for p in same)

            def churned(k: int) -> SeriesMap:
                return {(*labels, ("gen", str(k))): v for labels, v in scrape(k, 100).items()}

            fresh = [staging.defer(churned(k), 100, 0) for k in range(2)]  # 300 series waiting now
            await asyncio.wait_for(asyncio.gather(*same, *fresh), 5)
            assert store.totals.samples == 700
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
