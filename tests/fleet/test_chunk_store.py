"""The chunk store on both back ends: out-of-order and overlapping uploads come out once and sorted and
are counted honestly, retention removes whole chunks oldest first and counts them, de-duplication
records outlive the chunks, the fleet page does not depend on removed samples, native histograms are
kept and left out of the export."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from backhaul.wire.histogram import Histogram, HistogramSeriesMap
from backhaul.wire.series import Labels, SeriesMap
from collector.store import Store
from collector.store.chunks import prepare
from collector.store.retention import Retention, Rules
from collector.store.settings import StoreSettings
from collector.store.sqlite import SqliteStore
from tests.fleet.batches import put, read

HOUR = 3_600_000
NOW = 1_800_000_000_000
UP: Labels = (("__name__", "up"), ("job", "node"))


def every(step_ms: int, start: int, end: int) -> list[int]:
    return list(range(start, end, step_ms))


async def test_fresh_first_then_the_backlog_comes_out_once_and_sorted(store: Store) -> None:
    stamps = every(15_000, NOW - HOUR, NOW)
    values = {t: float(t // 1000 % 977) for t in stamps}
    # after a gap the agent sends the newest data first, then the backlog, oldest last, in pieces
    pieces = [stamps[i : i + 40] for i in range(0, len(stamps), 40)][::-1]
    for k, piece in enumerate(pieces):
        header = BatchHeader(device="dev-1", buffer_id="b", seq=k + 1, sent_at_ms=0)
        await put(store, "dev-1", {UP: (piece, [values[t] for t in piece])}, NOW, header)
    [(labels, got, vals)] = (await read(store, '{__name__="up"}')).values()
    assert labels == {"__name__": "up", "device_id": "dev-1", "job": "node"}
    assert got == stamps and vals == [values[t] for t in stamps]
    [state] = await store.device_states()
    assert (state.samples, state.duplicate_samples, state.batches) == (len(stamps), 0, len(pieces))


async def test_a_summary_followed_by_the_full_data_is_stored_once(store: Store) -> None:
    stamps = every(15_000, NOW - HOUR, NOW)
    values = [float(i) for i in range(len(stamps))]
    summary = stamps[::8]  # real samples at a coarser interval, sent first on a tight budget
    await put(store, "dev-1", {UP: (summary, [values[stamps.index(t)] for t in summary])}, NOW)
    await put(store, "dev-1", {UP: (stamps, values)}, NOW)  # then the full data, shuffled into two
    await put(store, "dev-1", {UP: (stamps[:5][::-1], values[:5][::-1])}, NOW)  # and a stray repeat
    [(_, got, vals)] = (await read(store, "up")).values()
    assert got == stamps and vals == values
    [state] = await store.device_states()
    assert state.samples == len(stamps)
    assert state.duplicate_samples == len(summary) + 5  # received again: stored (and shown) once


async def test_of_two_samples_with_one_timestamp_the_first_stored_wins(store: Store) -> None:
    await put(store, "dev-1", {UP: ([1000, 2000], [1.0, 2.0])}, NOW)
    await put(store, "dev-1", {UP: ([2000, 3000, 3000], [9.0, 3.0, 8.0])}, NOW)
    [(_, got, vals)] = (await read(store, "up")).values()
    assert (got, vals) == ([1000, 2000, 3000], [1.0, 2.0, 3.0])


async def test_a_chunk_of_nothing_but_duplicates_is_not_stored(store: Store) -> None:
    series: SeriesMap = {UP: ([1000, 2000], [1.0, 2.0])}
    await put(store, "dev-1", series, NOW)
    again = await put(store, "dev-1", series, NOW)
    assert (again.samples, again.duplicate_samples) == (0, 2)
    [table] = await store.tables(0, 10_000)
    assert len(await store.chunk_refs([table.id], 0, 10_000)) == 1


async def test_retention_removes_whole_chunks_oldest_first_and_counts_them(store: Store) -> None:
    model: Labels = (("__name__", "backhaul_model_info"), ("model", "yolo"), ("version", "8"))
    for day in range(10):  # one batch a day, the model info in the first one only
        t = NOW - (10 - day) * 24 * HOUR
        series: SeriesMap = {UP: (every(60_000, t, t + HOUR), [float(day)] * 60)}
        if day == 0:
            series[model] = ([t], [1.0])
        await put(store, "dev-1", series, t, BatchHeader(device="dev-1", buffer_id="b", seq=day + 1, sent_at_ms=t))
    registry = CollectorRegistry()
    retention = Retention(store, StoreSettings(retention="P4D"), registry, clock=lambda: NOW / 1000)
    removed = await retention.once()
    assert removed.retention == 6 * 60 + 1  # days 0-5, the model-info sample with day 0
    assert registry.get_sample_value("backhaul_collector_store_removed_samples_total", {"reason": "retention"}) == 361
    [(_, got, _)] = (await read(store, "up")).values()
    assert min(got) == NOW - 4 * 24 * HOUR and len(got) == 4 * 60
    # the fleet figures do not depend on what was removed
    assert await store.model_info("device_id") == {"dev-1": {"model": "yolo", "version": "8"}}
    [state] = await store.device_states()
    assert state.samples == 10 * 60 + 1
    # an agent's late retry of a removed batch is still recognised, not stored again
    assert await store.seen("dev-1", "b", 1)
    # past max_bytes, the oldest of what is left goes first
    chunks = await store.chunk_refs([t.id for t in await store.tables(0, NOW)], 0, NOW)
    sizes = sum(len(f) for f in (await store.chunk_frames([c.id for c in chunks])).values())
    removed = await store.remove_old(Rules(10 * 24 * HOUR, sizes - 1, 0), NOW)
    assert removed.max_bytes == 60
    [(_, got, _)] = (await read(store, "up")).values()
    assert min(got) == NOW - 3 * 24 * HOUR
    # de-duplication records go once their time is up (here: at once)
    assert not await store.seen("dev-1", "b", 1)


async def test_native_histograms_are_stored_and_left_out_of_the_export(store: Store) -> None:
    codec = Codec()
    h = Histogram(count=3, sum=4.5, schema=0, positive_spans=((0, 2),), positive=(1, 1))
    histograms: HistogramSeriesMap = {(("__name__", "latency"), ("job", "x")): ([1000, 2000], [h, h])}
    raw = codec.decompress(codec.encode({UP: ([1000], [math.pi])}, histograms), 1 << 20)
    chunk = prepare(raw, b"", None, codec)
    assert chunk.scan.version == 3 and chunk.scan.samples == 3
    result = await store.ingest("dev-1", [chunk], NOW)
    assert result.samples == 3
    found = await read(store, '{job=~"node|x"}')
    assert [labels["__name__"] for labels, _, _ in found.values()] == ["up"]
    [(_, got, vals)] = found.values()
    assert (got, vals) == ([1000], [math.pi])


def test_retention_settings_are_checked() -> None:
    from pydantic import ValidationError

    assert StoreSettings().retention.days == 15 and StoreSettings().max_bytes is None
    with pytest.raises(ValidationError, match="retention"):
        StoreSettings(retention="PT1H")  # the fleet page reads two hours
    with pytest.raises(ValidationError, match="max_bytes"):
        StoreSettings(max_bytes="1KiB")
    rules = Rules.of(StoreSettings(retention="P1D", max_bytes="2GiB"))
    assert (rules.retention_ms, rules.max_bytes, rules.dedup_kept_ms) == (86_400_000, 2 * 1024**3, 14 * 86_400_000)


async def test_a_new_sqlite_store_has_2_kb_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """Chunks of small batches fill 2 KB pages (and their overflow pages), not a third of 4 KB ones."""
    old = tmp_path / "old.db"
    sqlite3.connect(old).execute("CREATE TABLE t (x)").connection.close()  # 4096, SQLite's default
    for path, expected in ((tmp_path / "new.db", 2048), (old, 4096)):
        s = SqliteStore(path, "NORMAL")
        await s.open()
        try:
            await put(s, "edge-1", {(("__name__", "m"),): ([1, 2], [1.0, 2.0])}, 10)
            assert len((await read(s, "m"))["edge-1"][1]) == 2
        finally:
            await s.close()
        assert sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0] == expected
