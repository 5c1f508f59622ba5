"""The parts of issue 12's defences that are pure functions: label rules, the decoding budget, the
remote-write pieces, the label cache's bounds."""

from __future__ import annotations

import asyncio

import pytest

from backhaul.errors import TooLarge, Unavailable
from backhaul.labels import LabelRules, drop_bad_series
from backhaul.wire import remote_write as rw
from backhaul.wire.budget import DecodeBudget
from backhaul.wire.remote_write.pieces import pieces
from backhaul.wire.series import SeriesMap

RULES = LabelRules(max_labels=8, max_label_bytes=200, device_label="device_id")


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ([("__name__", "up"), ("job", "x")], None),
        ([("__name__", "ns:rule:rate5m"), ("_under", "é ok")], None),
        ([("__name__", "up"), ("device_id", "other")], None),  # the label itself: renamed by the collector
        ([], "no_labels"),
        ([("__name__", "up"), *((f"l{i}", "v") for i in range(8))], "too_many_labels"),
        ([("__name__", "up"), ("a", "v" * 300)], "labels_too_long"),
        ([("__name__", "up"), ("a", "é" * 150)], "labels_too_long"),  # 300 bytes in 150 characters
        ([("__name__", "up"), ("", "x")], "empty_label_name"),
        ([("__name__", "up"), ("a", "1"), ("a", "2")], "duplicate_label_name"),
        ([("__name__", "up"), ("bad-name!", "x")], "invalid_label_name"),
        ([("__name__", "up"), ("device_id ", "x")], "invalid_label_name"),
        ([("__name__", "up"), ("device_id\u200b", "x")], "invalid_label_name"),
        ([("__name__", "up"), ("1st", "x")], "invalid_label_name"),
        ([("job", "x")], "missing_metric_name"),
        ([("__name__", ""), ("job", "x")], "missing_metric_name"),
        ([("__name__", "http.requests")], "invalid_metric_name"),
        ([("__name__", "up"), ("v", "\udc80")], "invalid_utf8"),
        ([("__name__", "up\udc80")], "invalid_utf8"),
        ([("__name__", "up"), ("Device_ID", "x")], "device_label_lookalike"),
        ([("__name__", "up"), ("deviceid", "x")], "device_label_lookalike"),
        ([("__name__", "up"), ("device__id", "x")], "device_label_lookalike"),
    ],
)
def test_label_rules(pairs: list[tuple[str, str]], reason: str | None) -> None:
    assert RULES.problem(pairs) == reason
    assert RULES.problem(pairs) == reason  # the second time from the name caches


def test_drop_bad_series_keeps_the_rest_and_counts_samples_by_reason() -> None:
    series: SeriesMap = {
        (("__name__", "ok"),): ([1, 2], [1.0, 2.0]),
        (("job", "x"),): ([1, 2, 3], [1.0, 2.0, 3.0]),
        (("__name__", "m"), ("bad-name", "x")): ([1], [1.0]),
    }
    assert drop_bad_series(series, RULES) == {"missing_metric_name": 3, "invalid_label_name": 1}
    assert list(series) == [(("__name__", "ok"),)]


async def test_the_budget_serves_in_order_and_bounds_what_is_held_together() -> None:
    budget = DecodeBudget(100, 80, wait=1.0)
    with pytest.raises(TooLarge, match="exceeds the limit of 80"):
        budget.check(81, "batch")
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, cost: int) -> None:
        async with budget.reserve(cost, name):
            order.append(name)
            assert budget.in_use <= budget.capacity
            await release.wait()

    first = asyncio.create_task(hold("a", 60))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold("b", 60))  # must wait for a
    third = asyncio.create_task(hold("c", 10))  # fits, but waits behind b (first come, first served)
    await asyncio.sleep(0.05)
    assert order == ["a"] and budget.in_use == 60
    release.set()
    await asyncio.gather(first, second, third)
    assert order == ["a", "b", "c"] and budget.in_use == 0


async def test_a_request_that_waits_too_long_gets_unavailable_and_leaves_no_trace() -> None:
    budget = DecodeBudget(100, 100, wait=0.05)
    async with budget.reserve(90, "a"):
        with pytest.raises(Unavailable, match="waited"):
            async with budget.reserve(20, "b"):
                pass
        assert budget.in_use == 90
    assert budget.in_use == 0
    async with budget.reserve(100, "c"):
        pass


def test_pieces_are_whole_top_level_fields() -> None:
    from backhaul.wire.remote_write.messages import WriteRequest

    series: SeriesMap = {(("__name__", f"m{i}"),): ([1_700_000_000_000], [float(i)]) for i in range(300)}
    raw = rw.decompress(rw.encode(series)[0], 1 << 20)
    parts = list(pieces(raw, 1000))
    assert len(parts) > 5 and b"".join(p for p, _ in parts) == raw
    assert all(len(p) <= 1000 and numbers == {1} for p, numbers in parts)
    total = sum(len(WriteRequest.FromString(p).timeseries) for p, _ in parts)
    assert total == 300


def test_a_large_body_decodes_in_pieces_to_the_same_result_and_within_its_bound() -> None:
    now = 1_700_000_000_000
    series: SeriesMap = {
        (("__name__", "m"), ("i", str(i))): ([now + k for k in range(50)], [float(k) for k in range(50)])
        for i in range(2000)
    }
    body = rw.encode(series, 1_000_000)[0]
    limits = rw.Limits(min_timestamp_ms=now - 1, max_timestamp_ms=now + 100)
    whole = rw.decode(body, limits)
    small = rw.Limits(min_timestamp_ms=now - 1, max_timestamp_ms=now + 100, max_decoded_bytes=30 << 20)
    assert rw.decode(body, small).series == whole.series  # parsed piece by piece
    with pytest.raises(TooLarge):
        rw.decode(body, rw.Limits(min_timestamp_ms=now - 1, max_timestamp_ms=now + 100, max_decoded_bytes=1 << 20))


def test_the_label_cache_bounds_its_sets_and_its_interned_pairs() -> None:
    cache = rw.LabelCache(max_entries=1000, max_pairs=3000)
    limits = rw.Limits(min_timestamp_ms=0, max_timestamp_ms=2**50)
    for step in range(20):
        series: SeriesMap = {
            (("__name__", "m"), ("a", f"{step}-{i}"), ("b", f"{step}-{i}"), ("c", f"{step}-{i}")): ([1], [1.0])
            for i in range(500)
        }
        rw.decode(rw.encode(series)[0], limits, cache)
        assert len(cache) <= 1000 and cache.pairs <= 3000
