"""Fixtures for the alert tests: real Mosquitto and Alertmanager, and configs with nested tables."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Running
from tests.support import Proc, free_port, http, require_program


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} not open after {timeout} s:\n{log.read_text()}")


@pytest.fixture
def run(launch: Callable[..., Running]) -> Callable[[str, str, int, dict[str, Any]], Proc]:
    """Start a backhaul program with ``config`` (nested TOML) as ``<name>``; waits for /healthz; killed at teardown."""

    def start(program: str, name: str, port: int, config: dict[str, Any]) -> Proc:
        running: Running = launch(program, name, port, config)
        return running.proc

    return start


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    """A real Mosquitto broker on 127.0.0.1 (anonymous, in-memory); yields its port."""
    program = require_program("mosquitto")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([program, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 10, proc, log)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager (Debian's prometheus-alertmanager) with a null receiver; yields its URL."""
    program = require_program("prometheus-alertmanager")
    port = free_port()
    conf = tmp_path / "alertmanager.yml"
    conf.write_text("route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n")
    log = tmp_path / "alertmanager.log"
    (tmp_path / "am-data").mkdir()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                program,
                f"--config.file={conf}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, 20, proc, log)
        deadline = time.monotonic() + 20
        while http("GET", f"{url}/-/ready")[0] != 200:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
