"""The agent's local status (``GET /api/v1/status``), what ``backhaul-agent status`` shows.

One JSON object read from the running components: the buffer (used of its budget, the oldest unsent
sample), the uplink (link in use, budgets, windows, upload rate over the last minute, an estimated
time to drain the backlog and how much of it has drained), the alert lane, the inference server, the
clock, and the last reload. A part this build or this configuration does not have is ``null``; the
command shows it as "n/a".
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.clock.eras import SETTLED
from agent.clock.keeper import iso_ms
from backhaul import __version__

if TYPE_CHECKING:
    from agent.app import Agent
    from agent.clock.keeper import TimeKeeper
    from agent.uplink.links import Links

# The upload rate is measured over this long, sampled this often.
RATE_WINDOW_S = 60.0
SAMPLE_EVERY_S = 2.0


class AgentStatus:
    """Builds the status; :meth:`run` samples what is acknowledged, for the upload rate.

    Args:
        agent: the running agent.
        clock: wall clock in seconds.
    """

    def __init__(self, agent: Agent, clock: Callable[[], float] = time.time) -> None:
        self._agent = agent
        self._clock = clock
        self._started = clock()
        self._samples: deque[tuple[float, float]] = deque()
        self._peak = 0  # the backlog's largest size since it was last empty, for the progress bar

    def _sent_bytes(self) -> float:
        return self._agent.registry.get_sample_value("backhaul_uplink_bytes_total") or 0.0

    def sample(self) -> None:
        now = time.monotonic()
        self._samples.append((now, self._sent_bytes()))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        backlog = self._agent.store.totals.bytes
        self._peak = 0 if backlog == 0 else max(self._peak, backlog)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    def upload_rate(self) -> float | None:
        """Body bytes acknowledged per second over the last minute (None: not measured yet)."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def snapshot(self) -> dict[str, Any]:
        agent = self._agent
        now = self._clock()
        ok, health = agent.health()
        totals = agent.store.totals
        budget = agent.store.budget_bytes
        oldest = totals.oldest_ts
        self.sample()
        return {
            "device": agent.settings.device_id,
            "version": __version__,
            "pid": os.getpid(),
            "status": health["status"],
            "healthy": ok,
            "dead": health.get("dead", {}),
            "now": now,
            "uptime_s": now - self._started,
            "buffer": {
                "bytes": totals.bytes,
                "budget_bytes": budget,
                "used_share": totals.bytes / budget if budget else None,
                "samples": totals.samples,
                "chunks": totals.chunks,
                "oldest_unsent_ms": oldest,
                "oldest_unsent_age_s": max(0.0, now - oldest / 1000) if oldest else None,
            },
            "uplink": self._uplink(totals.bytes, now),
            "alerts": self._alerts(),
            "inference": self._inference(),
            "clock": self._clock_state(),
            "config": agent.config.describe(),
            "scrape_errors": agent.sources.scrape_errors(),
        }

    def _uplink(self, backlog: int, now: float) -> dict[str, Any] | None:
        agent = self._agent
        uploader = agent.uploader
        if uploader is None:
            return None
        u = agent.settings.uplink
        rate = self.upload_rate()
        # Less than a batch waiting is being up to date, not a backlog to drain.
        drained = backlog <= int(u.batch_max_bytes)
        last = agent.registry.get_sample_value("backhaul_uplink_last_success_timestamp_seconds") or None
        return {
            "url": str(u.url) if u.url is not None else None,
            "protocol": u.protocol,
            "last_error": uploader.last_error,
            "last_success_at": last,
            "upload_rate_bytes_per_s": rate,
            "drain_eta_s": 0.0 if drained else (backlog / rate if rate else None),
            "drain_progress": 1.0 if drained or not self._peak else max(0.0, 1 - backlog / self._peak),
            "links": links(agent.links, uploader.blocked),
        }

    def _alerts(self) -> dict[str, Any] | None:
        lane = self._agent.alerts
        return None if lane is None else dict(lane.health())

    def _inference(self) -> dict[str, Any] | None:
        supervisor = self._agent.supervisor
        if supervisor is None:
            return None
        restarts = self._agent.registry.get_sample_value("backhaul_inference_restarts_total") or 0.0
        return {
            **supervisor.describe(),
            "up": bool(self._agent.registry.get_sample_value("backhaul_inference_up")),
            "restarts": int(restarts),
            "crash_loop": supervisor.in_crash_loop,
        }

    def _clock_state(self) -> dict[str, Any]:
        agent = self._agent
        keeper = agent.timekeeper  # the clock keeper (docs/clock.md)
        described: dict[str, Any] = describe_clock(keeper) if keeper.entered else {}
        if agent.uploader is not None:
            described.setdefault("skew_s", agent.uploader.clock_skew)
        corrected = agent.registry.get_sample_value("backhaul_clock_corrected_samples_total")
        if corrected is not None:
            described.setdefault("corrected_samples", int(corrected))
        return described


