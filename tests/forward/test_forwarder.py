"""The collector's forwarder and its spool, against a real HTTP receiver that answers from a script."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlite_utils
from prometheus_client import CollectorRegistry

from backhaul.errors import WireError
from backhaul.remote_write_sender import rejection_reason
from backhaul.wire import batch as batchfmt
from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, merge_into
from collector.forward import spool as spool_module
from collector.forward.metrics import ForwardMetrics
from collector.forward.remote_write import Forwarder
from collector.forward.settings import ForwardTarget
from collector.forward.spool import Chunks, RemoteWrite, Spool
from tests.forward.conftest import ScriptedReceiver

Start = Callable[..., Awaitable[ScriptedReceiver]]


def series(n: int, points: int) -> SeriesMap:
    return {
        (("__name__", "m"), ("i", str(i))): ([1_000 * k for k in range(points)], [i + k / 4 for k in range(points)])
        for i in range(n)
    }


def batch_body(data: SeriesMap, seq: int = 1) -> bytes:
    """A whole batch body, as spools before version 2 kept batches."""
    header = BatchHeader(device="edge-1", buffer_id="b", seq=seq, sent_at_ms=0, samples=30)
    header.samples = sum(len(ts) for ts, _ in data.values())
    return batchfmt.encode(header, [Codec().encode(data)])


def batch(data: SeriesMap) -> Chunks:
    """A batch's chunks, as the collector's batch endpoint hands them to the forwarders."""
    return Chunks([Codec().encode(data)])


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def make(tmp_path: Path, url: str, per_request: int = 10) -> tuple[Forwarder, CollectorRegistry]:
    registry = CollectorRegistry()
    target = ForwardTarget(
        name="t", url=url, max_samples_per_request=per_request, backoff_min=0.01, backoff_max=0.05, timeout=5
    )
    spool = Spool(tmp_path / "spool.db", "NORMAL", 1 << 30)
    forwarder = Forwarder(target, spool, ForwardMetrics(registry), "device_id", 1 << 26)
    await forwarder.start()
    return forwarder, registry


async def drained(forwarder: Forwarder) -> None:
    for _ in range(500):
        if forwarder.spool.totals.entries == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("spool did not drain")


def received(receiver: ScriptedReceiver, ok_only: bool = True) -> SeriesMap:
    out: SeriesMap = {}
    for status, part in zip(receiver.statuses, receiver.received, strict=True):
        if 200 <= status < 300 or not ok_only:
            merge_into(out, part)
    return out


async def test_retries_after_503_and_resumes_inside_an_entry(tmp_path: Path, scripted_receiver: Start) -> None:
    receiver = await scripted_receiver((204, {}, ""), (204, {}, ""), (503, {"Retry-After": "0"}, "busy"), (204, {}, ""))
    forwarder, registry = await make(tmp_path, receiver.url)
    data = series(3, 10)  # 30 samples: three requests of ten
    await forwarder.enqueue("edge-1", batch(data), 30)
    await drained(forwarder)
    await forwarder.stop()
    assert receiver.statuses == [204, 204, 503, 204]  # the two acknowledged requests were not sent again
    expected = {tuple(sorted((*k, ("device_id", "edge-1")))): v for k, v in data.items()}
    assert received(receiver) == expected
    assert receiver.headers[0]["Content-Encoding"] == "snappy"
    assert receiver.headers[0]["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert value(registry, "backhaul_collector_forward_sent_samples_total", target="t") == 30
    assert value(registry, "backhaul_collector_forward_failures_total", target="t", reason="http_503") == 1


async def test_out_of_bounds_is_counted_once_and_never_retried(tmp_path: Path, scripted_receiver: Start) -> None:
    receiver = await scripted_receiver((400, {}, "out of bounds"))
    forwarder, registry = await make(tmp_path, receiver.url)
    await forwarder.enqueue("edge-1", batch(series(5, 5)), 25)
    await drained(forwarder)
    await asyncio.sleep(0.2)
    await forwarder.stop()
    assert len(receiver.statuses) == 3  # 25 samples, ten per request: three requests, each sent once
    rejected = value(registry, "backhaul_collector_forward_rejected_samples_total", target="t", reason="out_of_bounds")
    assert rejected == 25
    assert value(registry, "backhaul_collector_forward_sent_samples_total", target="t") == 0


async def test_a_wrong_token_keeps_the_data_and_retries(tmp_path: Path, scripted_receiver: Start) -> None:
    receiver = await scripted_receiver((401, {}, "unauthorized"), (401, {}, "unauthorized"), (204, {}, ""))
    forwarder, registry = await make(tmp_path, receiver.url, per_request=100)
    forwarder._backoff.maximum = 0.05  # "retry slowly" still means within this test
    await forwarder.enqueue("edge-1", batch(series(2, 5)), 10)
    await drained(forwarder)
    await forwarder.stop()
    assert receiver.statuses == [401, 401, 204]
    assert value(registry, "backhaul_collector_forward_sent_samples_total", target="t") == 10


async def test_spool_survives_a_restart_with_its_progress(tmp_path: Path, scripted_receiver: Start) -> None:
    down = await scripted_receiver((204, {}, ""), (503, {}, "down"))
    forwarder, _ = await make(tmp_path, down.url)
    await forwarder.enqueue("edge-1", batch(series(3, 10)), 30)
    await forwarder.enqueue("edge-1", RemoteWrite(b""), 0)  # nothing to forward: not even queued
    for _ in range(500):
        if len(down.statuses) >= 3:
            break
        await asyncio.sleep(0.01)
    await forwarder.stop()  # like a collector restart in the middle of an outage
    assert forwarder.spool.totals.entries == 1

    up = await scripted_receiver()
    forwarder, registry = await make(tmp_path, up.url)
    assert forwarder.spool.totals.samples == 30
    await drained(forwarder)
    await forwarder.stop()
    assert len(up.statuses) == 2  # resumed after the one request the first receiver acknowledged
    assert value(registry, "backhaul_collector_forward_sent_samples_total", target="t") == 20


def test_spool_over_budget_drops_the_oldest_and_says_how_many(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", "NORMAL", max_bytes=1024**2)
    spool.open()
    body = bytes(400 * 1024)
    assert spool.add("d", RemoteWrite(body), 10, 1) == 0
    assert spool.add("d", RemoteWrite(body), 20, 2) == 0
    assert spool.add("d", RemoteWrite(body), 30, 3) == 10  # the oldest goes, never the newest
    assert (spool.totals.entries, spool.totals.samples, spool.totals.oldest_ms) == (2, 50, 2)
    first = spool.first()
    assert first is not None and first.samples == 20
    spool.remove(first)
    spool.close()
    spool.open()  # the totals are read back from the file
    assert (spool.totals.entries, spool.totals.samples, spool.totals.oldest_ms) == (1, 30, 3)
    big = spool.path.stat().st_size + (spool.path.with_name("s.db-wal").stat().st_size)
    last = spool.first()
    assert last is not None
    spool.remove(last)
    spool.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert spool.path.stat().st_size < big // 2  # a drained spool gives its pages back
    assert (spool.totals.entries, spool.totals.bytes, spool.totals.oldest_ms) == (0, 0, None)
    spool.close()


@pytest.mark.parametrize(
    ("status", "text", "reason"),
    [
        (400, "out of bounds", "out_of_bounds"),
        (400, "too old sample", "too_old"),
        (400, "out of order sample", "out_of_order"),
        (400, "duplicate sample for timestamp", "duplicate_timestamp"),
        (413, "too big", "http_413"),
    ],
)
def test_refusals_are_named(status: int, text: str, reason: str) -> None:
    assert rejection_reason(status, text) == reason


async def test_small_entries_travel_together(tmp_path: Path, scripted_receiver: Start) -> None:
    receiver = await scripted_receiver((503, {}, "busy"), (204, {}, ""))
    forwarder, registry = await make(tmp_path, receiver.url, per_request=100)
    forwarder._backoff.minimum = forwarder._backoff.maximum = 0.2  # time for all five to be queued first
    for device in range(5):
        await forwarder.enqueue(f"edge-{device}", batch(series(2, 5)), 10)
    await drained(forwarder)
    await forwarder.stop()
    # the first pass took only the first entry (the others were not queued yet) and failed; its retry
    # is that same entry alone; then the other four go in one request
    assert [sum(len(ts) for ts, _ in part.values()) for part in receiver.received] == [10, 10, 40]
    devices = {dict(labels)["device_id"] for labels in receiver.received[2]}
    assert devices == {"edge-1", "edge-2", "edge-3", "edge-4"}
    assert value(registry, "backhaul_collector_forward_sent_samples_total", target="t") == 50
    assert value(registry, "backhaul_collector_forward_sent_requests_total", target="t") == 2


async def test_a_wrong_victoria_metrics_path_is_a_misconfiguration_not_a_refusal(
    tmp_path: Path, scripted_receiver: Start
) -> None:
    wrong = 'remoteAddr: "127.0.0.1:1"; requestURI: /api/v1/wrong; unsupported path requested: "/api/v1/wrong"'
    receiver = await scripted_receiver((400, {}, wrong), (204, {}, ""))
    forwarder, registry = await make(tmp_path, receiver.url, per_request=100)
    forwarder._backoff.maximum = 0.05
    await forwarder.enqueue("edge-1", batch(series(2, 5)), 10)
    await drained(forwarder)
    await forwarder.stop()
    assert receiver.statuses == [400, 204]
    assert value(registry, "backhaul_collector_forward_failures_total", target="t", reason="http_400") == 1
    assert value(registry, "backhaul_collector_forward_rejected_samples_total", target="t", reason="http_400") == 0


async def test_a_spool_of_the_previous_version_is_migrated_and_its_batches_still_forwarded(
    tmp_path: Path, scripted_receiver: Start
) -> None:
    # A spool file as version 1 left it: whole batch bodies, no chunk sizes.
    conn = sqlite3.connect(tmp_path / "spool.db")
    spool_v1 = spool_module.MIGRATIONS[0]
    spool_v1(sqlite_utils.Database(conn))
    data = series(2, 5)
    conn.execute(
        "INSERT INTO entries (device, kind, body, bytes, samples, created_ms) VALUES (?, 'batch', ?, ?, 10, 1)",
        ("edge-1", batch_body(data), len(batch_body(data))),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    receiver = await scripted_receiver()
    forwarder, registry = await make(tmp_path, receiver.url, per_request=100)
    await forwarder.enqueue("edge-2", batch(data), 10)  # a new entry beside the old one
    await drained(forwarder)
    await forwarder.stop()
    got = received(receiver)
    assert {dict(labels)["device_id"] for labels in got} == {"edge-1", "edge-2"}
    assert value(registry, "backhaul_collector_forward_sent_samples_total", target="t") == 20


def test_a_damaged_chunks_entry_reads_as_a_wire_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", "NORMAL", max_bytes=1024**2)
    spool.open()
    frames = [Codec().encode(series(1, 2)), Codec().encode(series(2, 2))]
    spool.add("d", Chunks(frames), 6, 1)
    entry = spool.first()
    assert entry is not None and entry.kind == "chunks"
    assert entry.payload() == Chunks(frames)  # the frames come back as they went in
    spool.conn.execute("UPDATE entries SET sizes = '1,2'")
    damaged = spool.first()
    assert damaged is not None
    with pytest.raises(WireError):
        damaged.payload()
    spool.close()
