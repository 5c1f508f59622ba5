"""The supervisor with real child processes: restarts, crash loops, SIGTERM then SIGKILL, output, metrics."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client import CollectorRegistry

from agent.supervisor import CrashLoop, State, Supervisor
from agent.supervisor_settings import InferenceSettings


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text("import os, signal, sys, time\n" + body)
    return [sys.executable, str(path)]


def settings(command: list[str], **overrides: Any) -> InferenceSettings:
    values: dict[str, Any] = {
        "command": command,
        "restart_backoff_min": 0.05,
        "restart_backoff_max": 0.2,
        "crash_loop_restarts": 3,
        "crash_loop_window": 30,
        "stop_grace": 2,
    }
    values.update(overrides)
    return InferenceSettings(**values)


async def until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.02)


def value(registry: CollectorRegistry, name: str) -> float:
    got = registry.get_sample_value(name)
    assert got is not None, name
    return got


async def test_a_crashing_child_is_restarted_then_reported_as_a_crash_loop_once(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    events: list[CrashLoop] = []
    supervisor = Supervisor(settings(script(tmp_path, "crash", "sys.exit(3)\n")), registry, events.append)
    async with supervisor:
        await until(lambda: supervisor.state == State.CRASH_LOOP, 20, "the crash loop")
        assert value(registry, "backhaul_inference_crash_loop") == 1
        assert value(registry, "backhaul_inference_last_exit_code") == 3
        assert value(registry, "backhaul_inference_last_exit_signal") == 0
        assert value(registry, "backhaul_inference_restarts_total") >= 2
        await asyncio.sleep(0.5)  # it keeps restarting (at the longest backoff) without firing again
    assert len(events) == 1
    assert events[0].exits == 3 and events[0].last_exit == "exit code 3"
    assert supervisor.state == State.STOPPED


async def test_the_crash_loop_ends_once_the_child_stays_up_for_a_window(tmp_path: Path) -> None:
    counter = tmp_path / "starts"
    body = (
        f"p = {str(counter)!r}\n"
        "n = int(open(p).read()) + 1 if os.path.exists(p) else 1\n"
        "open(p, 'w').write(str(n))\n"
        "sys.exit(1) if n <= 2 else time.sleep(60)\n"
    )
    registry = CollectorRegistry()
    supervisor = Supervisor(
        settings(script(tmp_path, "flaky", body), crash_loop_restarts=2, crash_loop_window=1), registry
    )
    async with supervisor:
        await until(lambda: supervisor.state == State.CRASH_LOOP, 20, "the crash loop")
        await until(lambda: supervisor.state == State.RUNNING, 10, "the crash loop to end")
        assert value(registry, "backhaul_inference_crash_loop") == 0
        assert value(registry, "backhaul_inference_up") == 1


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    body = f"signal.signal(signal.SIGTERM, signal.SIG_IGN)\nopen({str(ready)!r}, 'w').close()\ntime.sleep(60)\n"
    registry = CollectorRegistry()
    supervisor = Supervisor(settings(script(tmp_path, "stubborn", body), stop_grace=0.5), registry)
    supervisor.start()
    await until(ready.exists, 20, "the child to start")
    pid = supervisor.pid
    assert pid is not None and psutil.pid_exists(pid)
    started = time.monotonic()
    await supervisor.stop()
    took = time.monotonic() - started
    assert 0.5 <= took < 3, took
    assert not psutil.pid_exists(pid)
    assert supervisor.restarts._value.get() == 0  # a stop is not a restart


async def test_sigterm_reaches_the_child_and_its_own_children(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    body = (
        "import subprocess\n"
        "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(tmp_path / 'kid')!r}, 'w').write(str(kid.pid))\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(settings(script(tmp_path, "parent", body)), CollectorRegistry())
    supervisor.start()
    await until((tmp_path / "kid").exists, 20, "the grandchild")
    await asyncio.sleep(0.1)
    kid = int((tmp_path / "kid").read_text())
    await supervisor.stop()
    assert marker.exists()
    await until(lambda: not psutil.pid_exists(kid) or psutil.Process(kid).status() == "zombie", 5, "the grandchild")


async def test_output_reaches_the_log_with_a_rate_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.inference")
    body = "for i in range(300): print(f'line {i}', flush=True)\ntime.sleep(60)\n"
    registry = CollectorRegistry()
    supervisor = Supervisor(settings(script(tmp_path, "chatty", body), log_lines_per_second=5), registry)
    async with supervisor:
        await until(lambda: value(registry, "backhaul_inference_log_lines_suppressed_total") >= 290, 20, "output")
    logged = [r.getMessage() for r in caplog.records if r.name == "agent.inference"]
    assert "[stdout] line 0" in logged
    assert 1 <= len([m for m in logged if m.startswith("[stdout] line")]) <= 10


async def test_process_metrics_come_from_the_running_child(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    body = "x = bytearray(40 * 1024 * 1024)\nwhile True: pass\n"  # 40 MB resident, burning CPU
    supervisor = Supervisor(settings(script(tmp_path, "busy", body)), registry)
    async with supervisor:
        await until(lambda: value(registry, "backhaul_inference_cpu_seconds") > 0.2, 20, "CPU time")
        assert value(registry, "backhaul_inference_resident_memory_bytes") > 40 * 1024 * 1024
        assert value(registry, "backhaul_inference_uptime_seconds") > 0.1
        assert value(registry, "backhaul_inference_up") == 1
    assert value(registry, "backhaul_inference_up") == 0
    assert value(registry, "backhaul_inference_resident_memory_bytes") == 0


async def test_a_command_that_cannot_start_counts_as_a_crash(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    supervisor = Supervisor(settings([str(tmp_path / "no-such-program")]), registry)
    async with supervisor:
        await until(lambda: supervisor.state == State.CRASH_LOOP, 20, "the crash loop")
        assert value(registry, "backhaul_inference_last_exit_code") == 127


def test_an_empty_command_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to supervise"):
        Supervisor(InferenceSettings(), CollectorRegistry())


async def test_unavailable_says_why_the_child_cannot_serve(tmp_path: Path) -> None:
    sleeper = script(tmp_path, "sleeper", "time.sleep(60)\n")
    supervisor = Supervisor(settings(sleeper), CollectorRegistry())
    assert supervisor.unavailable() == "not running"
    async with supervisor:
        await until(lambda: supervisor.unavailable() is None, 20, "the child to run")
    assert supervisor.unavailable() == "not running"
    # With a health URL nobody answers, running is not enough.
    unhealthy = Supervisor(settings(sleeper, health_url="http://127.0.0.1:9/healthz"), CollectorRegistry())
    async with unhealthy:
        await until(lambda: unhealthy.state == State.RUNNING, 20, "the child to run")
        await asyncio.sleep(0.3)
        assert unhealthy.unavailable() == "unhealthy"
    crashing = Supervisor(settings(script(tmp_path, "crash", "time.sleep(0.2); sys.exit(3)\n")), CollectorRegistry())
    async with crashing:
        await until(lambda: crashing.state == State.CRASH_LOOP and crashing.pid is not None, 20, "the crash loop")
        await until(lambda: crashing.unavailable() == "crash loop", 20, "a restarted child in the crash loop")
