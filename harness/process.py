"""Child processes on 127.0.0.1: our console scripts and their real peers, each with a log file.

:class:`Process` is any program (Prometheus, vmagent, ...); :class:`Proc` is a backhaul program started
from its console script with a TOML config. Both raise :class:`ProcError` when a process exits early,
never gets ready or ignores SIGTERM: an ``AssertionError``, so that in a test it reads as a failure
with the process's log attached, while a script can catch it and print a one-line reason instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import psutil

from harness.net import http

BIN = Path(sys.executable).parent  # the console scripts installed next to this interpreter
LOG_TAIL = 8000  # characters of a log shown in a ProcError


class ProcError(AssertionError):
    """A process that exited early, did not get ready, or ignored SIGTERM.

    Args:
        name: the process's name (the program).
        reason: what went wrong, in a few words.
        log: its log file; ``str()`` of the error shows the log's tail.
    """

    def __init__(self, name: str, reason: str, log: Path) -> None:
        self.name = name
        self.reason = reason
        self.log = log
        tail = log.read_text(errors="replace")[-LOG_TAIL:] if log.exists() else ""
        super().__init__(f"{name} {reason}:\n{tail}")


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment without ``BACKHAUL_*`` (those override config files), plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("BACKHAUL_")}, **extra}


@dataclass
class Process:
    """A program run with its output appended to a log file.

    Args:
        name: what to call it in messages.
        argv: the command line.
        log: where its stdout and stderr go (appended: one log over restarts).
        env: variables on top of :func:`child_env`.
        detached: in a session of its own, so that a Ctrl-C in the terminal reaches only the caller,
            which then stops its children in order instead of all of them dying at once.
    """

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    detached: bool = False
    popen: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return self.argv

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    def start(self) -> Self:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(self.env),
                start_new_session=self.detached,
            )
        return self

    def wait_ready(
        self, url: str, timeout: float = 20, interval: float = 0.05, context: ssl.SSLContext | None = None
    ) -> None:
        """Until ``GET url`` answers 200; ProcError if the process exits first or ``timeout`` passes.
        ``context``: TLS settings for an https URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None, f"{self.name} was never started"
            if self.popen.poll() is not None:
                raise ProcError(self.name, f"exited with {self.popen.returncode}", self.log)
            try:
                if http("GET", url, timeout=1, context=context)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(interval)
        raise ProcError(self.name, f"not ready after {timeout} s", self.log)

    def ps(self) -> psutil.Process:
        """The running process, for its CPU times and memory."""
        return psutil.Process(self.pid)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, like a crash or a power cut."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as systemd stops a service, and wait; returns the exit status. One that ignores
        SIGTERM for ``timeout`` seconds is killed, then ProcError."""
        assert self.popen is not None, f"{self.name} was never started"
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                raise ProcError(self.name, f"ignored SIGTERM for {timeout} s", self.log) from None
        return self.popen.returncode


class Proc(Process):
    """A real backhaul process started from its console script: ``<program> run --config <config>``.

    Args:
        program: ``backhaul-agent`` or ``backhaul-collector``.
        config: its TOML file (read again at each start).
        log, env, detached: as for :class:`Process`.
    """

    def __init__(
        self, program: str, config: Path, log: Path, env: dict[str, str] | None = None, detached: bool = False
    ) -> None:
        super().__init__(program, [], log, dict(env or {}), detached)
        self.config = config

    @property
    def program(self) -> str:
        return self.name

    def command(self) -> list[str]:
        return [str(BIN / self.program), "run", "--config", str(self.config)]

    def wait_healthy(
        self, url: str, timeout: float = 20, interval: float = 0.05, context: ssl.SSLContext | None = None
    ) -> None:
        """Until ``{url}/healthz`` answers 200 (see :meth:`Process.wait_ready`)."""
        self.wait_ready(f"{url}/healthz", timeout, interval, context)


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faketime_env(offset: float) -> dict[str, str]:
    """Environment that runs a process with its wall clock ``offset`` seconds off ours (Debian's
    libfaketime, as the ``faketime`` program preloads it), its monotonic clock left alone so that
    asyncio's timers run normally. Put another preload (the power-cut shim) in front of it if needed."""
    if not LIBFAKETIME.exists():
        require_program("faketime")  # skips (or fails under CI) with the reason
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": f"{offset:+.3f}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def require_program(name: str) -> str:
    """Path of a real peer program for a test; skips loudly when it is missing, fails under CI=true."""
    import pytest  # here, not at the top: bench and the demo use this module without pytest

    path = shutil.which(name)
    if path:
        return path
    reason = f"'{name}' is not installed: run the tests as root via `make test` (it installs it) or apt-get install it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: required peer missing: {reason}")
    pytest.skip(reason)
