"""Helpers for tests that run real agent, collector and Prometheus processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any, Self

import aiohttp
import pytest
from aiohttp import web

from backhaul.wire import remote_write as rw
from backhaul.wire.series import SeriesMap

TOKEN = "test-token-dev-1"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_program(name: str) -> str:
    """Path of a real peer program; skip loudly if missing, fail under CI=true."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"'{name}' is not installed: run the tests as root via `make test` (it installs it) or apt-get install it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: required peer missing: {reason}")
    pytest.skip(reason)


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def push(agent_url: str, series: SeriesMap, per_request: int = 500) -> list[int]:
    """Send samples as Prometheus does (snappy protobuf); returns each request's status."""
    statuses = []
    for body in rw.encode(series, per_request):
        status, _, _ = http(
            "POST",
            f"{agent_url}/api/v1/write",
            body,
            {
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
        )
        statuses.append(status)
    return statuses


def export(collector_url: str, selector: str = '{__name__=~".+"}') -> list[dict[str, Any]]:
    status, body, _ = http("GET", f"{collector_url}/api/v1/export?" + urllib.parse.urlencode({"match[]": selector}))
    assert status == 200, body
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def exported_samples(
    collector_url: str, selector: str = '{__name__=~".+"}', drop: tuple[str, ...] = ("device_id",)
) -> dict[tuple[tuple[str, str], ...], dict[int, float]]:
    """Collector contents as {labels without ``drop``: {timestamp: value}}."""
    out: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
    for line in export(collector_url, selector):
        labels = tuple(sorted((k, v) for k, v in line["metric"].items() if k not in drop))
        values = [float(v) for v in line["values"]]  # "NaN", "Inf", "-Inf" arrive as strings
        out.setdefault(labels, {}).update(zip(line["timestamps"], values, strict=True))
    return out


def same_value(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def metric_value(url: str, name: str, labels: str = "") -> float:
    """One sample from a /metrics page (0 when absent)."""
    _, body, _ = http("GET", f"{url}/metrics")
    wanted = name + (f"{{{labels}}}" if labels else "")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(wanted + " "):
            total += float(line.split()[-1])
    return total


def toml_text(values: dict[str, object]) -> str:
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


def agent_loss_counters(db: Path) -> dict[str, int]:
    """The agent's persistent loss counters, read from its (live) buffer database, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()
    return {
        "evicted": meta.get("evicted_samples", 0),
        "expired": meta.get("expired_samples", 0),
        "dropped": meta.get("dropped_samples", 0) + meta.get("rejected_samples", 0),
        "corrupt": meta.get("corrupt_samples", 0),
    }


@dataclass
class Proc:
    """A real backhaul process started from its console script with a TOML config."""

    program: str
    config: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = {**os.environ, **self.env}
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [str(BIN / self.program), "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def wait_healthy(self, url: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.program} exited with {self.popen.returncode}:\n{self.log.read_text()}")
            try:
                status, _, _ = http("GET", f"{url}/healthz", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.program} not healthy after {timeout} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, like a crash."""
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                raise AssertionError(f"{self.program} ignored SIGTERM for {timeout} s") from None
        return self.popen.returncode


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Sender(threading.Thread):
    """Plays a Prometheus: pushes one "scrape" of ``series`` per ``interval`` and retries a request on
    5xx or no answer until it is acknowledged, as Prometheus' remote write does. Records every sample
    acknowledged with a 2xx."""

    def __init__(
        self,
        agent_url: str,
        series: int = 200,
        interval: float = 0.05,
        per_request: int = 500,
        start_ms: int | None = None,
        step_ms: int = 1000,
    ) -> None:
        super().__init__(daemon=True)
        self.agent_url = agent_url
        self.series = series
        self.interval = interval
        self.per_request = per_request
        self.next_ms = start_ms or int(time.time() * 1000) - 3_600_000
        self.step_ms = step_ms
        self.acked: dict[tuple[tuple[tuple[str, str], ...], int], float] = {}
        self.unacknowledged: set[tuple[tuple[tuple[str, str], ...], int]] = set()
        self.refused: list[int] = []
        self.retries = 0
        self._stop_event = threading.Event()
        self.scrapes = 0

    def scrape(self) -> SeriesMap:
        ts = self.next_ms
        self.next_ms += self.step_ms
        k = self.scrapes
        self.scrapes += 1
        return {
            (("__name__", f"test_metric_{i % 20}"), ("job", "sender"), ("series", str(i))): (
                [ts],
                [float(k * (i + 1)) + i / 7],
            )
            for i in range(self.series)
        }

    def run(self) -> None:
        while not self._stop_event.is_set():
            items = list(self.scrape().items())
            # one request per `per_request` series (one sample each), recorded as soon as it is acked
            for start in range(0, len(items), self.per_request):
                part = dict(items[start : start + self.per_request])
                if not self._send_until_acked(rw.encode(part)[0]):
                    # stopped while the agent was not answering: never acknowledged, but the agent
                    # may have committed it before dying, so it may legitimately arrive
                    self.unacknowledged.update((labels, ts[0]) for labels, (ts, _) in part.items())
                    return
                for labels, (stamps, values) in part.items():
                    for t, v in zip(stamps, values, strict=True):
                        self.acked[(labels, t)] = v
            time.sleep(self.interval)

    def _post(self, body: bytes) -> int:
        """One attempt; 0 when there was no (complete) answer."""
        try:
            status, _, _ = http(
                "POST",
                f"{self.agent_url}/api/v1/write",
                body,
                {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"},
                timeout=10,
            )
        except (OSError, HTTPException):  # refused, reset, or killed mid-answer (a torn status line)
            return 0
        return status

    def _send_until_acked(self, body: bytes) -> bool:
        while True:
            status = self._post(body)
            if 200 <= status < 300:
                return True
            if 400 <= status < 500:
                self.refused.append(status)
                return True
            if self._stop_event.is_set():
                return False
            self.retries += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(60)
        assert not self.is_alive(), "sender stuck"


class LoopbackProxy:
    """A real HTTP proxy on 127.0.0.1 in a thread of its own, relaying POSTs (with their Authorization
    and Content-Type) to what :meth:`relay` decides. Subclasses say where, and what happens to the
    answer; the lifecycle (``with proxy: ...``) is here once."""

    def __init__(self, session_timeout: float | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._session_timeout = session_timeout
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def relay(self, request: web.Request, body: bytes, headers: dict[str, str]) -> web.Response:
        raise NotImplementedError

    async def post(self, target: str, path: str, body: bytes, headers: dict[str, str]) -> web.Response:
        async with self._session.post(target + path, data=body, headers=headers) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type=resp.content_type)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            return await self.relay(request, body, headers)

        timeout = aiohttp.ClientTimeout(total=self._session_timeout) if self._session_timeout else None
        self._session = aiohttp.ClientSession(timeout=timeout) if timeout else aiohttp.ClientSession()
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/{tail:.*}", forward)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()
            # answers still held (for an agent that died meanwhile) are abandoned
            held = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class DelayProxy(LoopbackProxy):
    """Forwards to ``target`` and, while ``delay`` > 0, holds the answer back that long *after* the
    target has answered: a collector that stored a batch but whose reply is late (or lost, if the
    agent dies meanwhile)."""

    def __init__(self, target: str, delay: float = 0.0) -> None:
        super().__init__()
        self.target = target
        self.delay = delay
        self.forwarded = 0

    async def relay(self, request: web.Request, body: bytes, headers: dict[str, str]) -> web.Response:
        answer = await self.post(self.target, request.path, body, headers)
        self.forwarded += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return answer
