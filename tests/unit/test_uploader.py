import asyncio
import email.utils
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.buffer.store import BufferStore
from agent.uplink.link import Link
from agent.uplink.links import Links
from agent.uplink.metrics import UplinkMetrics
from agent.uplink.settings import UplinkSettings
from agent.uplink.transport import Transport
from agent.uplink.uploader import Uploader
from backhaul.errors import PeerError
from backhaul.http import Reply
from backhaul.retry import Backoff, retry_after
from backhaul.wire import batch as batchfmt
from backhaul.wire.batch import BatchHeader
from backhaul.wire.series import SeriesMap

NOW = 1_700_000_000_000


class ScriptedTransport:
    """In-process stand-in for the collector: answers from a script, records every body (encoded as
    the HTTP transport would)."""

    def __init__(self, answers: list[Reply | Exception]) -> None:
        self.answers = list(answers)
        self.bodies: list[bytes] = []
        self.sent = asyncio.Event()

    async def send(self, header: BatchHeader, frames: list[bytes]) -> Reply:
        self.bodies.append(batchfmt.encode(header, frames))
        self.sent.set()
        answer = self.answers.pop(0) if self.answers else Reply(200, {}, "{}")
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        pass


def scrape(k: int, n: int = 100) -> SeriesMap:
    return {(("__name__", f"m{i}"),): ([NOW + 5000 * k], [float(k)]) for i in range(n)}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BufferStore]:
    s = BufferStore(tmp_path / "b.db", 64 << 20, "NORMAL")
    await s.call(s.open)
    yield s
    await s.call(s.close)
    await s.db.aclose()


async def run_until(uploader: Uploader, transport: ScriptedTransport, requests: int, limit: float = 10) -> None:
    task = asyncio.create_task(uploader.run())
    try:
        async with asyncio.timeout(limit):
            while len(transport.bodies) < requests:
                transport.sent.clear()
                await transport.sent.wait()
            await asyncio.sleep(0.05)  # let the last reply be processed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def make(store: BufferStore, transport: Transport, **kw: Any) -> tuple[Uploader, UplinkMetrics]:
    options: dict[str, Any] = {
        "batch_interval": timedelta(0),
        "backoff_min": timedelta(seconds=0.01),
        "backoff_max": timedelta(seconds=0.05),
        **kw,
    }
    settings = UplinkSettings(url="http://collector.invalid/api/v1/batches", token="t", **options)
    metrics = UplinkMetrics(CollectorRegistry())
    return Uploader(settings, "dev-1", store, transport, metrics), metrics


async def test_failures_resend_the_identical_batch_until_acknowledged(store):
    for k in range(3):
        await store.call(store.append, scrape(k), 0, NOW)
    transport = ScriptedTransport(
        [
            PeerError("connection", "refused"),
            Reply(503, {"Retry-After": "0"}, "busy"),
            Reply(500, {}, "oops"),
            Reply(200, {}, "{}"),
        ]
    )
    uploader, metrics = make(store, transport)
    await run_until(uploader, transport, 4)
    assert len(set(transport.bodies)) == 1  # byte-identical re-sends
    header, _ = batchfmt.decode(transport.bodies[0])
    assert (header.device, header.seq, header.samples) == ("dev-1", 1, 300)
    assert store.totals.samples == 0
    assert metrics.uploaded_samples._value.get() == 300


async def test_unauthorised_keeps_the_data(store):
    await store.call(store.append, scrape(0), 0, NOW)
    transport = ScriptedTransport([Reply(401, {}, "unknown token")] * 1000)
    uploader, _ = make(store, transport, backoff_max=timedelta(seconds=0.01))
    await run_until(uploader, transport, 2)
    assert store.totals.samples == 100
    assert "token" in (uploader.last_error or "")


