"""Fixtures for the inference-process tests: real node_exporter, the demo inference server, agents with
nested config sections ([[scrape.targets]], [inference])."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Running
from tests.support import TOKEN, Proc, free_port, http, require_program
from tests.support import toml_text as toml_nested

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent.parent


def wait_http(url: str, timeout: float = 15, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}")
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


@pytest.fixture
def agent_with(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start a real backhaul-agent whose config may have nested sections; killed at teardown."""
    started: list[Proc] = []

    def start(collector_url: str | None = None, name: str = "agent", **sections: Any) -> Running:
        port = free_port()
        config: dict[str, Any] = {
            "device_id": "dev-1",
            "shutdown_grace": 10,
            "listen": {"host": "127.0.0.1", "port": port},
            "buffer": {"path": str(tmp_path / f"{name}.db"), "budget_bytes": "64MiB"},
            "host": {"enabled": False},
            "scrape": {"self_interval": 0},
        }
        if collector_url:
            config["uplink"] = {
                "url": f"{collector_url}/api/v1/batches",
                "token": TOKEN,
                "batch_interval": 0.2,
                "backoff_min": 0.2,
                "backoff_max": 1,
            }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = tmp_path / f"{name}.toml"
        path.write_text(toml_nested(config))
        proc = Proc("backhaul-agent", path, tmp_path / f"{name}.log", env={"PYTHONPATH": str(ROOT)}).start()
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        proc.wait_healthy(url)
        return Running(proc, url, path)

    yield start
    for proc in started:
        proc.kill()
