"""The fleet page and its JSON API: built from what the store holds, rendered by a real headless
Chromium (Debian's ``chromium``), which runs the page's JavaScript against the live collector."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import struct
import time
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage
from collector.app import Collector
from collector.config import CollectorSettings
from collector.fleet import common_version
from tests.conftest import Running
from tests.fleet.batches import batch_body, headers, series_for
from tests.support import READ, READ_HEADERS, READ_TOKEN, http, push, require_program, wait_until

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"edge-old": "tok-old", "edge-a": "tok-a", "edge-b": "tok-b", "edge-gone": "tok-gone"}
MIB = 1024 * 1024


class Clock:
    """The collector's wall clock, moved by the test: "ten minutes later" without waiting."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[str, Clock]]:
    """A collector (in this process, so its clock can move) with a small fleet that uploaded:

    - edge-old: agent 0.9.0 (drift), last seen 10 minutes ago (offline), 5 MiB backlog 2 h old
    - edge-a, edge-b: agent 1.0.0, online; edge-b ran two models, the newer one counts
    - edge-gone: revoked;  edge-new: registered, never uploaded
    """
    start = time.time()
    clock = Clock(start - 600)
    settings = CollectorSettings.model_validate(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "store": {"path": str(tmp_path / "collector.db"), "synchronous": "NORMAL"},
            "fleet": {"offline_after": "PT5M"},
            "devices": [{"id": d, "token": t} for d, t in TOKENS.items()],
            "read": READ,
        }
    )
    async with Collector(settings, clock=clock) as collector, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{collector.port}"

        async def upload(device: str, seq: int, extra: dict[Any, Any] | None = None, **header: Any) -> None:
            series = {**series_for(device, seq, n_series=3, per_series=2), **(extra or {})}
            body = batch_body(device, seq, series, **header)
            async with session.post(f"{url}/api/v1/batches", data=body, headers=headers(TOKENS[device])) as resp:
                assert resp.status == 200, await resp.text()

        now_ms = int(start * 1000)
        await upload(
            "edge-old",
            1,
            agent_version="0.9.0",
            backlog_bytes=5 * MIB,
            backlog_oldest_ms=now_ms - 7_200_000,
            evicted_samples=1234,
            # a depot Wi-Fi window that closed an hour ago and opens again in two
            uplink={"spent_day": 3 * MIB, "budget_day": 0, "window_ends_ms": now_ms - 3_600_000,
                    "next_window_ms": now_ms + 7_200_000, "blocked": ""},
        )  # fmt: skip
        clock.now = start
        model = ("__name__", "backhaul_model_info")
        await upload(
            "edge-a",
            1,
            {(model, ("model", "yolo"), ("version", "8.1")): ([now_ms - 1000], [1.0])},
            agent_version="1.0.0",
            backlog_bytes=2048,
            backlog_oldest_ms=now_ms - 30_000,
            # an LTE plan: 85 % of the day's budget spent, throttled by the cap
            uplink={"spent_day": int(8.5 * MIB), "budget_day": 10 * MIB, "spent_month": 80 * MIB,
                    "budget_month": 500 * MIB, "blocked": "cap", "link": "lte"},
        )  # fmt: skip
        await upload(
            "edge-b",
            1,
            {
                (model, ("model", "resnet"), ("version", "1.0")): ([now_ms - 60_000], [1.0]),
                (model, ("model", "resnet"), ("version", "2.0")): ([now_ms - 5000], [1.0]),
            },
            agent_version="1.0.0",
        )
        await upload("edge-gone", 1, agent_version="1.0.0")
        for rule, severity in (("DiskLow", "critical"), ("GpuHot", "warning")):
            firing = AlertMessage("edge-a", rule, "firing", severity, 97.0, now_ms - 1000, len(rule), len(rule), "97 %")
            alert_headers = {"Authorization": "Bearer tok-a", "Content-Type": wire.CONTENT_TYPE}
            body = wire.encode(firing, wire.token_key(TOKENS["edge-a"]))
            async with session.post(f"{url}/api/v1/alerts", data=body, headers=alert_headers) as resp:
                assert resp.status == 200, await resp.text()
        await collector.store.revoke("edge-gone", now_ms)
        await collector.store.register("edge-new", hashlib.sha256(b"tok-new").hexdigest(), now_ms)
        yield url, clock


async def test_fleet_api_reports_each_device(fleet: tuple[str, Clock]) -> None:
    url, _ = fleet
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v1/fleet", headers=READ_HEADERS) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["common_agent_version"] == "1.0.0"
    assert data["offline_after_s"] == 300
    devices = {d["device"]: d for d in data["devices"]}
    assert sorted(devices) == ["edge-a", "edge-b", "edge-gone", "edge-new", "edge-old"]
    old, a, b = devices["edge-old"], devices["edge-a"], devices["edge-b"]
    assert not old["online"] and a["online"] and b["online"]
    assert 599 <= old["last_seen_age_s"] <= 601
    assert old["version_drift"] and not a["version_drift"]
    assert old["backlog_bytes"] == 5 * MIB and 7199 <= old["backlog_age_s"] <= 7201
    assert old["evicted_samples"] == 1234
    assert (a["model_name"], a["model_version"]) == ("yolo", "8.1")
    assert (b["model_name"], b["model_version"]) == ("resnet", "2.0")  # the newest model-info series
    assert old["model_name"] == "" and old["alerts_firing"] == []
    assert devices["edge-gone"]["revoked"]
    assert devices["edge-new"]["last_seen_ms"] is None and not devices["edge-new"]["online"]


