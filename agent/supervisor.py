"""Supervises the inference process: start it, restart it with backoff, notice a crash loop, stop it.

The child runs in its own session (its own process group), so that on shutdown SIGTERM and, after
``stop_grace``, SIGKILL reach whatever it spawned too, and so that a Ctrl-C in the agent's terminal
reaches only the agent, which then stops the child in order. On Linux the child also gets
``PR_SET_PDEATHSIG``: if the agent itself dies without cleaning up (SIGKILL, a power-cut test), the
kernel kills the child, so the restarted agent does not find the old one still holding its port.

State: ``starting`` -> ``running`` -> (exit) -> ``backoff`` -> ``starting`` ...; ``crash_loop``
instead of ``backoff`` once ``crash_loop_restarts`` exits fell within ``crash_loop_window`` (it keeps
restarting, at the longest backoff); back to ``running`` after it stayed up for a whole window.
``stopping``/``stopped`` on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

import aiohttp
import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.process import LineLimiter, describe_exit, die_with_parent
from agent.supervisor_settings import InferenceSettings

log = logging.getLogger(__name__)
child_log = logging.getLogger("agent.inference")

_LINE_LIMIT = 1024 * 1024


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    CRASH_LOOP = "crash_loop"
    STOPPING = "stopping"


@dataclass(frozen=True)
class CrashLoop:
    """What the crash-loop observer is told."""

    command: tuple[str, ...]
    exits: int  # exits within the window
    window_seconds: float
    last_exit: str  # "exit code 3" or "signal SIGKILL"


class Supervisor:
    """Runs ``settings.command`` as a child process and keeps it running.

    Args:
        settings: the ``[inference]`` section (command, env, cwd, health URL, backoff, crash loop, grace).
        registry: where the ``backhaul_inference_*`` metrics are registered.
        on_crash_loop: called once each time the process enters the crash-loop state.
    """

    def __init__(
        self,
        settings: InferenceSettings,
        registry: CollectorRegistry,
        on_crash_loop: Callable[[CrashLoop], None] | None = None,
    ) -> None:
        if not settings.command:
            raise ValueError("inference.command is empty: nothing to supervise")
        self.settings = settings
        self.on_crash_loop = on_crash_loop
        self.state = State.STOPPED
        self.last_exit: str | None = None
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ps: psutil.Process | None = None
        self._started_at: float | None = None
        self._exits: deque[float] = deque()
        self._health_ok = False  # the last health check of the current process passed
        self._stopping = False
        self._stop_began = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._limiter = LineLimiter(settings.log_lines_per_second)
        r = registry
        self.up = Gauge("backhaul_inference_up", "1 while the supervised inference process runs", registry=r)
        self.healthy = Gauge(
            "backhaul_inference_healthy", "1 if the last health check of the inference process passed", registry=r
        )
        self.restarts = Counter("backhaul_inference_restarts", "Restarts of the inference process", registry=r)
        self.exit_code = Gauge(
            "backhaul_inference_last_exit_code", "Exit code of its last exit (-1: killed by a signal)", registry=r
        )
        self.exit_signal = Gauge(
            "backhaul_inference_last_exit_signal", "Signal that ended it last time (0: it exited)", registry=r
        )
        self.crash_loop = Gauge(
            "backhaul_inference_crash_loop", "1 while the inference process is in a crash loop", registry=r
        )
        self.suppressed = Counter(
            "backhaul_inference_log_lines_suppressed",
            "Output lines of the inference process not logged (over log_lines_per_second)",
            registry=r,
        )
        Gauge(
            "backhaul_inference_uptime_seconds",
            "Seconds since the current process started (0: not running)",
            registry=r,
        ).set_function(self._uptime)
        Gauge(
            "backhaul_inference_cpu_seconds", "CPU seconds (user + system) used by the current process", registry=r
        ).set_function(lambda: self._ps_read("cpu"))
        Gauge(
            "backhaul_inference_resident_memory_bytes", "Resident memory of the current process", registry=r
        ).set_function(lambda: self._ps_read("rss"))

    # -- lifecycle --

    async def __aenter__(self) -> Supervisor:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.stop()
        finally:
            self.kill_now()  # a stop cut short by the caller's grace never leaves the child behind

    @property
    def in_crash_loop(self) -> bool:
        return self.state == State.CRASH_LOOP

    def reconfigure(self, settings: InferenceSettings) -> None:
        """A reload: the health check, restart backoff, crash-loop rule and log rate from now on (the
        command, its environment and folder need a restart of the agent: the child is not restarted
        for a reload)."""
        self.settings = settings
        self._limiter = LineLimiter(settings.log_lines_per_second)

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("a Supervisor can be started once")
        self._task = asyncio.create_task(self._run(), name="supervisor")

    def begin_stop(self) -> None:
        """SIGTERM to the process group now; :meth:`stop` waits for it (the grace counts from here)."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_began = time.monotonic()
        self._wake.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self.state = State.STOPPING
            grace = self.settings.stop_grace.total_seconds()
            log.info("stopping inference process %d (SIGTERM, SIGKILL after %g s)", proc.pid, grace)
            self._signal(proc, signal.SIGTERM)

    async def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after ``stop_grace``; returns once the child is gone."""
        self.begin_stop()
        grace = self.settings.stop_grace.total_seconds()
        # A child being spawned right now gets its SIGTERM from _run_once; either way the loop ends
        # once the child is gone, and the grace bounds the wait.
        if self._task is not None:
            left = max(0.0, self._stop_began + grace - time.monotonic())
            done, _ = await asyncio.wait({self._task}, timeout=left)
            if not done:
                log.warning("inference process %s ignored SIGTERM for %g s: SIGKILL", self.pid, grace)
                self.kill_now()
                await asyncio.gather(self._task, return_exceptions=True)
        self.state = State.STOPPED

    def kill_now(self) -> None:
        """SIGKILL at once, without waiting (the agent's last resort when its shutdown ran out of time)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._signal(proc, signal.SIGKILL)

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # its own session: the group id is its pid
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    # -- the loop --

    async def _run(self) -> None:
        s = self.settings
        backoff = s.restart_backoff_min.total_seconds()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while not self._stopping:
                started = time.monotonic()
                returncode = await self._run_once(session)
                if self._stopping:
                    break
                ran = time.monotonic() - started
                s = self.settings  # a reload may have changed them
                self._record_exit(returncode)
                # A child that stayed up for a while gets a fresh start; a failing one waits longer each time.
                if ran >= s.restart_backoff_max.total_seconds():
                    backoff = s.restart_backoff_min.total_seconds()
                delay = s.restart_backoff_max.total_seconds() if self.state == State.CRASH_LOOP else backoff
                log.warning(
                    "inference process ended (%s) after %.1f s; restarting in %.1f s", self.last_exit, ran, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                backoff = min(s.restart_backoff_max.total_seconds(), backoff * 2)
                if not self._stopping:
                    self.restarts.inc()

    async def _run_once(self, session: aiohttp.ClientSession) -> int:
        """Start the child and wait for it to end; its return code (127: could not start)."""
        s = self.settings
        self.state = State.STARTING if self.state != State.CRASH_LOOP else State.CRASH_LOOP
        try:
            proc = await asyncio.create_subprocess_exec(
                *s.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **s.env},
                cwd=s.cwd,
                start_new_session=True,
                preexec_fn=die_with_parent(),
                limit=_LINE_LIMIT,
            )
        except OSError as exc:
            log.error("cannot start inference process %s: %s", s.command, exc)
            return 127
        self._proc = proc
        self.pid = proc.pid
        if self._stopping:  # stop() came while it was being spawned
            self._signal(proc, signal.SIGTERM)
        self._started_at = time.monotonic()
        with contextlib.suppress(psutil.Error):
            self._ps = psutil.Process(proc.pid)
        self.up.set(1)
        if self.state != State.CRASH_LOOP:
            self.state = State.RUNNING
        log.info("inference process started: pid %d: %s", proc.pid, " ".join(s.command))
        assert proc.stdout is not None and proc.stderr is not None
        helpers = [
            asyncio.create_task(self._pipe(proc.stdout, "stdout")),
            asyncio.create_task(self._pipe(proc.stderr, "stderr")),
            asyncio.create_task(self._watch(session)),
        ]
        try:
            returncode = await proc.wait()
        finally:
            self.up.set(0)
            self.healthy.set(0)
            self._health_ok = False
            self._started_at = None
            self._ps = None
            # Output still buffered in the pipes is logged; a grandchild holding them open is not waited for.
            await asyncio.wait(helpers[:2], timeout=1)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        return returncode

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        """While the child runs: health checks, and leaving the crash loop after a window of uptime."""
        s = self.settings
        window = s.crash_loop_window.total_seconds()
        started = time.monotonic()
        next_health = started
        interval = s.health_interval.total_seconds()
        while True:
            now = time.monotonic()
            if self.state == State.CRASH_LOOP and now - started >= window:
                self.state = State.RUNNING
                self.crash_loop.set(0)
                self._exits.clear()
                log.info("inference process up for %.0f s: crash loop over", window)
            s = self.settings  # a reload may have changed them
            interval = s.health_interval.total_seconds()
            window = s.crash_loop_window.total_seconds()
            if s.health_url is not None and now >= next_health:
                self._health_ok = await self._healthy(session, str(s.health_url))
                self.healthy.set(1 if self._health_ok else 0)
                # Until a check passes after a start, look again within a second: the proxy sends
                # requests back to the local server only once it is healthy.
                next_health = now + (interval if self._health_ok else min(interval, 1.0))
            wake = next_health if s.health_url is not None else math.inf
            if self.state == State.CRASH_LOOP:
                wake = min(wake, started + window)
            await asyncio.sleep(max(0.05, min(wake - time.monotonic(), 60.0)))

    @staticmethod
    async def _healthy(session: aiohttp.ClientSession, url: str) -> bool:
        try:
            async with session.get(url) as resp:
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _pipe(self, stream: asyncio.StreamReader, name: str) -> None:
        """Pass the child's output lines to the log, at most ``log_lines_per_second``."""
        limiter = self._limiter
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: log what fits
                raw = await stream.read(_LINE_LIMIT)
            if not raw:
                return
            if limiter.allow():
                if limiter.suppressed:
                    child_log.warning("[%s] %d lines suppressed (over %g/s)", name, limiter.suppressed, limiter.rate)
                    limiter.suppressed = 0
                child_log.info("[%s] %s", name, raw.decode(errors="replace").rstrip())
            else:
                limiter.suppressed += 1
                self.suppressed.inc()

    def _record_exit(self, returncode: int) -> None:
        self.last_exit = describe_exit(returncode)
        if returncode < 0:
            self.exit_code.set(-1)
            self.exit_signal.set(-returncode)
        else:
            self.exit_code.set(returncode)
            self.exit_signal.set(0)
        s = self.settings
        now = time.monotonic()
        window = s.crash_loop_window.total_seconds()
        self._exits.append(now)
        while self._exits and self._exits[0] < now - window:
            self._exits.popleft()
        if len(self._exits) >= s.crash_loop_restarts and self.state != State.CRASH_LOOP:
            self.state = State.CRASH_LOOP
            self.crash_loop.set(1)
            log.error(
                "inference process in a crash loop: %d exits within %.0f s (last: %s)",
                len(self._exits),
                window,
                self.last_exit,
            )
            if self.on_crash_loop is not None:
                event = CrashLoop(tuple(s.command), len(self._exits), window, self.last_exit)
                try:
                    self.on_crash_loop(event)
                except Exception:
                    log.exception("crash-loop observer failed")
        elif self.state != State.CRASH_LOOP:
            self.state = State.BACKOFF

    # -- metrics read at scrape time --

    def _uptime(self) -> float:
        started = self._started_at
        return 0.0 if started is None else time.monotonic() - started

    def _ps_read(self, what: str) -> float:
        ps = self._ps
        if ps is None:
            return 0.0
        try:
            if what == "cpu":
                t = ps.cpu_times()
                return float(t.user + t.system)
            return float(ps.memory_info().rss)
        except psutil.Error:
            return 0.0

    def unavailable(self) -> str | None:
        """Why the process cannot serve now (None: it can), for the proxy's ``down`` trigger: not running,
        in a crash loop, or (with a ``health_url``) its last health check since it started failed."""
        if self._started_at is None or self.state in (State.STOPPING, State.STOPPED):
            return "not running"
        if self.state == State.CRASH_LOOP:
            return "crash loop"
        if self.settings.health_url is not None and not self._health_ok:
            return "unhealthy"
        return None

    def describe(self) -> dict[str, object]:
        """For the agent's /healthz."""
        running = self._started_at is not None
        return {"state": str(self.state), "pid": self.pid if running else None, "last_exit": self.last_exit}
