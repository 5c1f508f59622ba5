"""The fleet page an operator works from (issue 14): flags, filters in the address, clock offset,
inference state and TTFT, model drift per model name, and the device page with its charts, rendered
by a real headless Chromium; screenshots are kept under test-output/."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backhaul.wire import alert as wire
from backhaul.wire import batch as batchfmt
from backhaul.wire.alert import AlertMessage
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, sample_count
from collector.app import Collector
from collector.config import CollectorSettings
from collector.fleet_ops import quantile
from tests.fleet.test_fleet_page import REPO, Clock, Rows, as_operator, chromium, png_size
from tests.support import READ, READ_HEADERS

TOKENS = {"edge-a": "tok-a", "edge-b": "tok-b", "edge-c": "tok-c"}
HOUR_MS = 3_600_000
# The proxy's TTFT buckets of edge-a over the last hour: 10 requests under 0.1 s, 10 more under 0.5 s.
TTFT = {"0.1": 10.0, "0.5": 20.0, "1.0": 20.0, "+Inf": 20.0}


def name(metric: str, **labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"__name__": metric, **labels}.items()))


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """Three devices over the last day (the collector's clock moved hour by hour):

    - edge-a: yolo 8.1, inference up, TTFT p50 0.1 s, an alert that fired and resolved; its uploads
      came over depot Wi-Fi until 8 hours ago, over LTE since
    - edge-b: yolo 8.0 (model drift: the fleet runs 8.1), its clock 2 minutes ahead, inference crash loop
    - edge-c: yolo 8.1, its oldest unsent sample 2 hours old (behind)
    """
    now = time.time()
    clock = Clock(now - 23 * 3600)
    settings = CollectorSettings.model_validate(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "store": {"path": str(tmp_path / "collector.db"), "synchronous": "NORMAL"},
            "devices": [{"id": d, "token": t} for d, t in TOKENS.items()],
            "read": READ,
        }
    )
    async with Collector(settings, clock=clock) as collector, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{collector.port}"
        seqs = dict.fromkeys(TOKENS, 0)

        async def upload(device: str, series: SeriesMap, skew_ms: int = 0, **header: Any) -> None:
            seqs[device] += 1
            at = int(clock.now * 1000)
            head = batchfmt.BatchHeader(
                device=device,
                buffer_id="buf-1",
                seq=seqs[device],
                sent_at_ms=at + skew_ms,
                samples=sample_count(series),
                agent_version="1.0.0",
                **header,
            )
            body = batchfmt.encode(head, [Codec().encode(series)])
            hdrs = {"Authorization": f"Bearer {TOKENS[device]}", "Content-Type": batchfmt.CONTENT_TYPE}
            async with session.post(f"{url}/api/v1/batches", data=body, headers=hdrs) as resp:
                assert resp.status == 200, await resp.text()

        for hour in range(24):
            clock.now = now - (23 - hour) * 3600
            at = int(clock.now * 1000)
            # edge-a: a backlog that builds up in the afternoon and drains; data 30 s old on arrival
            series: SeriesMap = {name("load", device="a"): ([at - 30_000], [float(hour)])}
            link = {"link": "depot-wifi" if hour < 16 else "lte"}
            await upload(
                "edge-a", series, backlog_bytes=(hour % 12) * 100_000, backlog_oldest_ms=at - 30_000, uplink=link
            )
            await upload("edge-b", {name("load", device="b"): ([at - 1000], [1.0])}, skew_ms=120_000)
        at = int(now * 1000)
        model = "backhaul_model_info"
        ttft = "backhaul_proxy_time_to_first_token_seconds_bucket"
        await upload(
            "edge-a",
            {
                name(model, model="yolo", version="8.1"): ([at - 1000], [1.0]),
                name("backhaul_inference_up"): ([at - 1000], [1.0]),
                name("backhaul_inference_crash_loop"): ([at - 1000], [0.0]),
                **{name(ttft, le=le): ([at - 50 * 60_000, at - 1000], [0.0, n]) for le, n in TTFT.items()},
            },
        )
        await upload(
            "edge-b",
            {
                name(model, model="yolo", version="8.0"): ([at - 1000], [1.0]),
                name("backhaul_inference_up"): ([at - 1000], [0.0]),
                name("backhaul_inference_crash_loop"): ([at - 1000], [1.0]),
                name("backhaul_inference_restarts_total"): ([at - 1000], [7.0]),
            },
            skew_ms=120_000,
        )
        await upload(
            "edge-c",
            {name(model, model="yolo", version="8.1"): ([at - 1000], [1.0])},
            backlog_bytes=3_000_000,
            backlog_oldest_ms=at - 2 * HOUR_MS,
        )
        # edge-a: an alert that fired and resolved in the last day
        for state, ts in (("firing", at - 5 * HOUR_MS), ("resolved", at - 4 * HOUR_MS)):
            msg = AlertMessage("edge-a", "GpuHot", state, "warning", 91.0, ts, 1 if state == "firing" else 2, 7, "hot")
            hdrs = {"Authorization": "Bearer tok-a", "Content-Type": wire.CONTENT_TYPE}
            body = wire.encode(msg, wire.token_key("tok-a"))
            async with session.post(f"{url}/api/v1/alerts", data=body, headers=hdrs) as resp:
                assert resp.status == 200, await resp.text()
        yield url, at


def test_quantile_follows_histogram_quantile() -> None:
    assert quantile(0.5, [(0.1, 10.0), (0.5, 20.0), (float("inf"), 20.0)]) == pytest.approx(0.1)
    assert quantile(0.75, [(0.1, 10.0), (0.5, 20.0), (float("inf"), 20.0)]) == pytest.approx(0.3)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


async def get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url, headers=READ_HEADERS) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_fleet_api_flags_each_device(fleet: tuple[str, int]) -> None:
    url, _ = fleet
    data = await get(f"{url}/api/v1/fleet")
    devices = {d["device"]: d for d in data["devices"]}
    a, b, c = devices["edge-a"], devices["edge-b"], devices["edge-c"]
    assert data["common_model_versions"] == {"yolo": "8.1"}
    assert b["model_drift"] and not a["model_drift"] and not c["model_drift"]
    assert b["common_model_version"] == "8.1"
    # edge-b's clock is 120 s ahead (its send time against the arrival: no transit time in-process)
    assert b["clock_offset_s"] == pytest.approx(120, abs=1) and abs(a["clock_offset_s"]) < 1
    assert a["inference"]["state"] == "up" and b["inference"] == {"state": "crash_loop", "restarts": 7}
    assert c["inference"]["state"] is None  # its agent reports no inference server
    assert a["ttft_p50_s"] == pytest.approx(0.1) and b["ttft_p50_s"] is None
    assert b["flags"] == {
        "offline": False,
        "behind": False,
        "over_budget": False,
        "skewed": True,
        "crash_looping": True,
        "drift": True,
    }
    assert c["flags"]["behind"] and not a["flags"]["behind"]
    assert not any(a["flags"].values())


async def test_device_api_has_its_last_day(fleet: tuple[str, int]) -> None:
    url, at = fleet
    data = await get(f"{url}/api/v1/fleet/edge-a")
    assert data["device"]["device"] == "edge-a"
    rows = data["history"]
    assert 23 <= len(rows) <= 25  # a five-minute row for each hour's batch (and the last one)
    assert all(at - 24 * HOUR_MS - 300_000 <= r["bucket_ms"] <= at for r in rows)
    assert {r["lag_ms"] for r in rows[:-1]} == {30_000}
    assert max(r["backlog_bytes"] for r in rows) == 1_100_000
    assert [a["state"] for a in data["alerts"]] == ["resolved"]
    assert [(s["from"], s["to"]) for s in data["link_switches"]] == [("depot-wifi", "lte")]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v1/fleet/nobody", headers=READ_HEADERS) as resp:
            assert resp.status == 404
        async with session.get(f"{url}/api/v1/fleet/edge-a") as resp:
            assert resp.status == 401  # behind the read credential like the rest of the fleet


def keep(shot: Path, name: str) -> Path:
    data = shot.read_bytes()
    assert png_size(data) == (1400, 900) and len(data) > 10_000
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    shutil.copy(shot, out / name)
    return out / name


@pytest.mark.integration
async def test_filters_in_the_address_and_the_device_page_in_chromium(fleet: tuple[str, int], tmp_path: Path) -> None:
    url, _ = fleet
    page = f"{as_operator(url)}/fleet"
    dom = Rows()
    dom.feed((await chromium(tmp_path, "--dump-dom", page)).decode())
    rows = {r["device"]: r for r in dom.rows}
    assert sorted(rows) == ["edge-a", "edge-b", "edge-c"]
    b = rows["edge-b"]
    assert "drift model-drift" in b["spans"] and "drift model-drift" not in rows["edge-a"]["spans"]
    assert "".join(b["cells"]["inference"]).startswith("crash loop")
    assert "".join(b["cells"]["num clock-offset"]).startswith("+2 min")
    assert "skewed" in "".join(b["cells"]["num clock-offset"])
    assert "".join(rows["edge-a"]["cells"]["num ttft"]) == "100 ms"
    assert "behind" in "".join(rows["edge-c"]["cells"]["num oldest"])
    assert "".join(rows["edge-c"]["cells"]["link na"]) == "n/a"

    for query, expected in (("drift", ["edge-b"]), ("behind", ["edge-c"]), ("drift,behind", []), ("offline", [])):
        dom = Rows()
        dom.feed((await chromium(tmp_path, "--dump-dom", f"{page}?filter={query}")).decode())
        assert [r["device"] for r in dom.rows] == expected, query

    shot = tmp_path / "fleet.png"
    await chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", page)
    keep(shot, "fleet-operator.png")
    await chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", f"{page}?filter=drift")
    keep(shot, "fleet-filter-drift.png")

    device = f"{page}/edge-a"
    html = (await chromium(tmp_path, "--dump-dom", device)).decode()
    assert 'id="chart-backlog"' in html and 'id="chart-bytes"' in html and 'id="chart-freshness"' in html
    assert html.count('class="bar"') >= 20  # bytes per hour: a bar for (nearly) every hour
    assert html.count('class="line"') == 2  # backlog and freshness
    assert "GpuHot" in html and "resolved" in html
    assert "depot-wifi" in html and "lte" in html  # its link switch
    assert 'data-loaded="true"' in html
    await chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", device)
    keep(shot, "fleet-device.png")
