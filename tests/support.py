"""Helpers for tests that run real agent, collector and Prometheus processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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
    collector_url: str, selector: str = '{__name__=~".+"}', drop: tuple[str, ...] = ("device",)
) -> dict[tuple[tuple[str, str], ...], dict[int, float]]:
    """Collector contents as {labels without ``drop``: {timestamp: value}}."""
    out: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
    for line in export(collector_url, selector):
        labels = tuple(sorted((k, v) for k, v in line["metric"].items() if k not in drop))
        out.setdefault(labels, {}).update(zip(line["timestamps"], line["values"], strict=True))
    return out


def metric_value(url: str, name: str, labels: str = "") -> float:
    """One sample from a /metrics page (0 when absent)."""
    _, body, _ = http("GET", f"{url}/metrics")
    wanted = name + (f"{{{labels}}}" if labels else "")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(wanted + " "):
            total += float(line.split()[-1])
    return total


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
