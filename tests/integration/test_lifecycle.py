"""SIGTERM and systemd's notify protocol, with a real agent process and a real notify socket."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from backhaul.wire.chunk import Codec
from backhaul.wire.series import Labels
from tests.support import Proc, Sender, free_port, metric_value

pytestmark = [pytest.mark.integration]


def buffered_samples(db: Path) -> set[tuple[Labels, int]]:
    codec = Codec()
    conn = sqlite3.connect(db)
    found: set[tuple[Labels, int]] = set()
    for (blob,) in conn.execute("SELECT data FROM chunks"):
        for labels, (stamps, _) in codec.decode(blob, 1 << 30).items():
            found.update((labels, t) for t in stamps)
    conn.close()
    return found


class NotifyListener:
    """A notify socket read the way systemd reads it: at once, on its own thread."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        self.arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self.sock.recv(4096).decode()
            except OSError:  # closed
                return
            with self.arrived:
                self.messages.append(message)
                self.arrived.notify_all()

    def wait_for(self, word: str, timeout: float = 10) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: any(word in m for m in self.messages), timeout), word

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def test_sigterm_under_systemd_notify_and_watchdog(tmp_path):
    listener = NotifyListener(tmp_path / "notify.sock")
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "dev-1"\nshutdown_grace = 8\n[listen]\nport = {port}\n'
        f'[buffer]\npath = "{tmp_path / "buffer.db"}"\nbudget_bytes = "64MiB"\n'
    )
    proc = Proc(
        "backhaul-agent",
        config,
        tmp_path / "agent.log",
        env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"},
    )
    proc.start()
    try:
        listener.wait_for("READY=1")
        listener.wait_for("WATCHDOG=1")
        url = f"http://127.0.0.1:{port}"
        proc.wait_healthy(url)
        sender = Sender(url, series=500, interval=0)
        sender.start()
        time.sleep(1.0)
        started = time.monotonic()
        assert proc.popen is not None  # started above
        proc.popen.send_signal(15)
        sender.stop()  # its last requests fail or are refused with 503: never acknowledged, never lost
        assert proc.popen.wait(10) == 0
        assert time.monotonic() - started < 8
        listener.wait_for("STOPPING=1")
        assert listener.messages.count("WATCHDOG=1") >= 1
        # everything acknowledged before and during shutdown is in the buffer file
        assert sender.acked.keys() <= buffered_samples(tmp_path / "buffer.db")
        assert len(sender.acked) > 0
    finally:
        proc.kill()
        listener.close()


def test_sigterm_stops_the_agent_while_nobody_reads_its_notify_socket(tmp_path):
    """A busy systemd (or a stuck reader) leaves the notify queue full: the agent must neither stall
    its event loop on a ping nor hang its stop on STOPPING=1."""
    notify_path = tmp_path / "notify.sock"
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(str(notify_path))
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "dev-1"\n[listen]\nport = {port}\n[buffer]\npath = "{tmp_path / "buffer.db"}"\n')
    # a ping every 50 ms fills the kernel's 10-message queue within the first second
    env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "100000"}
    proc = Proc("backhaul-agent", config, tmp_path / "agent.log", env=env)
    proc.start()
    try:
        url = f"http://127.0.0.1:{port}"
        proc.wait_healthy(url)
        time.sleep(1.0)
        assert metric_value(url, "backhaul_buffer_samples") == 0  # the loop still answers with the queue full
        assert proc.popen is not None  # started above
        started = time.monotonic()
        proc.popen.send_signal(15)
        assert proc.popen.wait(10) == 0
        assert time.monotonic() - started < 3  # STOPPING=1 waits at most a second for room
    finally:
        proc.kill()
        unread.close()


def test_restart_resumes_with_the_backlog(start_agent):
    agent = start_agent("http://127.0.0.1:9")  # uplink unreachable
    sender = Sender(agent.url, series=100)
    sender.start()
    time.sleep(0.5)
    sender.stop()
    held = metric_value(agent.url, "backhaul_buffer_samples")
    assert held == len(sender.acked) > 0
    assert agent.proc.stop() == 0
    agent.proc.start()
    agent.proc.wait_healthy(agent.url)
    assert metric_value(agent.url, "backhaul_buffer_samples") == held
    assert metric_value(agent.url, "backhaul_buffer_oldest_unsent_sample_age_seconds") > 0