async def test_fleet_api_reports_each_devices_link(fleet: tuple[str, Clock]) -> None:
    url, _ = fleet
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v1/fleet", headers=READ_HEADERS) as resp:
        devices = {d["device"]: d for d in (await resp.json())["devices"]}
    a, old, b = devices["edge-a"]["uplink"], devices["edge-old"]["uplink"], devices["edge-b"]["uplink"]
    assert (a["spent_day"], a["budget_day"], a["budget_month"]) == (int(8.5 * MIB), 10 * MIB, 500 * MIB)
    assert a["blocked"] == "cap" and a["next_window_ms"] is None
    # the window its last batch went in has closed: held by the window until the next one
    assert old["blocked"] == "window" and 7199 <= old["next_window_in_s"] <= 7201
    assert b["spent_day"] is None and b["blocked"] == ""  # an agent that reports no link


class Rows(HTMLParser):
    """The fleet table as rendered: per row, its classes and each cell's text and classes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self._cell: list[str] | None = None
        self.summary: dict[str, str] = {}
        self._summary_id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-device" in a:
            self.rows.append({"device": a["data-device"], "class": a.get("class") or "", "cells": {}, "spans": []})
        elif tag == "td" and self.rows and self._cell is None:
            self._cell = []
            self.rows[-1]["cells"][a.get("class") or str(len(self.rows[-1]["cells"]))] = self._cell
        elif tag == "span" and self.rows and self._cell is not None:
            self.rows[-1]["spans"].append(a.get("class") or "")
        elif tag == "b" and (a.get("id") or "").startswith("count-"):
            self._summary_id = a["id"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._summary_id:
            self.summary[self._summary_id] = data
            self._summary_id = None


def as_operator(url: str) -> str:
    """``url`` with the harness's read token as basic-auth password, as a person logs in with a browser."""
    return url.replace("http://", f"http://operator:{READ_TOKEN}@", 1)


