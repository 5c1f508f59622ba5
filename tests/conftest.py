"""Fixtures that start real backhaul processes on 127.0.0.1 and clean them up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import TOKEN, Proc, free_port


@dataclass
class Running:
    proc: Proc
    url: str
    config: Path


def _toml(values: dict[str, object]) -> str:
    """Just enough TOML for our configs: top-level scalars and one level of tables."""

    def scalar(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"{k} = {scalar(v)}" for k, v in values.items() if not isinstance(v, dict | list)]
    for k, v in values.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {scalar(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list):
            for item in v:
                lines.append(f"[[{k}]]")
                lines += [f"{kk} = {scalar(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[[str, str, int, dict[str, object]], Running]]:
    """Write ``config`` as ``<name>.toml``, start ``program`` with it, wait until healthy; killed at teardown."""
    started: list[Proc] = []

    def start(program: str, name: str, port: int, config: dict[str, object]) -> Running:
        path = tmp_path / f"{name}.toml"
        path.write_text(_toml(config))
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
