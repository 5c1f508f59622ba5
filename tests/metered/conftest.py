"""Real agents and a collector with a byte-counting TCP proxy between them (what a carrier bills),
for the metered-link tests. An agent's wall clock can be moved with libfaketime (its monotonic clock
is left alone, so asyncio's timers run as usual), and its buffer can live on a power-cut disk."""

from __future__ import annotations

import json
import random
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backhaul.wire.series import SeriesMap
from tests.conftest import Running
from tests.faults.powercut import LossyDisk, build_library
from tests.support import (
    READ_HEADERS,
    TOKEN,
    CountingProxy,
    Proc,
    faketime_env,
    free_port,
    http,
    push,
    read_metrics,
    toml_text,
)

BATCHES = "/api/v1/batches"
ALERTS = "/api/v1/alerts"
TRIGGER = {"name": "Trigger", "selector": 'trigger{job="test"}', "op": ">", "threshold": 0}


@dataclass
class Agent:
    proc: Proc
    url: str
    config: Path
    db: Path
    disk: LossyDisk | None = None
    env: dict[str, str] = field(default_factory=dict)

    def metric(self, name: str, labels: str = "") -> float:
        return read_metrics(self.url).get(name + (f"{{{labels}}}" if labels else ""), 0.0)

    def blocked(self) -> str | None:
        page = read_metrics(self.url)
        held = [r for r in ("window", "budget", "cap") if page.get(f'backhaul_uplink_blocked{{reason="{r}"}}')]
        return held[0] if held else None

    def restart(self) -> None:
        self.proc.start()
        self.proc.wait_healthy(self.url)

    def health(self) -> dict[str, Any]:
        status, body, _ = http("GET", f"{self.url}/healthz")
        assert status == 200, body
        return dict(json.loads(body))


class Rig:
    """A collector, a counting proxy in front of it, and the agents a test starts through it."""

    def __init__(self, tmp_path: Path, collector: Running) -> None:
        self.tmp = tmp_path
        self.collector = collector
        port = urllib.parse.urlsplit(collector.url).port
        assert port is not None
        self._port = port
        self.proxies: list[CountingProxy] = []
        self.agents: list[Agent] = []
        self._lossy_library: Path | None = None

    def proxy(self) -> CountingProxy:
        p = CountingProxy(("127.0.0.1", self._port)).__enter__()
        self.proxies.append(p)
        return p

    def lossy_disk(self, name: str) -> LossyDisk:
        if self._lossy_library is None:
            self._lossy_library = build_library(self.tmp)
        return LossyDisk(self.tmp / name, self._lossy_library)

    def agent(
        self,
        proxy: CountingProxy,
        name: str = "agent",
        device: str = "dev-1",
        uplink: dict[str, Any] | None = None,
        alerts: dict[str, Any] | None = None,
        clock_offset: float | None = None,
        disk: LossyDisk | None = None,
        **overrides: Any,
    ) -> Agent:
        port = free_port()
        folder = disk.dir if disk is not None else self.tmp
        db = folder / f"{name}.db"
        config: dict[str, Any] = {
            "device_id": device,
            "shutdown_grace": 10,
            "listen": {"host": "127.0.0.1", "port": port},
            "buffer": {"path": str(db), "budget_bytes": "64MiB", "maintenance_interval": 2},
            "uplink": {
                "url": f"{proxy.url}{BATCHES}",
                "token": TOKEN if device == "dev-1" else TOKEN + "-2",
                "batch_interval": 0.5,
                "backoff_min": 0.2,
                "backoff_max": 1,
                "timeout": 10,
                **(uplink or {}),
            },
            "alerts": {"rules": [TRIGGER], "eval_interval": 0.5, "backoff_max": 0.5, **(alerts or {})},
            **overrides,
        }
        path = self.tmp / f"{name}.toml"
        path.write_text(toml_text(config))
        env: dict[str, str] = {}
        if clock_offset is not None:
            env.update(faketime_env(clock_offset))
        if disk is not None:
            lossy = disk.env()
            # the power-cut shim first, libfaketime after it (both are preloaded)
            env.update({**lossy, "LD_PRELOAD": " ".join(p for p in (lossy["LD_PRELOAD"], env.get("LD_PRELOAD")) if p)})
        proc = Proc("backhaul-agent", path, self.tmp / f"{name}.log", env=env)
        agent = Agent(proc, f"http://127.0.0.1:{port}", path, db, disk, env)
        self.agents.append(agent)
        agent.restart()
        return agent

    def close(self) -> None:
        for agent in self.agents:
            agent.proc.kill()
        for proxy in self.proxies:
            proxy.__exit__(None, None, None)


@pytest.fixture
def rig(tmp_path: Path, start_collector: Callable[..., Running]) -> Iterator[Rig]:
    r = Rig(tmp_path, start_collector(store={"path": str(tmp_path / "collector.db"), "synchronous": "NORMAL"}))
    yield r
    r.close()


def noisy(n_series: int, start_ms: int, scrapes: int, interval_ms: int = 5000, seed: int = 1) -> Iterator[SeriesMap]:
    """Scrapes whose values compress badly (random floats): a backlog of known size quickly."""
    rng = random.Random(seed)
    for k in range(scrapes):
        ts = start_ms + k * interval_ms
        yield {(("__name__", "noise"), ("i", str(i)), ("job", "test")): ([ts], [rng.random()]) for i in range(n_series)}


def push_all(agent_url: str, scrapes: Iterator[SeriesMap], together: int = 1) -> int:
    """Push the scrapes, ``together`` of them per request batch (as a Prometheus catching up sends
    several samples per series); returns the samples acknowledged."""
    n = 0
    pending: SeriesMap = {}
    for k, series in enumerate(scrapes, 1):
        for labels, (stamps, values) in series.items():
            held = pending.setdefault(labels, ([], []))
            held[0].extend(stamps)
            held[1].extend(values)
        if k % together == 0:
            n += _push(agent_url, pending)
            pending = {}
    return n + (_push(agent_url, pending) if pending else 0)


def _push(agent_url: str, series: SeriesMap) -> int:
    statuses = push(agent_url, series, per_request=20_000)
    assert statuses and set(statuses) == {204}, statuses
    return sum(len(t) for t, _ in series.values())


def trigger(agent_url: str) -> float:
    """Make the Trigger rule fire; returns when (monotonic)."""
    now = int(time.time() * 1000)
    assert push(agent_url, {(("__name__", "trigger"), ("job", "test")): ([now], [1.0])}) == [204]
    return time.monotonic()


def alert_listed(collector_url: str, device: str = "dev-1") -> bool:
    _, body, _ = http("GET", f"{collector_url}{ALERTS}?state=firing&device={device}", headers=READ_HEADERS)
    return any(a["rule"] == "Trigger" for a in json.loads(body)["alerts"])
