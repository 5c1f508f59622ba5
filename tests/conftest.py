"""Fixtures that start real backhaul processes on 127.0.0.1 and clean them up."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    Proc,
    Process,
    agent_config,
    collector_config,
    free_port,
    start_prometheus,
    toml_text,
)

# The examples ship placeholder secrets, which both programs refuse at start (issue 12). A test that
# loads an example sets real ones the way the examples advise: in the environment, which wins.
EXAMPLE_SECRETS = {
    "BACKHAUL_UPLINK__TOKEN": "a-real-device-token-0123456789",
    "BACKHAUL_DEVICES": json.dumps(
        [{"id": "edge-0001", "token_sha256": hashlib.sha256(b"a-real-device-token-0123456789").hexdigest()}]
    ),
}


@pytest.fixture
def example_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real secrets in place of the examples' placeholders (see EXAMPLE_SECRETS)."""
    for name, value in EXAMPLE_SECRETS.items():
        monkeypatch.setenv(name, value)


@dataclass
class Running:
    proc: Proc
    url: str
    config: Path


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Write ``config`` as ``<name>.toml``, start ``program`` with it (``env`` on top of the tests'),
    wait until healthy; killed at teardown."""
    started: list[Proc] = []

    def start(
        program: str, name: str, port: int, config: dict[str, object], env: dict[str, str] | None = None
    ) -> Running:
        path = tmp_path / f"{name}.toml"
        path.write_text(toml_text(config))
        proc = Proc(program, path, tmp_path / f"{name}.log", env=env or {}).start()
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        proc.wait_healthy(url)
        return Running(proc, url, path)

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def start_collector(tmp_path: Path, launch: Callable[..., Running]) -> Callable[..., Running]:
    def start(port: int | None = None, name: str = "collector", **overrides: object) -> Running:
        port = port or free_port()
        return launch("backhaul-collector", name, port, collector_config(port, tmp_path / f"{name}.db", **overrides))

    return start


@pytest.fixture
def start_agent(tmp_path: Path, launch: Callable[..., Running]) -> Callable[..., Running]:
    def start(
        collector_url: str | None,
        port: int | None = None,
        name: str = "agent",
        buffer: dict[str, object] | None = None,
        uplink: dict[str, object] | None = None,
        **overrides: object,
    ) -> Running:
        port = port or free_port()
        config = agent_config(port, tmp_path / f"{name}.db", collector_url, buffer=buffer or {}, uplink=uplink or {})
        config.update(overrides)
        return launch("backhaul-agent", name, port, config)

    return start


# A real Prometheus scraping itself and the agent every second, remote-writing to the agent.
PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs: [{{targets: ['127.0.0.1:{prom}']}}]
  - job_name: backhaul-agent
    static_configs: [{{targets: ['127.0.0.1:{agent}']}}]
remote_write:
  - url: http://127.0.0.1:{agent}/api/v1/write
    queue_config:
      max_shards: 1            # one shard sends in WAL order: "highest sent" then covers everything older
      batch_send_deadline: 500ms
      min_backoff: 100ms
      max_backoff: 1s
    metadata_config:
      send_interval: 2s
"""


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Start a real Prometheus that scrapes itself every second and remote-writes to an agent's port."""
    procs: list[Process] = []

    def start(agent_port: int) -> str:
        proc, url = start_prometheus(tmp_path, lambda port: PROMETHEUS_CONFIG.format(prom=port, agent=agent_port))
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        proc.kill()
