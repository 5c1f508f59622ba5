"""Alerts the agent raises about itself, with no rule to configure.

    BufferNearlyFull   buffered bytes above ``buffer_full_ratio`` of the budget (value: the ratio)
    SamplesEvicted     the buffer evicted samples; resolves after ``eviction_quiet`` without (value: total)
    DiskLow            free space on the buffer's filesystem below ``buffer.min_free_bytes`` (value: bytes free)
    UploadsFailing     uploads failing for longer than ``upload_failing_after`` (value: seconds failing)
    ClockSkew          agent clock differs from the collector's by more than ``clock_skew_max`` (value: s)
    InferenceCrashLoop the supervised inference server keeps exiting (value: 1); only with [inference] command
    UplinkBudgetNearlySpent  the link spent ``budget_nearly_spent`` (80 %) of a budget (value: the share
                       of the budget spent); inactive while the link in use has no daily_bytes or
                       monthly_bytes (a reload may add or remove them)
    UplinkBudgetSpent  bulk uploads are held until the budget renews (value: the share spent)
    AgentCrashed       this start follows a run that did not shut down cleanly (value: starts so far)
    AgentRestarted     this start follows a clean shutdown (value: starts so far)

The last two fire at start and resolve after ``restart_hold``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.alerts.queue import StartInfo
from agent.alerts.rules import Result, fingerprint
from agent.alerts.settings import BuiltinSettings


@dataclass
class Readings:
    """Where the checks read the agent's state (all cheap, read-only)."""

    buffer_bytes: Callable[[], int]
    budget_bytes: int
    disk_path: Path
    disk_floor: int
    evicted_total: Callable[[], float]  # samples evicted since the agent started
    upload_error: Callable[[], str | None]  # the uploader's last error, None while uploads succeed
    clock_skew: Callable[[], float]  # seconds, agent minus collector
    # Whether the supervised inference server is in a crash loop; None when none is supervised.
    inference_crash_loop: Callable[[], bool] | None = None
    # The largest share of the active link's budget spent, and whether bulk uploads are held for it
    # ((0, False) while it has none); None when no uplink is configured.
    uplink_budget: Callable[[], tuple[float, bool]] | None = None


def _result(name: str, active: bool, value: float, severity: str, summary: str) -> Result:
    return Result(name, fingerprint(name), active, value, severity, summary, 0)


class BuiltinChecks:
    """Args: settings; readings; what the queue knew at start; wall clock (s)."""

    def __init__(
        self, settings: BuiltinSettings, readings: Readings, start: StartInfo, clock: Callable[[], float] = time.time
    ) -> None:
        self._s = settings
        self._r = readings
        self._start = start
        self._clock = clock
        self._started = clock()
        self._evicted = readings.evicted_total()
        self._last_eviction = -math.inf
        self._failing_since: float | None = None

    def evaluate(self) -> list[Result]:
        if not self._s.enabled:
            return []
        now = self._clock()
        r, s = self._r, self._s
        ratio = r.buffer_bytes() / r.budget_bytes if r.budget_bytes else 0.0
        evicted = r.evicted_total()
        if evicted > self._evicted:
            self._last_eviction = now
        self._evicted = evicted
        stat = os.statvfs(r.disk_path)
        free = float(stat.f_bavail * stat.f_frsize)
        error = r.upload_error()
        if error is None:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = now
        failing = 0.0 if self._failing_since is None else now - self._failing_since
        skew = r.clock_skew()
        out = [
            _result("BufferNearlyFull", ratio > s.buffer_full_ratio, ratio, "warning", "buffer above its budget share"),
            _result(
                "SamplesEvicted", now - self._last_eviction < s.eviction_quiet.total_seconds(), evicted, "warning", ""
            ),
            _result("DiskLow", free < r.disk_floor, free, "critical", "free disk below the floor"),
            _result(
                "UploadsFailing",
                failing >= s.upload_failing_after.total_seconds() and error is not None,
                failing,
                "warning",
                (error or "")[:60],
            ),
            _result("ClockSkew", abs(skew) > s.clock_skew_max.total_seconds(), skew, "warning", ""),
        ]
        if r.inference_crash_loop is not None:
            looping = r.inference_crash_loop()
            out.append(
                _result("InferenceCrashLoop", looping, float(looping), "critical", "inference server keeps exiting")
            )
        if r.uplink_budget is not None:
            used, spent = r.uplink_budget()
            nearly = used >= s.budget_nearly_spent and not spent
            out.append(_result("UplinkBudgetNearlySpent", nearly, used, "warning", "link budget nearly spent"))
            out.append(_result("UplinkBudgetSpent", spent, used, "warning", "bulk uploads wait for the budget"))
        if self._start.restarts:
            held = now - self._started < s.restart_hold.total_seconds()
            starts = float(self._start.restarts + 1)
            if self._start.previous_clean:
                out.append(_result("AgentRestarted", held, starts, "info", ""))
            else:
                out.append(_result("AgentCrashed", held, starts, "critical", "previous run did not stop cleanly"))
        return out
