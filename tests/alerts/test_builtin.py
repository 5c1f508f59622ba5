"""The built-in alerts, over readings a test controls (the checks only read)."""

from __future__ import annotations

import os
from pathlib import Path

from agent.alerts.builtin import BuiltinChecks, Readings
from agent.alerts.queue import StartInfo
from agent.alerts.settings import BuiltinSettings


class State:
    def __init__(self, tmp_path: Path) -> None:
        self.now = 1000.0
        self.bytes = 0
        self.evicted = 0.0
        self.error: str | None = None
        self.skew = 0.0
        stat = os.statvfs(tmp_path)
        self.free = stat.f_bavail * stat.f_frsize
        self.readings = Readings(
            buffer_bytes=lambda: self.bytes,
            budget_bytes=1000,
            disk_path=tmp_path,
            disk_floor=0,
            evicted_total=lambda: self.evicted,
            upload_error=lambda: self.error,
            clock_skew=lambda: self.skew,
        )


def active(checks: BuiltinChecks) -> set[str]:
    return {r.name for r in checks.evaluate() if r.active}


def test_each_builtin_alert_fires_and_clears(tmp_path: Path) -> None:
    s = State(tmp_path)
    checks = BuiltinChecks(
        BuiltinSettings(eviction_quiet=60, upload_failing_after=120), s.readings, StartInfo(0, True), lambda: s.now
    )
    assert active(checks) == set()
    s.bytes = 950
    s.evicted = 10
    s.error = "connection refused"
    s.skew = -45
    assert active(checks) == {"BufferNearlyFull", "SamplesEvicted", "ClockSkew"}  # uploads: not yet long enough
    s.now += 121
    assert active(checks) == {"BufferNearlyFull", "UploadsFailing", "ClockSkew"}  # no eviction for 121 s
    s.bytes, s.error, s.skew = 100, None, 1
    assert active(checks) == set()


def test_restart_alerts_say_whether_the_last_run_stopped_cleanly(tmp_path: Path) -> None:
    s = State(tmp_path)
    crashed = BuiltinChecks(BuiltinSettings(restart_hold=60), s.readings, StartInfo(4, False), lambda: s.now)
    (alert,) = [r for r in crashed.evaluate() if r.active]
    assert (alert.name, alert.severity, alert.value) == ("AgentCrashed", "critical", 5)
    s.now += 61
    assert active(crashed) == set()
    clean = BuiltinChecks(BuiltinSettings(), s.readings, StartInfo(1, True), lambda: s.now)
    assert active(clean) == {"AgentRestarted"}
    assert active(BuiltinChecks(BuiltinSettings(), s.readings, StartInfo(0, True), lambda: s.now)) == set()


def test_disk_low_compares_free_space_with_the_floor(tmp_path: Path) -> None:
    s = State(tmp_path)
    s.readings.disk_floor = s.free * 10  # a floor far above what is free
    assert "DiskLow" in active(BuiltinChecks(BuiltinSettings(), s.readings, StartInfo(0, True), lambda: s.now))
