"""Fixtures that start real backhaul processes on 127.0.0.1 and clean them up."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import READ, TOKEN, Proc, free_port, toml_text

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
def launch(tmp_path: Path) -> Iterator[Callable[[str, str, int, dict[str, object]], Running]]:
    """Write ``config`` as ``<name>.toml``, start ``program`` with it, wait until healthy; killed at teardown."""
    started: list[Proc] = []

    def start(program: str, name: str, port: int, config: dict[str, object]) -> Running:
        path = tmp_path / f"{name}.toml"
        path.write_text(toml_text(config))
        proc = Proc(program, path, tmp_path / f"{name}.log").start()
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
        config: dict[str, object] = {
            "listen": {"host": "127.0.0.1", "port": port},
            "store": {"path": str(tmp_path / f"{name}.db")},
            "devices": [{"id": "dev-1", "token": TOKEN}, {"id": "dev-2", "token": TOKEN + "-2"}],
            "read": READ,
        }
        config.update(overrides)
        return launch("backhaul-collector", name, port, config)

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
        config: dict[str, object] = {
            "device_id": "dev-1",
            "shutdown_grace": 10,
            "listen": {"host": "127.0.0.1", "port": port},
            "buffer": {"path": str(tmp_path / f"{name}.db"), "budget_bytes": "64MiB", **(buffer or {})},
        }
        if collector_url:
            config["uplink"] = {
                "url": f"{collector_url}/api/v1/batches",
                "token": TOKEN,
                "batch_interval": 0.2,
                "backoff_min": 0.2,
                "backoff_max": 1,
                "timeout": 5,
                **(uplink or {}),
            }
        config.update(overrides)
        return launch("backhaul-agent", name, port, config)

    return start
