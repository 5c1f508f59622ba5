"""The per-device history the fleet's device page draws (collector/store/history.py), on both back
ends: five-minute rows that add up, the latest backlog, freshness, clock offset and link, 48 h kept."""

from __future__ import annotations

from collector.store import Store
from collector.store.history import BUCKET_MS, KEEP_MS, BatchNote

T0 = 1_800_000_000_000 - 1_800_000_000_000 % BUCKET_MS  # the start of a five-minute row


async def test_batches_add_up_per_five_minutes(store: Store) -> None:
    await store.note_batch(BatchNote("dev-1", T0 + 1000, 500, 10, 9000, T0 - 29_000, T0 + 3000, "wifi"))
    await store.note_batch(BatchNote("dev-1", T0 + 2000, 700, 20, 4000, T0 + 1000, 0, ""))
    await store.note_batch(BatchNote("dev-1", T0 + BUCKET_MS, 100, 1, 0, 0, T0 + BUCKET_MS - 500, "lte"))
    await store.note_batch(BatchNote("dev-2", T0, 1, 1, 1, 0, 0))
    first, second = await store.history("dev-1", T0)
    assert (first.bucket_ms, first.bytes, first.samples, first.batches) == (T0, 1200, 30, 2)
    # the latest backlog and freshness; the clock offset and link of the last batch that had them
    assert (first.backlog_bytes, first.lag_ms, first.clock_offset_ms, first.link) == (4000, 1000, 2000, "wifi")
    assert (second.lag_ms, second.clock_offset_ms, second.link) == (None, -500, "lte")
    assert [r.bucket_ms for r in await store.history("dev-1", T0 + 1)] == [T0 + BUCKET_MS]
    latest = await store.latest_history()
    assert latest["dev-1"].bucket_ms == T0 + BUCKET_MS and latest["dev-2"].bucket_ms == T0


async def test_rows_older_than_two_days_go(store: Store) -> None:
    await store.note_batch(BatchNote("dev-1", T0, 1, 1, 0, 0, 0))
    await store.note_batch(BatchNote("dev-1", T0 + KEEP_MS + BUCKET_MS, 1, 1, 0, 0, 0))
    assert [r.bucket_ms for r in await store.history("dev-1", 0)] == [T0 + KEEP_MS + BUCKET_MS]
