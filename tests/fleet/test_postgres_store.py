"""The PostgreSQL store on its own, against a real server: values bit for bit, de-duplication,
errors translated once."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator

import pytest

from backhaul.errors import StoreError
from backhaul.wire.alert import AlertMessage
from backhaul.wire.batch import BatchHeader
from backhaul.wire.remote_write import STALE_NAN_BYTES
from backhaul.wire.series import Labels
from collector.store import Store
from collector.store.postgres import PostgresStore
from tests.fleet.batches import put, read
from tests.support import free_port

STALE_NAN = struct.unpack("<d", STALE_NAN_BYTES)[0]  # Prometheus' stale marker, a NaN with its own bits
LABELS: Labels = (("__name__", "temp"), ("device_id", "x"), ("room", "a"))


@pytest.fixture
async def pg_store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, pool_size=3)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def bits(v: float) -> bytes:
    return struct.pack("<d", v)


async def test_values_survive_bit_for_bit(pg_store: PostgresStore) -> None:
    values = [1.5, -0.0, math.inf, -math.inf, math.nan, STALE_NAN]
    result = await put(pg_store, "dev-1", {LABELS: (list(range(1000, 1006)), values)}, 1)
    assert (result.samples, result.duplicate_samples) == (6, 0)
    [(labels, stamps, got)] = (await read(pg_store, '{__name__="temp"}', 0, 2000)).values()
    # the device label is added, an existing one of that name kept as exported_<name>
    assert labels == {"__name__": "temp", "exported_device_id": "x", "room": "a", "device_id": "dev-1"}
    assert stamps == list(range(1000, 1006))
    assert [bits(v) for v in got] == [bits(v) for v in values]
    # a sender's retry of the same remote-write request: stored once, counted as duplicates
    again = await put(pg_store, "dev-1", {LABELS: (list(range(1000, 1006)), values)}, 2)
    assert (again.samples, again.duplicate_samples) == (0, 6)
    assert pg_store.devices["dev-1"].duplicate_samples == 6


async def test_a_batch_raced_within_one_instance_is_stored_once(pg_store: PostgresStore) -> None:
    header = BatchHeader(device="dev-1", buffer_id="b", seq=7, sent_at_ms=1, samples=3, agent_version="1.2.3")
    series = {LABELS: ([1, 2, 3], [1.0, 2.0, 3.0])}
    results = await asyncio.gather(*(put(pg_store, "dev-1", series, 5, header) for _ in range(4)))
    assert sorted(r.duplicate_batch for r in results) == [False, True, True, True]
    assert await pg_store.seen("dev-1", "b", 7)
    [state] = await pg_store.device_states()
    assert (state.samples, state.batches, state.duplicate_samples, state.agent_version) == (3, 1, 0, "1.2.3")
    assert state.duplicate_batches == 4  # three lost races and one seen()


async def test_model_info_is_the_newest_series(pg_store: PostgresStore) -> None:
    old = (("__name__", "backhaul_model_info"), ("model", "a"), ("version", "1"))
    new = (("__name__", "backhaul_model_info"), ("model", "a"), ("version", "2"))
    await put(pg_store, "dev-1", {old: ([100], [1.0]), new: ([200], [1.0])}, 1)
    assert await pg_store.model_info("device_id") == {"dev-1": {"model": "a", "version": "2"}}


async def test_an_unreachable_database_is_a_transient_error() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x", pool_size=1)
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert caught.value.transient


async def test_alerts_move_forward_once_per_message_on_either_store(store: Store) -> None:
    from backhaul.wire.alert import AlertMessage

    def msg(seq: int, state: str, ts_ms: int) -> AlertMessage:
        return AlertMessage("dev-1", "TooHot", state, "critical", 81.5, ts_ms, seq, 0xBEEF, "hot")

    assert await store.record_alert("dev-1", msg(1, "firing", 1000), 1001, "http")
    assert not await store.record_alert("dev-1", msg(1, "firing", 1000), 1002, "mqtt")  # the same message again
    assert await store.record_alert("dev-1", msg(2, "firing", 5000), 5001, "http")  # a repeat: starts stays 1000
    (alert,) = await store.alerts(state="firing")
    assert (alert.starts_ms, alert.updated_ms, alert.seq, alert.value) == (1000, 5000, 2, 81.5)
    assert (await store.alerts_firing())["dev-1"][0]["rule"] == "TooHot"
    assert await store.record_alert("dev-1", msg(3, "resolved", 9000), 9001, "http")
    assert await store.record_alert("dev-1", msg(2, "firing", 4000), 9002, "mqtt")  # late and older: log only
    (alert,) = await store.alerts()
    assert (alert.state, alert.starts_ms, alert.ends_ms) == ("resolved", 1000, 9000)
    assert await store.alerts_firing() == {}
    assert await store.alerts(resolved_since_ms=9500) == []


async def test_series_tables_are_kept_per_device_and_old_ones_dropped(store: Store) -> None:
    await store.put_tables("dev-1", {"a" * 32: b'[["__name__","up"]]'}, 1000, 0)
    await store.put_tables("dev-1", {"a" * 32: b"other bytes"}, 2000, 0)  # a digest names one table: kept
    assert await store.get_table("dev-1", "a" * 32) == b'[["__name__","up"]]'
    assert await store.get_table("dev-2", "a" * 32) is None  # tables are per device
    await store.put_tables("dev-1", {"b" * 32: b"[]"}, 9000, 5000)  # stored before 5000: dropped
    assert await store.get_table("dev-1", "a" * 32) is None
    assert await store.get_table("dev-1", "b" * 32) == b"[]"


async def test_the_link_an_agent_reports_is_kept_on_either_store(store: Store) -> None:
    series = {LABELS: ([1000], [1.0])}
    link: dict[str, int | str] = {"spent_day": 5000, "budget_day": 10_000, "blocked": "cap", "some_newer_field": 3}
    await put(store, "x", series, 1000, BatchHeader("x", "b", 1, 1000, 1, uplink=link))
    # a batch from an agent that reports no link leaves what was reported before
    await put(store, "x", {LABELS: ([2000], [1.0])}, 2000, BatchHeader("x", "b", 2, 2000, 1))
    (state,) = [s for s in await store.device_states() if s.device == "x"]
    assert state.uplink == '{"blocked":"cap","budget_day":10000,"spent_day":5000}'