def links(links: Links, blocked: str | None) -> list[dict[str, Any]]:
    """The uplink's links as the status shows them, in order (the one in use marked): each one's
    budgets, windows and why it is not in use (for the one in use: why bulk uploads are held)."""
    out = []
    for link in links:
        in_use = link is links.active
        report: dict[str, Any] = dict(link.report(blocked if in_use else link.blocked()))
        report.pop("link", None)
        why = report.pop("blocked") or None
        state = link.down()
        if why == "down" and state != "down":
            why = f"down ({state})"
        elif why is None and not in_use:
            why = "an earlier link is in use"
        metered = bool(report.get("budget_day") or report.get("budget_month") or report.get("next_window_ms"))
        extra = {"interface": link.interface or None, "alerts_only": link.alerts_only}
        out.append({"name": link.name, "in_use": in_use, "why_not": why, "metered": metered, **extra, **report})
    return out


def health(agent: Agent) -> tuple[bool, dict[str, Any]]:
    """``/healthz``: not stopping and no component dead; the buffer, uplink, inference server, clock,
    failing scrapes and alert lane."""
    t = agent.store.totals
    dead = dict(agent.tasks.dead)
    if agent.alerts is not None:
        dead.update(agent.alerts.dead())
    detail: dict[str, Any] = {
        "status": "stopping" if agent.stopping else ("degraded" if dead else "ok"),
        "device": agent.settings.device_id,
        "buffer": {
            "chunks": t.chunks,
            "bytes": t.bytes,
            "samples": t.samples,
            "budget_bytes": agent.store.budget_bytes,
        },
    }
    if dead:
        detail["dead"] = dead
    if agent.uploader is not None:
        uploader = agent.uploader
        detail["uplink"] = {"last_error": uploader.last_error, **agent.links.active.report(uploader.blocked)}
    if agent.supervisor is not None:
        detail["inference"] = agent.supervisor.describe()
    if agent.timekeeper.entered:
        detail["clock"] = describe_clock(agent.timekeeper)
    failing = agent.sources.scrape_errors()
    if failing:
        detail["scrape_errors"] = failing
    if agent.alerts is not None:
        detail["alerts"] = agent.alerts.health()
    return not agent.stopping and not dead, detail


def describe_clock(keeper: TimeKeeper) -> dict[str, Any]:
    """The clock's state for /api/v1/status and ``backhaul-agent status`` (docs/clock.md)."""
    era = keeper.book.current
    last = keeper.book.last_jump
    return {
        "era": era.id,
        "state": era.state,
        "trusted": era.state == SETTLED,
        "offset_s": era.offset_ms / 1000,
        "error_s": era.error_ms / 1000 if era.error_ms is not None else None,
        "source": era.source,
        "below_floor": era.below_floor,
        "floor": iso_ms(keeper.floor_ms),
        "boot_id": keeper.boot_id,
        "jumps": keeper.jumps_total,
        "last_jump": None
        if last is None
        else {"seconds": last.jump_ms / 1000, "to": iso_ms(last.wall_after_ms), "while_stopped": last.while_stopped},
        "held_samples": keeper.held.total,
        "corrected_samples": keeper.corrected_total,
    }
