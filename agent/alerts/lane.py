"""The alert lane: rules and built-in checks -> state machine -> durable queue -> sender -> channels.

Nothing here touches the bulk buffer or the uploader: the queue is its own SQLite file on its own
thread, the sender its own task with its own connections, so an alert leaves as soon as a rule fires,
whatever backlog the uploader is draining.

Evaluation runs on the agent's APScheduler every ``eval_interval`` and, in addition, right after
samples that match a rule arrive, so a threshold crossed by a pushed sample fires within milliseconds
rather than at the next scheduled pass. Such eager passes are at least ``_EAGER_GAP`` seconds apart,
and ten times as far apart as a pass takes, so that they never cost more than about a tenth of a core.
A pending alert is evaluated again the moment its ``for`` runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from agent.alerts.budget import AlertBudget
from agent.alerts.builtin import BuiltinChecks, Readings
from agent.alerts.channels import Channel
from agent.alerts.metrics import AlertMetrics
from agent.alerts.queue import AlertQueue, StartInfo
from agent.alerts.rules import Result, RuleEngine
from agent.alerts.sender import AlertSender
from agent.alerts.settings import AlertSettings, RuleSettings
from agent.alerts.state import Tracker, Transition
from backhaul.errors import StoreError
from backhaul.lifecycle import TaskGroup
from backhaul.retry import Backoff
from backhaul.sqlite import Synchronous
from backhaul.wire.alert import AlertMessage
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)

_EAGER_GAP = 0.02
# Longest wait between attempts to open a queue that could not be opened at start (seconds).
_OPEN_RETRY_MAX = 5.0


class AlertLane:
    """Owns the alert queue, the sender and the evaluation; an async context manager.

    Args:
        settings: the ``[alerts]`` settings.
        device_id: this device's id (in every message).
        queue_path: the queue's SQLite file.
        synchronous: SQLite synchronous level for the queue (the buffer's).
        channels: where messages go, in fallback order.
        readings: what the built-in checks read.
        metrics: the agent's metrics.
        clock: wall clock in seconds.
        long_form: where the long form of a rule's alert goes (the bulk buffer), or None: a
            ``backhaul_alert`` sample with the series' labels plus ``alertname``, ``alertstate``,
            ``severity`` and ``alert_fingerprint``, valued as the message.
        key: the MAC key every message is signed with (``backhaul.wire.alert.token_key`` of the
            device's token).
        budget: the lane's own byte budget (alerts.daily_bytes), charged by the channels; None: none.
    """

    def __init__(
        self,
        settings: AlertSettings,
        device_id: str,
        queue_path: Path,
        synchronous: Synchronous,
        channels: list[Channel],
        readings: Readings,
        metrics: AlertMetrics,
        clock: Callable[[], float] = time.time,
        long_form: Callable[[SeriesMap], Awaitable[None]] | None = None,
        key: bytes = b"",
        budget: AlertBudget | None = None,
    ) -> None:
        self.budget = budget
        self.settings = settings
        self._long_form = long_form
        self._device = device_id
        self._metrics = metrics
        self._clock = clock
        self._readings = readings
        self.channels = channels
        self.queue = AlertQueue(queue_path, settings.max_queue, synchronous, clock)
        self.engine = RuleEngine(
            settings.rules,
            settings.max_series_per_rule,
            settings.stale_after.total_seconds(),
            on_match=self._eager,
            clock=clock,
        )
        self.tracker = Tracker(int(settings.repeat_interval.total_seconds() * 1000))
        self.sender = AlertSender(
            self.queue,
            channels,
            metrics,
            settings.backoff_min.total_seconds(),
            settings.backoff_max.total_seconds(),
            key=key,
            budget=budget,
        )
        self.start: StartInfo | None = None
        self._builtin: BuiltinChecks | None = None
        self._lock = asyncio.Lock()
        self._tasks = TaskGroup()
        self._eager_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._last_eval = 0.0
        self._eval_cost = 0.0  # seconds the last pass took
        self._due_handle: asyncio.TimerHandle | None = None
        self._open = False

    async def __aenter__(self) -> AlertLane:
        try:
            await self._start()
        except StoreError as exc:
            # e.g. a full disk: the agent must start anyway; the lane opens once it can.
            log.error("alert queue %s cannot be opened (%s); retrying in the background", self.queue.path, exc)
            self._tasks.spawn("alert queue opener", self._start_later(), forever=False)
        return self

    async def _start_later(self) -> None:
        # Soon at first (a full disk may be freed at once), then every few seconds: alerts wait meanwhile.
        backoff = Backoff(1.0, _OPEN_RETRY_MAX)
        while True:
            await asyncio.sleep(backoff.next())
            try:
                await self._start()
            except StoreError as exc:
                log.debug("alert queue still cannot be opened: %s", exc)
            else:
                log.info("alert queue %s opened", self.queue.path)
                return

    async def _start(self) -> None:
        self.start = await self.queue.call(self.queue.open)
        self._open = True
        if self.budget is not None:
            self.budget.load(*await self.queue.call(self.queue.spent))
        self._builtin = BuiltinChecks(self.settings.builtin, self._readings, self.start, self._clock)
        restored = await self.queue.call(self.queue.firing)
        now_ms = int(self._clock() * 1000)
        self.tracker.restore(
            [Result(rule, fp, True, float("nan"), sev, "", 0) for rule, fp, sev, _ in restored],
            now_ms,
            int(self.settings.stale_after.total_seconds() * 1000),
        )
        self._metrics.alerts_queued.set(self.queue.length)
        self._tasks.spawn("alert sender", self.sender.run())
        self._tasks.spawn("alert first evaluation", self.evaluate(), forever=False)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in (self._eager_handle, self._due_handle):
            if handle is not None:
                handle.cancel()
        await self._tasks.aclose()
        for channel in self.channels:
            await channel.close()
        if self._open:
            await self.queue.call(self.queue.close, True)
        await self.queue.db.aclose()

    async def reconfigure(self, rules: list[RuleSettings], channels: list[Channel], key: bytes) -> None:
        """A reload: new rules and channels; the alerts firing or pending, the queue and its sequence
        stay (an alert whose rule is gone resolves at the next evaluation, like a series that went)."""
        async with self._lock:
            self.engine.replace_rules(rules)
            retired = self.sender.reconfigure(channels, key)
            self.channels = channels
        for channel in retired:
            await channel.close()
        self.request_evaluation()

    def dead(self) -> dict[str, str]:
        """The lane's background tasks that ended by themselves (the sender), for /healthz."""
        return dict(self._tasks.dead)

    def health(self) -> dict[str, object]:
        found: dict[str, object] = {
            "queued": self.queue.length,
            "active": sorted({name for name, _ in self.tracker.states()}),
            "last_error": self.sender.last_error,
        }
        if self.budget is not None:
            found["spent_today"] = self.budget.spent()
            found["daily_bytes"] = self.budget.daily
        return found

    def request_evaluation(self) -> None:
        """Something a built-in check reads just changed (e.g. the inference server entered a crash
        loop): evaluate soon rather than at the next scheduled pass."""
        self._eager()

    def _eager(self) -> None:
        """Samples matched a rule: evaluate soon (coalesced), on the event loop."""
        if self._eager_handle is not None or not self._open:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_eval + max(_EAGER_GAP, 10 * self._eval_cost) - time.monotonic()
        if wait > 0:
            self._eager_handle = loop.call_later(wait, self._eager_fire)
        else:
            self._eager_handle = loop.call_soon(self._eager_fire)

    def _eager_fire(self) -> None:
        self._eager_handle = None
        self._tasks.spawn("alert evaluation", self.evaluate(), forever=False)

    def _wake_when_due(self, now_ms: int) -> None:
        """Evaluate again when the earliest pending alert's ``for`` runs out (not at the next pass)."""
        due = self.tracker.next_due_ms()
        if self._due_handle is not None:
            self._due_handle.cancel()
            self._due_handle = None
        if due is not None and self._open:
            self._due_handle = asyncio.get_running_loop().call_later(
                max(0.0, (due - now_ms) / 1000) + 0.001, self._due_fire
            )

    def _due_fire(self) -> None:
        self._due_handle = None
        self._tasks.spawn("alert evaluation due", self.evaluate(), forever=False)

    async def evaluate(self) -> None:
        """One pass over every rule and built-in check; queues and sends what changed."""
        async with self._lock:
            if not self._open or self._builtin is None:
                return
            self._last_eval = time.monotonic()
            results = self.engine.evaluate() + self._builtin.evaluate()
            now_ms = int(self._clock() * 1000)
            transitions = self.tracker.step(results, now_ms)
            self._eval_cost = time.monotonic() - self._last_eval
            self._wake_when_due(now_ms)
            firing = self.tracker.firing()
            self._metrics.alerts_firing.set(len(firing))
            self._metrics.alert_ignored_series.set(self.engine.ignored)
            if not transitions:
                return
            messages = [
                AlertMessage(
                    self._device,
                    t.result.name,
                    t.state,
                    t.result.severity,
                    t.value,
                    t.ts_ms,
                    0,
                    t.result.fingerprint,
                    t.result.summary,
                )
                for t in transitions
            ]
            for t in transitions:
                self._metrics.alert_transitions.labels(t.state).inc()
                log.warning("alert %s %s (value %g)", t.result.name, t.state, t.value)
            try:
                _, dropped = await self.queue.call(
                    self.queue.enqueue, messages, [(r.name, r.fingerprint, r.severity, now_ms) for r in firing]
                )
            except StoreError as exc:
                log.error("could not queue %d alert messages: %s", len(messages), exc)
                return
            if dropped:
                self._metrics.alerts_dropped.labels("queue_full").inc(dropped)
                log.error("alert queue full: dropped %d older messages", dropped)
            self._metrics.alerts_queued.set(self.queue.length)
            self.sender.notify()
            if self._long_form is not None:
                series: SeriesMap = {
                    long_form_labels(t): ([t.ts_ms], [t.value]) for t in transitions if t.result.labels
                }
                if series:
                    self._tasks.spawn("alert long form", self._write_long_form(series), forever=False)

    async def _write_long_form(self, series: SeriesMap) -> None:
        """Into the bulk buffer, off the evaluation path (a slow commit must not hold alerts back)."""
        assert self._long_form is not None
        try:
            await self._long_form(series)
        except Exception as exc:  # the compact message went already: the long form is a bonus
            log.warning("could not buffer the long form of %d alerts: %s", len(series), exc)


def long_form_labels(t: Transition) -> tuple[tuple[str, str], ...]:
    r = t.result
    own = {
        "__name__": "backhaul_alert",
        "alertname": r.name,
        "alertstate": t.state,
        "severity": r.severity,
        "alert_fingerprint": f"{r.fingerprint:08x}",
    }
    labels = {k: v for k, v in r.labels if k not in own}
    labels.update(own)
    return tuple(sorted(labels.items()))
