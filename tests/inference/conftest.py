"""Fixtures for the inference-process tests: real node_exporter, the demo inference server, agents with
nested config sections ([[scrape.targets]], [inference])."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Running
from tests.support import agent_config, free_port, http, require_program

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent.parent


def wait_http(url: str, timeout: float = 15, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if http("GET", url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[str]:
    """A real Debian prometheus-node-exporter on a free port; its /metrics URL."""
    program = require_program("prometheus-node-exporter")
    port = free_port()
    with (tmp_path / "node_exporter.log").open("wb") as log:
        proc = subprocess.Popen([program, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(url, proc=proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def demo_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "demo.inference_server", "--port", str(port), *extra]


@dataclass
class Demo:
    """A demo inference server (started here, or by an agent's supervisor) and its request log."""

    url: str
    request_log: Path
    proc: subprocess.Popen[bytes] | None = None

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.request_log.exists():
            return []
        lines = [json.loads(line) for line in self.request_log.read_text().splitlines() if line.strip()]
        return [e for e in lines if kind is None or e["event"] == kind]


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """Start ``python -m demo.inference_server`` with a request log; terminated at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> Demo:
        port = free_port()
        request_log = tmp_path / f"{name}.requests.jsonl"
        with (tmp_path / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                demo_command(port, "--request-log", str(request_log), *args), cwd=ROOT, stdout=out, stderr=out
            )
        started.append(proc)
        demo = Demo(f"http://127.0.0.1:{port}", request_log, proc)
        wait_http(f"{demo.url}/healthz", proc=proc)
        return demo

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def agent_with(tmp_path: Path, launch: Callable[..., Running]) -> Callable[..., Running]:
    """Start a real backhaul-agent whose config may have nested sections; killed at teardown."""

    def start(
        collector_url: str | None = None, name: str = "agent", env: dict[str, str] | None = None, **sections: Any
    ) -> Running:
        port = free_port()
        quiet = {"host": {"enabled": False}, "scrape": {"self_interval": 0}}
        config = agent_config(port, tmp_path / f"{name}.db", collector_url, **{**quiet, **sections})
        return launch("backhaul-agent", name, port, config, {"PYTHONPATH": str(ROOT), **(env or {})})

    return start
