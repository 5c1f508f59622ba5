"""The agent's own sources in process: the sink's commit path and the scraper's failure handling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.app import Agent
from agent.config import AgentSettings
from agent.ingest.scrape import Scraper, Target
from backhaul.lifecycle import Jobs
from tests.support import free_port


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    settings = AgentSettings(
        device_id="dev-1",
        listen={"port": 0},
        buffer={"path": tmp_path / "buffer.db", "budget_bytes": "64MiB", "commit_delay_ms": 0},
    )
    async with Agent(settings) as running:
        yield running


def value(agent: Agent, name: str, **labels: str) -> float:
    return agent.registry.get_sample_value(name, labels) or 0.0


async def test_the_sink_commits_through_staging_and_counts_what_it_cannot_keep(agent: Agent) -> None:
    now = int(time.time() * 1000)
    fresh = (("__name__", "m"), ("job", "t"))
    stale = (("__name__", "old"), ("job", "t"))
    assert await agent.sink.commit("test", {fresh: ([now], [1.0]), stale: ([now - 8 * 86_400_000], [2.0])})
    assert agent.store.totals.samples == 1
    assert value(agent, "backhaul_source_samples_total", source="test") == 1
    assert value(agent, "backhaul_ingest_dropped_samples_total", reason="too_old") == 1
    await agent.staging.drain()  # as at shutdown: the buffer takes nothing more
    assert not await agent.sink.commit("test", {fresh: ([now + 1], [3.0])})
    assert value(agent, "backhaul_source_commit_failures_total", source="test") == 1
    assert agent.store.totals.samples == 1


@pytest.fixture
async def pages() -> AsyncIterator[str]:
    async def openmetrics(request: web.Request) -> web.Response:
        body = '# TYPE build info\nbuild_info{version="1"} 1\n# EOF\n'
        return web.Response(text=body, content_type="application/openmetrics-text")

    async def big(request: web.Request) -> web.Response:
        return web.Response(text="x 1\n" * 100_000)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="x 1\n")

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="{{{ not metrics\n")

    app = web.Application()
    app.router.add_get("/om", openmetrics)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/garbage", garbage)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "up", "error"),
    [
        ("/om", 1.0, ""),
        ("/missing", 0.0, "HTTP 404"),
        ("/big", 0.0, "exceeds"),
        ("/slow", 0.0, "timed out"),
        ("/garbage", 0.0, "unparsable"),
    ],
)
async def test_each_scrape_reports_up_and_why_it_failed(
    agent: Agent, pages: str, path: str, up: float, error: str
) -> None:
    registry = CollectorRegistry()
    scraper = Scraper([], agent.sink, registry, Jobs(CollectorRegistry()), max_body_bytes=64 * 1024)
    await scraper.start()
    try:
        target = Target("t", pages + path, interval=1, timeout=0.3, labels={"site": "s1"})
        series = await scraper.scrape(target)
    finally:
        await scraper.stop()
    by_name = {dict(k)["__name__"]: (dict(k), v) for k, v in series.items()}
    labels, (_, values) = by_name["up"]
    assert values == [up]
    assert labels == {"__name__": "up", "job": "t", "instance": target.instance, "site": "s1"}
    assert by_name["scrape_duration_seconds"][1][1][0] < 1
    assert error in scraper.last_error[target.url]
    if up:
        assert by_name["build_info"][0]["version"] == "1"
        assert by_name["scrape_samples_scraped"][1][1] == [1.0]
    assert registry.get_sample_value("backhaul_scrape_target_up", {"job": "t", "instance": target.instance}) == up


async def test_a_proxy_port_in_use_fails_the_start_and_stops_the_child(tmp_path: Path) -> None:
    import socket
    import sys

    import psutil

    child = [sys.executable, "-c", "import time; time.sleep(60)"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = AgentSettings(
            device_id="dev-1",
            listen={"port": 0},
            buffer={"path": tmp_path / "buffer.db", "budget_bytes": "64MiB"},
            inference={"command": child, "stop_grace": 1},
            proxy={"enabled": True, "port": taken.getsockname()[1]},
        )
        agent = Agent(settings)
        with pytest.raises(OSError):
            async with agent:
                pass
    assert agent.supervisor is not None and agent.supervisor.pid is not None
    pid = agent.supervisor.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    await agent.__aexit__(None, None, None)  # what a caller's cleanup would do: closes the buffer


async def test_host_sampler_with_psutil_and_a_running_tegrastats(agent: Agent, tmp_path: Path) -> None:
    import stat

    import psutil

    from agent.ingest.host import HostSampler
    from tests.inference.conftest import FIXTURES

    # No Jetson here: a stand-in prints recorded tegrastats lines at the interval it is given, as tegrastats does.
    fake = tmp_path / "tegrastats"
    lines = FIXTURES / "tegrastats-orin.txt"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --interval ] || exit 2\n'
        f"echo $$ > {tmp_path / 'tegra.pid'}\n"
        f"while true; do cat {lines}; sleep $(($2 / 1000)).$(($2 % 1000 / 100)); done\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    sampler = HostSampler(agent.sink, tmp_path, 0.2, {"job": "host", "instance": "dev-1"}, "", str(fake))
    task = asyncio.create_task(sampler.run())
    try:
        deadline = time.monotonic() + 10
        while True:
            series = await sampler.sample_once()
            names = {dict(labels)["__name__"] for labels in series}
            if "backhaul_jetson_gpu_utilization_ratio" in names or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert {
        "backhaul_host_cpu_seconds_total",
        "backhaul_host_memory_available_bytes",
        "backhaul_host_disk_free_bytes",
        "backhaul_jetson_gpu_utilization_ratio",
        "backhaul_jetson_power_watts",
    } <= names
    disk = [labels for labels in series if dict(labels)["__name__"] == "backhaul_host_disk_free_bytes"]
    assert dict(disk[0])["path"] == str(tmp_path) and dict(disk[0])["job"] == "host"
    tegra = int((tmp_path / "tegra.pid").read_text())
    assert not psutil.pid_exists(tegra) or psutil.Process(tegra).status() == psutil.STATUS_ZOMBIE
    assert value(agent, "backhaul_source_samples_total", source="host") > 0
