"""How the agent and the collector start, run and stop: one model for both.

- :class:`Lifecycle`: components start in order through an ``AsyncExitStack``; a start either fully
  succeeds or unwinds everything it started (tasks, threads, listeners, scheduler), and a stop runs
  the exits in reverse order, all within one grace: a step that overruns is logged and the next one
  runs with what is left (each gets at least a short floor), so a hung step never holds the process
  until systemd's SIGKILL.
- :class:`TaskGroup`: background tasks owned by reference. A task that ends while it should run is
  a dead component: logged at ERROR at once, named by :attr:`TaskGroup.dead` (``/healthz`` answers
  503 naming it), never swallowed by a ``gather(..., return_exceptions=True)``.
- :class:`Jobs`: APScheduler (3.x) interval and cron jobs, owned: a failing run is logged with its
  traceback and counted, a stop waits for runs in progress within the grace.
- :func:`watchdog`: a fixed-rate loop (the time a pass takes is not added to the interval).
- :meth:`Lifecycle.reload` (SIGHUP): components that can re-read something without a restart register
  a step with :meth:`Lifecycle.on_reload` (today the TLS certificates); a failing step is logged and
  leaves what is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import UTC, datetime
from typing import Any, TypeVar

from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

T = TypeVar("T")

# Even once the grace is spent, each remaining step of a stop gets this long (closing a database,
# killing a child): together a few seconds, well inside systemd's TimeoutStopSec.
STEP_FLOOR = 0.5


class Lifecycle:
    """Ordered start and bounded, reverse-ordered stop of a program's components.

    Args:
        name: the program, for log lines.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._stack = AsyncExitStack()
        self._deadline: float | None = None
        self._reloads: list[tuple[str, Callable[[], object]]] = []

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(STEP_FLOOR, self._deadline - time.monotonic())

    async def _bounded(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await asyncio.wait_for(step(), self._remaining())
        except TimeoutError:
            log.error("%s: stopping %s took longer than the grace; going on without it", self.name, what)
        except Exception:
            log.exception("%s: stopping %s failed", self.name, what)

    async def enter(self, what: str, resource: AbstractAsyncContextManager[T]) -> T:
        """Start ``resource``; at stop its ``__aexit__`` runs (bounded by the grace)."""
        value = await resource.__aenter__()
        self._stack.push_async_callback(self._bounded, what, lambda: resource.__aexit__(None, None, None))
        return value

    def on_stop(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        """Run ``step`` at stop, before everything started earlier is stopped."""
        self._stack.push_async_callback(self._bounded, what, step)

    def on_reload(self, what: str, step: Callable[[], object]) -> None:
        """Run ``step`` (a function, or one returning an awaitable) at every :meth:`reload`."""
        self._reloads.append((what, step))

    async def reload(self) -> None:
        """Re-read what can change without a restart, step by step in registration order."""
        log.info("%s: reloading (%s)", self.name, ", ".join(what for what, _ in self._reloads) or "nothing to reload")
        for what, step in self._reloads:
            try:
                result = step()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%s: reloading %s failed; what was in force stays", self.name, what)

    async def stop(self, grace: float) -> None:
        """Stop everything started, newest first, within ``grace`` seconds (plus short floors)."""
        self._deadline = time.monotonic() + grace
        await self._stack.aclose()


class TaskGroup:
    """Background tasks kept by reference; the ones that must run for ever are watched.

    Args:
        on_death: called with a component's name when its task ended by itself.
    """

    def __init__(self, on_death: Callable[[str], None] = lambda name: None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_death = on_death
        self._closing = False
        # Component -> why it stopped, for /healthz.
        self.dead: dict[str, str] = {}

    def spawn(self, name: str, coro: Coroutine[Any, Any, object], *, forever: bool = True) -> asyncio.Task[Any]:
        """Run ``coro`` as a task. ``forever``: it runs until stopped, so its end is a dead component;
        else it is a one-off whose exception is logged (and whose normal end is just the end)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, forever))
        return task

    def _done(self, task: asyncio.Task[Any], forever: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        name = task.get_name()
        if exc is not None:
            log.error("%s failed: %r", name, exc, exc_info=exc)
        elif not forever:
            return
        else:
            log.error("%s stopped by itself", name)
        if forever:
            self.dead[name] = "stopped" if exc is None else f"{type(exc).__name__}: {exc}"[:200]
            self._on_death(name)

    async def aclose(self) -> None:
        """Cancel every task and await them all (the caller bounds the wait)."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> TaskGroup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SteadyInterval(IntervalTrigger):  # type: ignore[misc]  # APScheduler 3 has no type hints
    """APScheduler's interval trigger, sane when the wall clock steps forward.

    APScheduler 3 lists every run a job missed before coalescing them into one; after the clock
    jumps forward by years (a device booting at 1970 until NTP syncs), that is billions of runs and
    the event loop never comes back. Far behind, the next run is now.
    """

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        if fire is not None and previous_fire_time is not None and fire < now - self.interval:
            return now
        return fire


class Jobs:
    """Scheduled work on an APScheduler ``AsyncIOScheduler`` that this object owns.

    Args:
        registry: where ``backhaul_scheduled_job_failures_total{job}`` is counted.
        prefix: metric name prefix (``backhaul`` or ``backhaul_collector``).
    """

    def __init__(self, registry: CollectorRegistry, prefix: str = "backhaul") -> None:
        self.scheduler = AsyncIOScheduler()
        self.failures = Counter(
            f"{prefix}_scheduled_job_failures", "Scheduled job runs that raised, by job", ["job"], registry=registry
        )
        self._running: set[asyncio.Task[Any]] = set()

    def add(
        self,
        name: str,
        fn: Callable[..., Awaitable[object]],
        trigger: str | BaseTrigger,
        *,
        args: tuple[Any, ...] = (),
        next_run_time: datetime | None = None,
        **trigger_args: Any,
    ) -> Job:
        """Schedule ``fn(*args)``: one run at a time, missed runs coalesced, late rather than skipped."""

        async def run(*call_args: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                await fn(*call_args)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures.labels(name).inc()
                log.exception("scheduled job %s failed", name)
            finally:
                self._running.discard(task)

        extra: dict[str, Any] = {} if next_run_time is None else {"next_run_time": next_run_time}
        if trigger == "interval":
            trigger, trigger_args = SteadyInterval(**trigger_args), {}
        return self.scheduler.add_job(
            run,
            trigger,
            args=args,
            id=None,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            **extra,
            **trigger_args,
        )

    def rewind(self) -> None:
        """Run every job now: the wall clock stepped back. APScheduler 3 times its jobs by the wall
        clock, so each next run is now that much further away (a day back: no scrape for a day)."""
        now = datetime.now(UTC)
        for job in self.scheduler.get_jobs():
            job.modify(next_run_time=now)
        self.scheduler.wakeup()

    async def __aenter__(self) -> Jobs:
        self.scheduler.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop scheduling and let runs in progress finish (the caller bounds the wait); cancelled
        runs are not reported as failures."""
        if self.scheduler.running:
            self.scheduler.pause()
        try:
            while self._running:
                await asyncio.gather(*list(self._running), return_exceptions=True)
        finally:
            if self.scheduler.running:
                self.scheduler.shutdown(wait=False)


async def watchdog(interval: float, check: Callable[[], Awaitable[bool]], ping: Callable[[], object]) -> None:
    """Every ``interval`` seconds, at a fixed rate: ``ping()`` if ``check()`` answers True in time."""
    next_at = time.monotonic()
    while True:
        try:
            healthy = await asyncio.wait_for(check(), interval)
        except TimeoutError:
            healthy = False
            log.error("watchdog: health check did not answer within %.1f s; withholding the ping", interval)
        if healthy:
            ping()
        next_at += interval
        now = time.monotonic()
        if next_at < now:  # a stall: start counting afresh rather than pinging in a burst
            next_at = now
        await asyncio.sleep(next_at - now)
