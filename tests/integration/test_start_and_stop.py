"""Starting and stopping (issue 11): a failed start unwinds everything and exits 1 at once; a dead
background task is logged and named by /healthz; a hung database thread cannot stretch the stop."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from agent.app import Agent
from agent.config import AgentSettings
from backhaul.lifecycle import watchdog
from collector.app import Collector
from collector.config import CollectorSettings
from tests.support import BIN, TOKEN, toml_text

pytestmark = [pytest.mark.integration]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def run_to_exit(program: str, config: Path, timeout: float = 15) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / program), "run", "--config", str(config)], capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stderr, time.monotonic() - started


def test_an_agent_on_a_taken_port_exits_1_within_seconds_with_a_clear_message(tmp_path: Path, taken_port: int) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        toml_text(
            {
                "device_id": "dev-1",
                "listen": {"host": "127.0.0.1", "port": taken_port},
                "buffer": {"path": str(tmp_path / "b.db"), "budget_bytes": "64MiB"},
                # The uploader would retry for ever if a failed start left it running.
                "uplink": {"url": "http://127.0.0.1:9/api/v1/batches", "token": TOKEN, "backoff_min": 0.1},
            }
        )
    )
    status, stderr, took = run_to_exit("backhaul-agent", config)
    assert status == 1, stderr
    assert took < 5, f"took {took:.1f} s"
    assert "cannot run" in stderr and "address already in use" in stderr, stderr
    assert "Traceback" not in stderr


def test_a_collector_on_a_taken_port_exits_1_within_seconds(tmp_path: Path, taken_port: int) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(
        toml_text(
            {
                "listen": {"host": "127.0.0.1", "port": taken_port},
                "store": {"path": str(tmp_path / "c.db")},
                "devices": [{"id": "dev-1", "token": TOKEN}],
            }
        )
    )
    status, stderr, took = run_to_exit("backhaul-collector", config)
    assert status == 1, stderr
    assert took < 5, f"took {took:.1f} s"
    assert "address already in use" in stderr and "Traceback" not in stderr, stderr


def backhaul_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name in ("buffer-db", "alert-queue", "collector-db")}


async def test_a_failed_agent_start_leaves_no_thread_or_task_behind(tmp_path: Path, taken_port: int) -> None:
    before = backhaul_threads()
    settings = AgentSettings(
        device_id="dev-1",
        listen={"host": "127.0.0.1", "port": taken_port},
        buffer={"path": tmp_path / "b.db", "budget_bytes": "64MiB"},
        uplink={"url": "http://127.0.0.1:9/api/v1/batches", "token": TOKEN, "backoff_min": 0.1},
    )
    with pytest.raises(OSError):
        async with Agent(settings):
            pass
    await asyncio.sleep(0.1)
    assert backhaul_threads() == before
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == [], others


async def test_a_collector_refuses_a_second_start(tmp_path: Path) -> None:
    settings = CollectorSettings(listen={"port": 0}, store={"path": tmp_path / "c.db"})
    collector = Collector(settings)
    async with collector:
        with pytest.raises(RuntimeError, match="once"):
            await collector.__aenter__()


async def dead_component(program: Agent | Collector, caplog: pytest.LogCaptureFixture, logged: str) -> dict[str, str]:
    """Start ``program`` (one of its tasks was made to die), check the ERROR line naming ``logged``;
    returns what a 503 /healthz says is dead."""
    caplog.set_level(logging.ERROR)
    async with program, aiohttp.ClientSession() as http:
        await asyncio.sleep(0.1)
        assert any(r.levelno == logging.ERROR and logged in r.getMessage() for r in caplog.records)
        async with http.get(f"http://127.0.0.1:{program.port}/healthz") as resp:
            assert resp.status == 503
            dead: dict[str, str] = (await resp.json())["dead"]
    return dead


async def test_a_dead_background_task_is_logged_and_named_by_healthz(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = AgentSettings(
        device_id="dev-1",
        listen={"host": "127.0.0.1", "port": 0},
        buffer={"path": tmp_path / "b.db", "budget_bytes": "64MiB"},
        uplink={"url": "http://127.0.0.1:9/api/v1/batches", "token": TOKEN},
    )
    agent = Agent(settings)
    assert agent.uploader is not None

    async def broken() -> None:
        raise RuntimeError("a bug in the uploader")

    agent.uploader.run = broken  # type: ignore[method-assign]
    dead = await dead_component(agent, caplog, "uploader")
    assert "a bug in the uploader" in dead["uploader"]


async def test_a_dead_mqtt_subscriber_makes_the_collector_unhealthy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = CollectorSettings(
        listen={"port": 0}, store={"path": tmp_path / "c.db"}, alerts={"mqtt": {"host": "127.0.0.1", "port": 9}}
    )
    collector = Collector(settings)
    assert collector.mqtt is not None

    async def broken() -> None:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    collector.mqtt.run = broken  # type: ignore[method-assign]
    assert "mqtt alerts" in await dead_component(collector, caplog, "mqtt")


async def test_a_hung_database_thread_cannot_stretch_the_stop_past_the_grace(tmp_path: Path) -> None:
    settings = AgentSettings(
        device_id="dev-1",
        shutdown_grace=2,
        listen={"host": "127.0.0.1", "port": 0},
        buffer={"path": tmp_path / "b.db", "budget_bytes": "64MiB"},
    )
    agent = Agent(settings)
    release = threading.Event()
    await agent.__aenter__()
    hung = asyncio.ensure_future(agent.store.call(release.wait, 60))  # e.g. an fsync that never returns
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await agent.__aexit__(None, None, None)
    took = time.monotonic() - started
    release.set()
    await asyncio.gather(hung, return_exceptions=True)
    # The grace, plus a short floor per remaining step.
    assert took < 2 + 3, f"stop took {took:.1f} s"


async def test_the_watchdog_pings_at_a_fixed_rate_whatever_a_check_costs() -> None:
    pings: list[float] = []

    async def slow_check() -> bool:
        await asyncio.sleep(0.15)  # most of the interval
        return True

    task = asyncio.create_task(watchdog(0.2, slow_check, lambda: pings.append(time.monotonic())))
    await asyncio.sleep(1.3)
    task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 5, pings  # a sleep after the check would give 0.35 s gaps: 3 or 4 pings
    assert max(gaps) < 0.3, gaps
