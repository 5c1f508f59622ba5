"""A collector (in-process, real HTTP) with one forward target: both device endpoints feed the spool,
and the spool is written before the store, so a spool that cannot write stores nothing and answers 503."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from backhaul.wire import batch as batchfmt
from backhaul.wire import remote_write as rw
from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, merge_into
from collector.app import Collector
from collector.config import CollectorSettings
from tests.forward.conftest import ScriptedReceiver

Start = Callable[..., Awaitable[ScriptedReceiver]]
TOKEN = "forward-test-token"


def settings(tmp_path: Path, target_url: str) -> CollectorSettings:
    return CollectorSettings(
        listen={"port": 0},
        store={"path": tmp_path / "collector.db", "synchronous": "NORMAL"},
        devices=[{"id": "edge-1", "token": TOKEN}],
        forward=[{"name": "t", "url": target_url, "backoff_min": 0.05, "backoff_max": 0.1}],
    )


async def forwarded(receiver: ScriptedReceiver, samples: int) -> SeriesMap:
    for _ in range(300):
        got: SeriesMap = {}
        for part in receiver.received:
            merge_into(got, part)
        if sum(len(ts) for ts, _ in got.values()) >= samples:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"the target did not get {samples} samples")


async def test_both_device_endpoints_forward_what_they_store(tmp_path: Path, scripted_receiver: Start) -> None:
    receiver = await scripted_receiver()
    now = int(time.time() * 1000)
    batch: SeriesMap = {(("__name__", "a"), ("device_id", "spoofed")): ([now, now + 1], [1.0, 2.0])}
    plain: SeriesMap = {(("__name__", "b"),): ([now], [3.0])}
    header = BatchHeader(device="edge-1", buffer_id="buf", seq=1, sent_at_ms=now, samples=2)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with Collector(settings(tmp_path, receiver.url)) as collector, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{collector.port}"
        body = batchfmt.encode(header, [Codec().encode(batch)])
        headers = {**auth, "Content-Type": batchfmt.CONTENT_TYPE}
        async with http.post(f"{url}/api/v1/batches", data=body, headers=headers) as resp:
            assert resp.status == 200
        headers = {**auth, "Content-Type": rw.CONTENT_TYPE, "Content-Encoding": "snappy"}
        async with http.post(f"{url}/api/v1/write", data=rw.encode(plain)[0], headers=headers) as resp:
            assert resp.status == 204
        got = await forwarded(receiver, 3)
    # the same labels as in the collector's store: device_id added, a device_id the sender set kept renamed
    assert got == {
        (("__name__", "a"), ("device_id", "edge-1"), ("exported_device_id", "spoofed")): ([now, now + 1], [1.0, 2.0]),
        (("__name__", "b"), ("device_id", "edge-1")): ([now], [3.0]),
    }


async def test_a_spool_that_cannot_write_stores_nothing_and_answers_503(
    tmp_path: Path, scripted_receiver: Start
) -> None:
    receiver = await scripted_receiver()
    now = int(time.time() * 1000)
    data: SeriesMap = {(("__name__", "c"),): ([now], [1.0])}
    header = BatchHeader(device="edge-1", buffer_id="buf", seq=1, sent_at_ms=now, samples=1)
    body = batchfmt.encode(header, [Codec().encode(data)])
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": batchfmt.CONTENT_TYPE}
    async with Collector(settings(tmp_path, receiver.url)) as collector, aiohttp.ClientSession() as http:
        assert collector.forwarding is not None
        spool = collector.forwarding.forwarders[0].spool
        await spool.call(spool.close)  # as good as a full disk: every write fails
        url = f"http://127.0.0.1:{collector.port}"
        async with http.post(f"{url}/api/v1/batches", data=body, headers=headers) as resp:
            assert resp.status == 503 and "forward spool" in await resp.text()
        assert collector.store.devices == {}  # not stored either: the agent keeps the batch and retries
        await spool.call(spool.open)
        async with http.post(f"{url}/api/v1/batches", data=body, headers=headers) as resp:
            assert resp.status == 200 and not (await resp.json())["duplicate"]
        assert collector.store.devices["edge-1"].samples == 1
        assert await forwarded(receiver, 1) == {(("__name__", "c"), ("device_id", "edge-1")): ([now], [1.0])}