async def test_a_refused_batch_is_split_and_only_the_bad_chunk_dropped(store):
    # Two big chunks (not merged at seal time), the collector refuses any batch holding the first.
    big = {(("__name__", f"m{i}"),): ([NOW], [float(i)]) for i in range(60_000)}
    await store.call(store.append, big, 0, NOW)
    await store.call(store.append, scrape(1), 0, NOW)
    store.target_samples = 1000  # so neither chunk counts as small
    first_chunk_len = None

    class Picky(ScriptedTransport):
        async def send(self, header: BatchHeader, frames: list[bytes]) -> Reply:
            nonlocal first_chunk_len
            body = batchfmt.encode(header, frames)
            self.bodies.append(body)
            self.sent.set()
            header, _ = batchfmt.decode(body)
            first_chunk_len = first_chunk_len or header.chunk_sizes[0]
            if first_chunk_len in header.chunk_sizes:
                return Reply(400, {}, "chunk 0: bad")
            return Reply(200, {}, "{}")

    transport = Picky([])
    uploader, metrics = make(store, transport)
    await run_until(uploader, transport, 3)
    assert metrics.rejected._value.get() == 60_000
    assert store.totals.samples == 0
    assert (await store.call(store.counters))["rejected_samples"] == 60_000


def test_backoff_grows_with_jitter_and_caps():
    backoff = Backoff(1, 8, rng=lambda: 1.0)
    assert [backoff.next() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    backoff.reset()
    low = Backoff(1, 8, rng=lambda: 0.0)
    assert [low.next() for _ in range(3)] == [1, 1, 2]


def test_retry_after_accepts_seconds_and_http_dates():
    now = 1_700_000_000.0
    assert retry_after({"Retry-After": "7"}, now) == 7
    assert retry_after({"Retry-After": email.utils.formatdate(now + 30, usegmt=True)}, now) == pytest.approx(30, abs=1)
    assert retry_after({"Retry-After": "soon"}, now) is None
    assert retry_after({}, now) is None


async def test_a_buffer_error_while_sealing_does_not_stop_the_uploader(store, monkeypatch):
    from backhaul.errors import StoreError

    await store.call(store.append, scrape(0), 0, NOW)
    real_claim = store.claim
    calls = []

    def flaky_claim(*args):
        calls.append(args)
        if len(calls) == 1:
            raise StoreError("sqlite: database or disk is full", transient=True)
        return real_claim(*args)

    monkeypatch.setattr(store, "claim", flaky_claim)
    transport = ScriptedTransport([])
    uploader, _ = make(store, transport)
    await run_until(uploader, transport, 1)
    assert len(calls) >= 2
    assert store.totals.samples == 0  # delivered after the error


async def test_a_batch_whose_link_went_down_goes_over_the_next_link_at_once(store):
    """Two links, a transport each: wifi fails as its interface goes away; the same batch goes over lte
    without waiting out a long backoff, its header names lte, and each link counts its own bytes."""
    down: dict[str, str] = {}
    settings = UplinkSettings.model_validate(
        {
            "url": "http://collector.invalid/api/v1/batches",
            "token": "t",
            "batch_interval": 0,
            "backoff_min": 10,  # a backoff would outlast the test
            "backoff_max": 30,
            "links": [{"name": "wifi", "interface": "wlan0"}, {"name": "lte", "interface": "wwan0"}],
        }
    )
    links = Links(settings, make=lambda s, name, clock: Link(s, name, clock, interface_state=down.get))
    await store.call(store.append, scrape(0), 0, NOW)

    class Dropping(ScriptedTransport):
        async def send(self, header: BatchHeader, frames: list[bytes]) -> Reply:
            down["wlan0"] = "down"  # the interface goes while the request is out
            for _ in range(3):
                self.answers.append(PeerError("connection", "network unreachable"))
            return await super().send(header, frames)

    wifi, lte = Dropping([]), ScriptedTransport([])
    metrics = UplinkMetrics(CollectorRegistry())
    uploader = Uploader(settings, "dev-1", store, {"wifi": wifi, "lte": lte}, metrics, link=links)
    await run_until(uploader, lte, 1, limit=5)
    assert len(wifi.bodies) == 1 and len(lte.bodies) == 1
    (sent_wifi, _), (sent_lte, _) = batchfmt.decode(wifi.bodies[0]), batchfmt.decode(lte.bodies[0])
    assert sent_wifi.seq == sent_lte.seq  # the same sealed batch
    assert (sent_wifi.uplink["link"], sent_lte.uplink["link"]) == ("wifi", "lte")
    assert uploader.link.name == "lte" and store.totals.samples == 0
    assert metrics.link_switches.labels("wifi", "lte")._value.get() == 1
