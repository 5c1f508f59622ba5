"""The duplicate check on both back ends (issue 12: one hostile device must not slow everyone): a new
chunk is compared only with held chunks whose table shares one of its series (found by the series
index, without parsing any other table), duplicates are still counted once across the tables that
do share, the work per request is bounded (and a check cut short keeps the data and says so), and a
store from before the index is indexed when it opens."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from backhaul.errors import UnknownTables
from backhaul.wire.chunk import Codec
from backhaul.wire.series import Labels
from collector.store import Store, overlap
from collector.store.chunks import from_series
from tests.conftest import Running
from tests.fleet.batches import batch_body, headers, put, read
from tests.fleet.conftest import opened, rewind
from tests.support import TOKEN, http, metric_value

NOW = 1_800_000_000_000
START = NOW - 3_600_000
UP: Labels = (("__name__", "up"), ("job", "node"))
OTHER = 60  # tables of other series stored over the same time range


def stamps(first: int, last: int) -> list[int]:
    return [START + 1000 * k for k in range(first, last)]


async def fill_with_other_tables(store: Store) -> None:
    """A device that stored many distinct tables over one time range, none sharing a series with UP."""
    for i in range(OTHER):
        other: Labels = (("__name__", f"other_{i}"), ("job", "node"))
        await put(store, "dev-1", {other: (stamps(0, 40), [float(i)] * 40)}, NOW)


async def test_a_new_chunk_is_compared_only_with_tables_that_share_a_series_and_counted_once(
    where: tuple[str, str], parsed: list[frozenset[str]]
) -> None:
    async with opened(where) as store:
        await fill_with_other_tables(store)
        # two tables that do share UP with what comes next, each overlapping it, and each other
        extra: Labels = (("__name__", "extra"), ("job", "node"))
        first = await put(store, "dev-1", {UP: (stamps(0, 10), [1.0] * 10), extra: (stamps(0, 4), [2.0] * 4)}, NOW)
        second = await put(store, "dev-1", {UP: (stamps(5, 20), [1.0] * 15)}, NOW)
        assert (first.duplicate_samples, second.duplicate_samples) == (0, 5)
        # another device's UP at the same times is its own, never a duplicate of dev-1's
        await put(store, "dev-2", {UP: (stamps(0, 30), [3.0] * 30)}, NOW)

    async with opened(where) as store:  # nothing cached: every table parsed now is one the check read
        parsed.clear()
        result = await put(store, "dev-1", {UP: (stamps(0, 30), [1.0] * 30)}, NOW)
        read_names = set().union(*parsed)
        assert read_names <= {"up", "extra"}, f"the check parsed {len(parsed)} tables, some sharing no series"
        assert len(parsed) <= 3  # the new chunk's table and the two that share UP
        assert (result.samples, result.duplicate_samples, result.capped) == (10, 20, False)
        got = await read(store, '{__name__="up"}')
        assert got["dev-1"][1] == stamps(0, 30) and got["dev-2"][1] == stamps(0, 30)
        states = {s.device: s for s in await store.device_states()}
        assert states["dev-1"].duplicate_samples == 25
        assert states["dev-1"].samples == OTHER * 40 + 10 + 4 + 10 + 10
        assert (states["dev-2"].samples, states["dev-2"].duplicate_samples) == (30, 0)


async def test_the_check_is_bounded_and_a_check_cut_short_keeps_the_data(where: tuple[str, str]) -> None:
    held = overlap.MAX_HELD_CHUNKS + 10
    async with opened(where) as store:
        for k in range(held):  # one sample a chunk, all under the next chunk's time range
            await put(store, "dev-1", {UP: ([START + 1000 * k], [float(k)])}, NOW)
        result = await put(store, "dev-1", {UP: (stamps(0, held + 5), [float(k) for k in range(held + 5)])}, NOW)
        # the newest held chunks were compared, up to the bound; the rest counted new and kept
        assert result.capped
        assert result.duplicate_samples == overlap.MAX_HELD_CHUNKS
        assert result.samples == held + 5 - overlap.MAX_HELD_CHUNKS
        got = await read(store, "up")
        assert got["dev-1"][1] == stamps(0, held + 5)  # each sample once, the first stored winning
        assert got["dev-1"][2] == [float(k) for k in range(held + 5)]
        small = await put(store, "dev-1", {UP: ([START], [0.0])}, NOW)  # meets two held chunks: exact
        assert (small.samples, small.duplicate_samples, small.capped) == (0, 1, False)


async def test_a_store_from_before_the_index_is_indexed_when_it_opens(
    where: tuple[str, str], parsed: list[frozenset[str]]
) -> None:
    async with opened(where) as store:
        await fill_with_other_tables(store)
        await put(store, "dev-1", {UP: (stamps(0, 10), [1.0] * 10)}, NOW)
    await rewind(where, ["table_labels", "table_series"])
    async with opened(where) as store:
        assert len(parsed) >= OTHER + 1  # each stored table hashed once, at open
        parsed.clear()
        result = await put(store, "dev-1", {UP: (stamps(5, 15), [1.0] * 10)}, NOW)
        assert (result.samples, result.duplicate_samples) == (5, 5)
        assert set().union(*parsed) <= {"up"}


def test_the_bound_counts_chunks_and_samples() -> None:
    def rows(n: int, size: int) -> list[tuple[int, int, int]]:
        return [(k, 1, size) for k in range(n)]

    assert overlap.within_bound(rows(3, 10)) == ([(0, 1), (1, 1), (2, 1)], False)
    kept, capped = overlap.within_bound(rows(overlap.MAX_HELD_CHUNKS + 1, 1))
    assert capped and len(kept) == overlap.MAX_HELD_CHUNKS
    kept, capped = overlap.within_bound(rows(10, overlap.MAX_HELD_SAMPLES // 4))
    assert capped and len(kept) == 4


@pytest.mark.integration
def test_a_collector_counts_checks_cut_short_per_device(start_collector: Callable[..., Running]) -> None:
    collector = start_collector()
    start = int(time.time() * 1000) - 600_000
    held = overlap.MAX_HELD_CHUNKS + 2
    for seq in range(1, held + 1):
        body = batch_body("dev-1", seq, {UP: ([start + seq * 1000], [float(seq)])})
        assert http("POST", f"{collector.url}/api/v1/batches", body, headers(TOKEN))[0] == 200
    name = "backhaul_collector_duplicate_checks_capped_total"
    assert metric_value(collector.url, name, 'device="dev-1"') == 0
    every = [start + k * 1000 for k in range(1, held + 1)]
    body = batch_body("dev-1", held + 1, {UP: (every, [float(k) for k in range(1, held + 1)])})
    status, answer, _ = http("POST", f"{collector.url}/api/v1/batches", body, headers(TOKEN))
    assert status == 200, answer
    assert metric_value(collector.url, name, 'device="dev-1"') == 1
    assert metric_value(collector.url, "backhaul_collector_duplicate_samples_total") == overlap.MAX_HELD_CHUNKS


async def test_a_failed_ingest_forgets_only_what_it_cached_itself(
    where: tuple[str, str], parsed: list[frozenset[str]]
) -> None:
    """A hostile batch that fails inside the transaction (here: a table reference nobody offered)
    must not empty the caches that every device's check relies on, and nothing it cached may stay:
    the embedded store gives the row ids it inserted to the next rows."""
    fresh: Labels = (("__name__", "fresh"), ("job", "node"))
    later: Labels = (("__name__", "later"), ("job", "node"))
    async with opened(where) as store:
        await put(store, "dev-1", {UP: (stamps(0, 10), [1.0] * 10)}, NOW)
        await put(store, "dev-1", {UP: (stamps(5, 15), [1.0] * 10)}, NOW)  # the check reads UP's table

        [stored] = from_series({fresh: (stamps(0, 5), [7.0] * 5)}, Codec())
        [unknown] = from_series({later: (stamps(0, 5), [8.0] * 5)}, Codec())
        unknown = replace(unknown, table=replace(unknown.table.summary(), digest="f" * 32))
        with pytest.raises(UnknownTables):
            await store.ingest("dev-1", [stored, unknown], NOW)

        [again] = from_series({UP: (stamps(10, 20), [1.0] * 10)}, Codec())
        parsed.clear()
        result = await store.ingest("dev-1", [again], NOW)
        assert parsed == [], "the failed batch emptied the table cache: held tables parsed again"
        assert (result.samples, result.duplicate_samples) == (5, 5)

        # the next new table takes the row id the failed batch had used: its own series, not "fresh"
        first = await put(store, "dev-1", {later: (stamps(0, 5), [9.0] * 5)}, NOW)
        second = await put(store, "dev-1", {later: (stamps(0, 8), [9.0] * 8)}, NOW)
        assert (first.duplicate_samples, second.samples, second.duplicate_samples) == (0, 3, 5)
        assert await read(store, '{__name__="fresh"}') == {}
        # and the failed batch's table, sent again, is stored as itself (not under the id it had)
        await put(store, "dev-1", {fresh: (stamps(0, 5), [7.0] * 5)}, NOW)
        assert (await read(store, '{__name__="fresh"}'))["dev-1"][1:] == (stamps(0, 5), [7.0] * 5)
        got = await read(store, '{__name__="later"}')
        assert got["dev-1"][1:] == (stamps(0, 8), [9.0] * 8)
        assert (await read(store, '{__name__="up"}'))["dev-1"][1] == stamps(0, 20)