async def chromium(tmp_path: Path, *args: str) -> bytes:
    """Run headless Chromium to completion (its own profile folder; killed if it hangs)."""
    program = require_program("chromium")
    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    proc = await asyncio.create_subprocess_exec(
        program,
        "--headless=new",
        "--no-sandbox",  # as root, in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        # let the page's fetch and rendering finish (virtual time skips idle waits)
        "--virtual-time-budget=5000",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.integration
async def test_fleet_page_renders_in_chromium(fleet: tuple[str, Clock], tmp_path: Path) -> None:
    url, _ = fleet
    async with aiohttp.ClientSession() as session, session.get(f"{url}/fleet", headers=READ_HEADERS) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"

    dom = Rows()
    dom.feed((await chromium(tmp_path, "--dump-dom", f"{as_operator(url)}/fleet")).decode())
    rows = {r["device"]: r for r in dom.rows}
    assert list(rows) == ["edge-a", "edge-b", "edge-gone", "edge-new", "edge-old"]  # sorted by device
    old = rows["edge-old"]
    assert "is-offline" in old["class"] and "state offline" in old["spans"]
    assert "drift" in old["spans"] and "drift" not in rows["edge-a"]["spans"]
    assert "".join(old["cells"]["agent-version"]).startswith("0.9.0")
    assert "state online" in rows["edge-a"]["spans"]
    assert "state revoked" in rows["edge-gone"]["spans"]
    assert "state never" in rows["edge-new"]["spans"]
    assert "".join(rows["edge-b"]["cells"]["model"]) == "resnet"
    # alert badges: what a person reads is each firing rule's name (not the API's JSON)
    assert sorted(rows["edge-a"]["cells"]["alerts"]) == ["DiskLow", "GpuHot"]
    assert {"alert critical", "alert warning"} <= set(rows["edge-a"]["spans"])
    assert rows["edge-b"]["cells"]["alerts"] == []
    assert "".join(rows["edge-b"]["cells"]["model-version"]) == "2.0"
    assert "".join(rows["edge-a"]["cells"]["num uplink-spent"]) == "8.5 MiB / 10.0 MiB"
    assert "".join(rows["edge-a"]["cells"]["link"]) == "lte"  # the link its agent named (issue 14)
    assert "meter high" in rows["edge-a"]["spans"] and "held held-cap" in rows["edge-a"]["spans"]
    assert "".join(rows["edge-old"]["cells"]["num next-window"]) == "in 2.0 h"
    assert "held held-window" in rows["edge-old"]["spans"]
    assert dom.summary == {
        "count-devices": "5",
        "count-online": "2",
        "count-offline": "1",
        "count-never-seen": "1",
        "count-revoked": "1",
        "count-version-drift": "1",
    }

    # sorted by backlog, largest first (the order a column click gives, kept in the address)
    dom = Rows()
    dom.feed((await chromium(tmp_path, "--dump-dom", f"{as_operator(url)}/fleet?sort=backlog_bytes&dir=desc")).decode())
    assert [r["device"] for r in dom.rows][:2] == ["edge-old", "edge-a"]

    shot = tmp_path / "fleet.png"
    await chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,800", f"{as_operator(url)}/fleet")
    data = shot.read_bytes()
    assert png_size(data) == (1280, 800) and len(data) > 10_000
    # Kept with the test output (git-ignored), for a human or a CI artifact to look at.
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    shutil.copy(shot, out / "fleet.png")


@pytest.mark.integration
def test_a_real_agent_reports_its_backlog(
    start_collector: Callable[..., Running], start_agent: Callable[..., Running]
) -> None:
    collector = start_collector()
    agent = start_agent(collector.url)
    stamp = int(time.time() * 1000) - 60_000
    assert push(agent.url, {(("__name__", "up"), ("job", "x")): ([stamp], [1.0])}) == [204]

    def dev1() -> dict[str, Any] | None:
        _, body, _ = http("GET", f"{collector.url}/api/v1/fleet", headers=READ_HEADERS)
        # samples > 0: the agent's first batch may be an empty one that settles its clock (docs/clock.md)
        found = [d for d in json.loads(body)["devices"] if d["device"] == "dev-1" and d["samples"] > 0]
        return found[0] if found else None

    seen = wait_until(dev1, 20, "dev-1's first batch with samples")
    assert seen["online"] and seen["agent_version"]
    # the batch reported what was waiting when it was sent: itself, oldest sample first
    assert seen["backlog_bytes"] > 0
    assert seen["backlog_oldest_ms"] == stamp


class DevTools:
    """Just enough of the Chrome DevTools protocol to run JavaScript in a page and read the result."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = iter(range(1, 1_000_000))

    async def evaluate(self, expression: str) -> Any:
        call = next(self._ids)
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        await self._ws.send_json({"id": call, "method": "Runtime.evaluate", "params": params})
        while True:
            msg = await self._ws.receive_json(timeout=30)
            if msg.get("id") == call:
                if "error" in msg:  # e.g. the page navigated while evaluating
                    raise RuntimeError(msg["error"])
                assert "exceptionDetails" not in msg["result"], msg
                return msg["result"]["result"].get("value")

    async def wait_for(self, condition: str) -> None:
        async with asyncio.timeout(30):
            while True:
                try:
                    if await self.evaluate(condition):
                        return
                except RuntimeError:
                    pass  # still loading: no (stable) document yet
                await asyncio.sleep(0.05)


@pytest.mark.integration
async def test_clicking_a_column_sorts_by_it(fleet: tuple[str, Clock], tmp_path: Path) -> None:
    url, _ = fleet
    program = require_program("chromium")
    profile = tmp_path / "chromium-devtools"
    proc = await asyncio.create_subprocess_exec(
        program,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",  # Chromium picks a port and writes it to DevToolsActivePort
        f"{as_operator(url)}/fleet",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tools = DevTools(ws)
                await tools.wait_for("document.body && document.body.dataset.loaded === 'true'")
                click = (
                    "document.querySelector('th[data-key=\"{key}\"]').click();"
                    "[...document.querySelectorAll('#fleet tbody tr')].map(r => r.dataset.device)"
                )
                order = await tools.evaluate(click.replace("{key}", "backlog_bytes"))
                assert order[-2:] == ["edge-a", "edge-old"]  # ascending: the biggest backlog last
                order = await tools.evaluate(click.replace("{key}", "backlog_bytes"))
                assert order[:2] == ["edge-old", "edge-a"]  # a second click: descending
                assert await tools.evaluate("location.search") == "?sort=backlog_bytes&dir=desc"
                aria = "document.querySelector('th[data-key=\"backlog_bytes\"]').getAttribute('aria-sort')"
                assert await tools.evaluate(aria) == "descending"
                # never-seen devices sort last either way
                order = await tools.evaluate(click.replace("{key}", "last_seen_age_s"))
                assert order[0] != "edge-new" and order[-1] == "edge-new"
                order = await tools.evaluate(click.replace("{key}", "last_seen_age_s"))
                assert order[0] == "edge-old" and order[-1] == "edge-new"
    finally:
        proc.terminate()  # lets Chromium take its helper processes down with it
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def test_common_version_is_the_most_frequent_and_stable_on_ties() -> None:
    assert common_version(["1.0", "1.0", "0.9", ""]) == "1.0"
    assert common_version(["0.9", "1.0"]) == "1.0"  # a tie: the higher version string
    assert common_version(["", ""]) == ""
