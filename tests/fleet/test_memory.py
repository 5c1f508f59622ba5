"""A collector on a store of a million series stays within 200 MB of resident memory while it takes
uploads, serves the fleet page and exports across every device: nothing in it grows with the number
of series stored (the caches are bounded; the store keeps no structure per series in memory)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap
from collector.store.chunks import from_series
from collector.store.sqlite import SqliteStore
from tests.conftest import Running
from tests.fleet.batches import batch_body, headers, series_for
from tests.support import READ_HEADERS, http

# A million series built, stored, served and exported: minutes on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

DEVICES = 1000
SERIES = 1000  # per device: a million in all
RSS_LIMIT = 200 * 1024 * 1024
NOW = int(time.time() * 1000)


def fill(path: Path) -> None:
    """A million series (node_exporter-like label sets), two scrapes each, as uploads leave them."""

    async def run() -> None:
        store = SqliteStore(path, "NORMAL")
        await store.open()
        codec = Codec()
        try:
            for d in range(DEVICES):
                series: SeriesMap = {
                    (
                        ("__name__", f"node_metric_{i % 97}"),
                        ("cpu", str(i % 8)),
                        ("instance", f"10.{d // 250}.{d % 250}.{i // 100}:9100"),
                        ("job", "node"),
                        ("series", str(i)),
                    ): ([NOW - 30_000, NOW - 15_000], [float(i), float(i + d)])
                    for i in range(SERIES)
                }
                await store.ingest(f"edge-{d:04d}", from_series(series, codec), NOW)
        finally:
            await store.close()

    asyncio.run(run())


def test_a_million_series_stored_fit_in_200_mb(start_collector: Callable[..., Running], tmp_path: Path) -> None:
    fill(tmp_path / "collector.db")
    tokens = {f"edge-{d:04d}": f"token-{d:04d}" for d in range(0, DEVICES, 20)}
    collector = start_collector(
        devices=[{"id": d, "token": t} for d, t in tokens.items()],
        export={"max_series": 2_000_000, "max_samples": 5_000_000, "unbounded_max_samples": 5_000_000},
    )
    assert collector.proc.popen is not None
    proc = psutil.Process(collector.proc.popen.pid)
    peak = proc.memory_info().rss
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for seq in range(1, 6):  # uploads from 50 devices, each with its own series table
            for device, token in tokens.items():
                body = batch_body(device, seq, series_for(device, seq, n_series=200, per_series=4))
                status, text, _ = http("POST", f"{collector.url}/api/v1/batches", body, headers(token))
                assert status == 200, text
        for _ in range(3):
            assert http("GET", f"{collector.url}/api/v1/fleet", headers=READ_HEADERS, timeout=60)[0] == 200
        # one metric across every device: a thousand tables matched, a series from each
        query = urllib.parse.urlencode({"match[]": '{__name__="node_metric_7",cpu="7"}'})
        status, body, _ = http("GET", f"{collector.url}/api/v1/export?{query}", headers=READ_HEADERS, timeout=300)
        assert status == 200 and body.count(b"\n") == DEVICES * 2
        # every series of a hundred devices, in one answer
        query = urllib.parse.urlencode({"match[]": '{job="node",instance=~"10[.]0[.].*"}'})
        status, body, _ = http("GET", f"{collector.url}/api/v1/export?{query}", headers=READ_HEADERS, timeout=300)
        assert status == 200 and body.count(b"\n") == 250 * SERIES
    finally:
        stop.set()
        watcher.join()
    print(f"\ncollector peak RSS with {DEVICES * SERIES:,} series stored: {peak / 2**20:.0f} MB")
    assert peak <= RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MB"
