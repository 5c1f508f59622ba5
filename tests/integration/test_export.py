"""The export's guard rails on a real collector process: limits answered 422 naming the limit before
anything is sent, times that are no times answered 400 naming the field, regular expressions in
linear time (RE2, fully anchored), and ``/healthz`` answering within 100 ms while a large export runs
(the 95th percentile: a busy shared machine may delay one answer, a blocked event loop delays all)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap
from collector.store.chunks import from_series
from collector.store.sqlite import SqliteStore
from tests.conftest import Running
from tests.support import READ_HEADERS, TOKEN, exported_samples, http

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)


def rw_series(n: int, per_series: int) -> SeriesMap:
    return {
        (("__name__", "limits_metric"), ("i", f"{i:03d}"), ("job", "node")): (
            [NOW - 1000 * (per_series - k) for k in range(per_series)],
            [float(i * 100 + k) for k in range(per_series)],
        )
        for i in range(n)
    }


def store_directly(path: Path, series: SeriesMap, device: str = "dev-1", per_chunk: int = 100) -> None:
    """Fill a store file before the collector starts (what uploads would have left in it), in chunks
    of ``per_chunk`` series."""

    async def fill() -> None:
        store = SqliteStore(path, "NORMAL")
        await store.open()
        items = list(series.items())
        try:
            for i in range(0, len(items), per_chunk):
                await store.ingest(device, from_series(dict(items[i : i + per_chunk]), Codec()), NOW)
        finally:
            await store.close()

    asyncio.run(fill())


def export(url: str, selector: str, **params: str) -> tuple[int, str]:
    query = urllib.parse.urlencode({"match[]": selector, **params})
    status, body, _ = http("GET", f"{url}/api/v1/export?{query}", headers=READ_HEADERS, timeout=60)
    return status, body.decode(errors="replace")


def test_limits_are_422_naming_the_limit_before_anything_is_sent(
    start_collector: Callable[..., Running], tmp_path: Path
) -> None:
    store_directly(tmp_path / "collector.db", rw_series(12, 20))
    collector = start_collector(export={"max_series": 10, "max_samples": 150, "unbounded_max_samples": 50})
    status, text = export(collector.url, "limits_metric")
    assert status == 422 and "max_series" in text, text
    status, text = export(collector.url, '{__name__="limits_metric",i=~"00[0-8]"}', start="0", end=str(NOW))
    assert status == 422 and "max_samples" in text, text  # 9 series x 20 samples
    status, text = export(collector.url, '{__name__="limits_metric",i=~"00[0-2]"}')
    assert status == 422 and "unbounded_max_samples" in text and "start and end" in text, text
    status, text = export(collector.url, '{__name__="limits_metric",i=~"00[0-2]"}', start="0", end=str(NOW / 1000))
    assert status == 200 and text.count("\n") == 3, text
    # within every limit, no range needed
    assert len(exported_samples(collector.url, '{__name__="limits_metric",i="001"}')) == 1


def test_an_export_spanning_more_tables_than_allowed_is_422_unless_a_label_narrows_it(
    start_collector: Callable[..., Running], tmp_path: Path
) -> None:
    store_directly(tmp_path / "collector.db", rw_series(12, 20), per_chunk=4)  # three series tables
    collector = start_collector(export={"max_tables": 2})
    status, text = export(collector.url, "limits_metric")
    assert status == 422 and "max_tables" in text and "more than 2 stored series tables" in text, text
    # the label index finds the one table that holds i="001"
    assert len(exported_samples(collector.url, '{__name__="limits_metric",i="001"}')) == 1


def test_an_end_before_the_start_is_400_naming_it(start_collector: Callable[..., Running]) -> None:
    collector = start_collector()
    status, text = export(collector.url, "limits_metric", start="2000", end="1000")
    assert status == 400 and "end" in text and "before start" in text, text
    assert export(collector.url, "limits_metric", start="1000", end="1000")[0] == 200  # one instant: fine


@pytest.mark.parametrize("field", ["start", "end"])
@pytest.mark.parametrize("value", ["99999999999999999999", "inf", "-inf", "1e400", "-1e309", "nan", "yesterday"])
def test_times_that_are_no_times_are_400_naming_the_field(
    start_collector: Callable[..., Running], field: str, value: str, tmp_path: Path
) -> None:
    collector = start_collector()
    status, text = export(collector.url, '{__name__="x"}', **{field: value})
    assert status == 400, text
    assert text.startswith(f"{field}:"), text
    assert "Traceback" not in (tmp_path / "collector.log").read_text()


def test_regular_expressions_run_in_linear_time_fully_anchored(
    start_collector: Callable[..., Running], tmp_path: Path
) -> None:
    series = rw_series(3, 2)
    series[(("__name__", "limits_metric"), ("job", "a" * 40))] = ([NOW], [1.0])
    store_directly(tmp_path / "collector.db", series)
    collector = start_collector()
    started = time.monotonic()
    status, text = export(collector.url, '{job=~"(.*.*)*X"}')  # Python's re: minutes at 40 characters
    assert (status, text) == (200, "")
    assert time.monotonic() - started < 2
    assert len(exported_samples(collector.url, '{job=~"no.*"}')) == 3
    assert exported_samples(collector.url, '{job=~"nod"}') == {}  # anchored: "nod" is not "node"
    assert exported_samples(collector.url, '{__name__="limits_metric",job!~"node|a+"}') == {}
    status, text = export(collector.url, '{job=~"(?<=a)b"}')  # not RE2 (nor PromQL) syntax
    assert status == 400 and "bad regular expression" in text, text


def test_healthz_answers_within_100_ms_while_a_large_export_runs(
    start_collector: Callable[..., Running], tmp_path: Path
) -> None:
    per_series = 600
    series: SeriesMap = {
        (("__name__", f"big_{i % 50}"), ("i", str(i)), ("job", "node")): (
            [NOW - 15_000 * (per_series - k) for k in range(per_series)],
            [float((i * 7919 + k * 104729) % 1_000_003) / 8 for k in range(per_series)],
        )
        for i in range(2000)
    }
    store_directly(tmp_path / "collector.db", series)  # 1.2 M samples
    collector = start_collector(export={"max_samples": 2_000_000, "unbounded_max_samples": 2_000_000})
    done = threading.Event()
    result: list[tuple[int, int]] = []

    def run_export() -> None:
        status, body, _ = http(
            "GET", f"{collector.url}/api/v1/export?match[]=%7Bjob%3D%22node%22%7D", headers=READ_HEADERS, timeout=300
        )
        result.append((status, body.count(b"\n")))
        done.set()

    threading.Thread(target=run_export, daemon=True).start()
    latencies = []
    time.sleep(0.05)
    while not done.is_set():
        started = time.perf_counter()
        status, _, _ = http("GET", f"{collector.url}/healthz", timeout=10)
        latencies.append(time.perf_counter() - started)
        assert status == 200
        time.sleep(0.02)
    assert result == [(200, 2000)]
    assert len(latencies) >= 10, "the export ended before /healthz was asked often enough"
    latencies.sort()
    p95 = latencies[int(0.95 * len(latencies))]
    print(
        f"\n{len(latencies)} /healthz during the export: p95 {p95 * 1000:.1f} ms, slowest {latencies[-1] * 1000:.1f} ms"
    )
    # A blocked event loop delays every answer; the machine's other load (a shared CI host) can
    # delay one: hence the 95th percentile under 100 ms, and none near a second.
    assert p95 < 0.1, f"/healthz p95 {p95 * 1000:.0f} ms during the export"
    assert latencies[-1] < 0.5, f"slowest /healthz {latencies[-1] * 1000:.0f} ms during the export"


def test_plain_remote_write_ends_in_chunks(start_collector: Callable[..., Running], tmp_path: Path) -> None:
    from backhaul.wire import remote_write as rw

    collector = start_collector()
    headers = {
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
        "Authorization": f"Bearer {TOKEN}",
    }
    for body in rw.encode(rw_series(4, 3), 5):
        assert http("POST", f"{collector.url}/api/v1/write", body, headers)[0] == 204
    import sqlite3

    with sqlite3.connect(tmp_path / "collector.db") as db:
        assert db.execute("SELECT sum(samples) FROM chunks").fetchone()[0] == 12
        assert {r[0] for r in db.execute("SELECT name FROM sqlite_master")} >= {"chunks", "chunk_data"}
