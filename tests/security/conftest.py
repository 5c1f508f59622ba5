"""What the hostile-network tests share: a real Prometheus, raw sockets that misbehave, and an agent
started under an open-file limit."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import BIN, Process, free_port, require_program, toml_text


@pytest.fixture
def limited_agent(tmp_path: Path) -> Iterator[Callable[..., tuple[Process, str]]]:
    """Start an agent (no uplink) under ``prlimit --nofile=N:N``: systemd's default soft limit is 1024."""
    require_program("prlimit")
    started: list[Process] = []

    def start(nofile: int = 1024, **listen: object) -> tuple[Process, str]:
        port = free_port()
        config = tmp_path / "agent.toml"
        config.write_text(
            toml_text(
                {
                    "device_id": "dev-1",
                    "shutdown_grace": 5,
                    "listen": {"host": "127.0.0.1", "port": port, **listen},
                    "buffer": {"path": tmp_path / "agent.db", "budget_bytes": "64MiB"},
                    "alerts": {"enabled": False},
                    "host": {"enabled": False},
                }
            )
        )
        argv = ["prlimit", f"--nofile={nofile}:{nofile}", "--", str(BIN / "backhaul-agent"), "run", "--config"]
        proc = Process("backhaul-agent", [*argv, str(config)], tmp_path / "agent.log").start()
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        proc.wait_ready(f"{url}/healthz")
        return proc, url

    yield start
    for proc in started:
        proc.kill()


class IdleFlood(threading.Thread):
    """Holds ``count`` TCP connections to a port open without sending a byte, as an attacker would, and
    opens a new one for each the server closes (at most ``reconnects_per_s`` a second).

    Args:
        port: where to connect on 127.0.0.1.
        count: connections to hold.
        reconnects_per_s: the attacker's pace once the server starts closing them.
    """

    def __init__(self, port: int, count: int, reconnects_per_s: float = 200) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.count = count
        self.pace = 1 / reconnects_per_s
        self.closed_by_server = 0
        self.open_now = 0
        self._halt = threading.Event()
        self._sel = selectors.DefaultSelector()

    def _open(self) -> None:
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))  # in progress: the kernel finishes it (or not)
        self._sel.register(s, selectors.EVENT_READ)

    def run(self) -> None:
        for _ in range(self.count):
            self._open()
        due = 0
        while not self._halt.is_set():
            for key, _ in self._sel.select(0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    gone = s.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    self._sel.unregister(s)
                    s.close()
                    self.closed_by_server += 1
                    due += 1
            while due and not self._halt.is_set():
                self._open()
                due -= 1
                time.sleep(self.pace)
            self.open_now = len(self._sel.get_map())
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (reading nothing else), or None if still open after ``seconds``."""
    sock.settimeout(0.05)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None
