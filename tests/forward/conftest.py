"""Real time-series databases started by the tests: Debian's VictoriaMetrics and Prometheus 2.42
(with its remote-write receiver), on free 127.0.0.1 ports with temporary data folders."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from backhaul.wire import remote_write as rw
from backhaul.wire.series import SeriesMap as SeriesMapT
from tests.support import free_port, http, require_program, wait_until

Samples = dict[tuple[tuple[str, str], ...], dict[int, float]]


@dataclass
class Tsdb:
    """A database process that can be stopped and started again on the same port and data."""

    kind: str
    argv: list[str]
    port: int
    log: Path
    ready_path: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def start(self) -> Tsdb:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                return http("GET", self.url + self.ready_path, timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, 30, f"{self.kind} to be ready", 0.05)
        return self

    def stop(self) -> None:
        """SIGTERM, as a restart or an upgrade does. (Not SIGKILL: VictoriaMetrics 1.79 keeps its newest
        samples in memory for a few seconds, even after /internal/force_flush, and loses them on a kill.)"""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def query_range(self, query: str, start_ms: int, end_ms: int, step_s: int) -> Samples:
        """PromQL over /api/v1/query_range, as {labels: {ts_ms: value}}."""
        if self.kind == "victoria-metrics":
            http("GET", f"{self.url}/internal/force_flush")  # make just-written samples searchable
        params = {"query": query, "start": start_ms / 1000, "end": end_ms / 1000, "step": f"{step_s}s"}
        status, body, _ = http("GET", f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}")
        assert status == 200, body
        out: Samples = {}
        for series in json.loads(body)["data"]["result"]:
            labels = tuple(sorted(series["metric"].items()))
            out[labels] = {round(float(ts) * 1000): float(v) for ts, v in series["values"]}
        return out

    def export(self, selector: str) -> Samples:
        """VictoriaMetrics only: every raw sample of the matching series."""
        http("GET", f"{self.url}/internal/force_flush")
        status, body, _ = http("GET", f"{self.url}/api/v1/export?{urllib.parse.urlencode({'match[]': selector})}")
        assert status == 200, body
        out: Samples = {}
        for line in body.splitlines():
            row = json.loads(line)
            labels = tuple(sorted(row["metric"].items()))
            out.setdefault(labels, {}).update(zip(row["timestamps"], map(float, row["values"]), strict=True))
        return out


@pytest.fixture
def tsdbs(tmp_path: Path) -> Iterator[list[Tsdb]]:
    started: list[Tsdb] = []
    yield started
    for db in started:
        db.stop()


@pytest.fixture
def victoria_metrics(tmp_path: Path, tsdbs: list[Tsdb]) -> Callable[[], Tsdb]:
    def start() -> Tsdb:
        binary = require_program("victoria-metrics")
        port = free_port()
        data = tmp_path / f"vm-{port}"
        argv = [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={data}",
            "-retentionPeriod=100y",  # backfilled edge data may be days old
            "-search.disableCache",  # a query before a backfill must not hide it from the next one
            "-loggerLevel=ERROR",
        ]
        db = Tsdb("victoria-metrics", argv, port, tmp_path / f"vm-{port}.log", "/health")
        tsdbs.append(db)
        return db.start()

    return start


@pytest.fixture
def prometheus_receiver(tmp_path: Path, tsdbs: list[Tsdb]) -> Callable[..., Tsdb]:
    def start(out_of_order_time_window: str | None = None) -> Tsdb:
        binary = require_program("prometheus")
        port = free_port()
        config = tmp_path / f"prometheus-{port}.yml"
        text = "global: {}\n"  # scrapes nothing: only what is written to it
        if out_of_order_time_window:
            text += f"storage:\n  tsdb:\n    out_of_order_time_window: {out_of_order_time_window}\n"
        config.write_text(text)
        argv = [
            binary,
            "--web.enable-remote-write-receiver",
            f"--storage.tsdb.path={tmp_path / f'prom-{port}'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--config.file={config}",
            "--log.level=warn",
        ]
        db = Tsdb("prometheus", argv, port, tmp_path / f"prometheus-{port}.log", "/-/ready")
        tsdbs.append(db)
        return db.start()

    return start


@dataclass
class ScriptedReceiver:
    """A real remote-write receiver on 127.0.0.1 that answers from a script: each request takes the next
    answer (the last one repeats), and every request's decoded samples are recorded."""

    answers: list[tuple[int, dict[str, str], str]]
    url: str = ""
    received: list[SeriesMapT] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.headers.append(dict(request.headers))
        self.received.append(rw.decode(body, rw.Limits()).series)
        status, headers, text = self.answers[min(len(self.statuses), len(self.answers) - 1)]
        self.statuses.append(status)
        return web.Response(status=status, headers=headers, text=text)


@pytest.fixture
async def scripted_receiver() -> AsyncIterator[Callable[..., Awaitable[ScriptedReceiver]]]:
    runners: list[web.AppRunner] = []

    async def start(*answers: tuple[int, dict[str, str], str]) -> ScriptedReceiver:
        receiver = ScriptedReceiver(list(answers) or [(204, {}, "")])
        app = web.Application(client_max_size=1 << 28)
        app.router.add_post("/api/v1/write", receiver.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        receiver.url = f"http://127.0.0.1:{port}/api/v1/write"
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()
