"""The notify protocol's sender never stalls its caller on a full notify queue."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backhaul import systemd


@pytest.fixture
def unread_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def test_pings_past_a_full_queue_are_dropped_at_once(unread_socket: socket.socket) -> None:
    started = time.monotonic()
    sent = [systemd.ping_watchdog() for _ in range(40)]
    assert time.monotonic() - started < 1
    queued = sent.index(False)
    assert queued > 0 and not any(sent[queued:])  # the kernel's queue took the first ones, then none
    unread_socket.recv(4096)  # systemd reads one: room for one more
    assert systemd.ping_watchdog()


def test_a_state_change_waits_a_bounded_time_for_room(unread_socket: socket.socket) -> None:
    while systemd.ping_watchdog():
        pass
    started = time.monotonic()
    assert not systemd.notify("STOPPING=1", wait=0.2)
    assert 0.15 < time.monotonic() - started < 1
    unread_socket.recv(4096)
    assert systemd.notify("STOPPING=1", wait=0.2)
    messages = {unread_socket.recv(4096) for _ in range(3)}
    assert messages == {b"WATCHDOG=1"}  # in order: the earlier pings come first


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")
    assert not systemd.ping_watchdog()
