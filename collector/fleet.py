"""The fleet page: every device, how healthy it is, how far behind, what it runs.

    GET /api/v1/fleet   JSON (below); the page is built from it and nothing else
    GET /fleet          one static HTML file with inline JS and CSS (collector/static/fleet.html)
    GET /api/v1/fleet/DEVICE   one device: its row, its last day (collector/store/history.py), alerts
    GET /fleet/DEVICE   the same file, showing that device (charts drawn as SVG in the page); it reads
                        GET /fleet/api/DEVICE (the same as /api/v1/fleet/DEVICE), below the page's
                        folder, where a browser sends the basic-auth login it was opened with

Everything is read from the store, so every collector instance shows the same fleet. A device is
listed when it is in the registry or has ever uploaded. ``version_drift`` flags a device whose agent
version differs from the fleet's most common one. ``alerts_firing`` is filled by the store's
``alerts_firing()`` (empty until the collector keeps alerts). ``escalated_share`` and
``escalation_reason``: see ``collector/escalation.py``. ``uplink`` is the device's link as its
agent last reported it (docs/uplink.md), with ``blocked`` read for now: "window" once the window
the last batch went in has closed (until the next one opens), "budget" while the agent's
``UplinkBudgetSpent`` alert fires, else what the last batch said ("cap": throttled).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from collector.config import CollectorSettings
from collector.escalation import Escalation, escalation_by_device
from collector.fleet_ops import enrich, link_switches
from collector.store import DeviceState, Store
from collector.store.history import BUCKET_MS

DAY_MS = 24 * 3600 * 1000

# Label names an inference server's model-info series may use, in order of preference.
MODEL_NAME_LABELS = ("model", "model_name", "name")
MODEL_VERSION_LABELS = ("version", "model_version")


def _first(labels: dict[str, str], names: tuple[str, ...]) -> str:
    return next((labels[n] for n in names if labels.get(n)), "")


def link_state(raw: str, now_ms: int, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """A device's reported link (``DeviceState.uplink``), with why uploads are held now."""
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        found = {}
    if not isinstance(found, dict):
        found = {}
    ends, opens = int(found.get("window_ends_ms") or 0), int(found.get("next_window_ms") or 0)
    blocked = "cap" if found.get("blocked") == "cap" else ""
    if opens > now_ms and (not ends or ends <= now_ms):
        blocked = "window"
    elif any(a.get("rule") == "UplinkBudgetSpent" for a in alerts):
        blocked = "budget"
    return {
        "spent_day": found.get("spent_day"),
        "budget_day": found.get("budget_day"),
        "spent_month": found.get("spent_month"),
        "budget_month": found.get("budget_month"),
        "window_open_until_ms": ends if ends > now_ms else None,
        "next_window_ms": opens if opens > now_ms else None,
        "next_window_in_s": (opens - now_ms) / 1000 if opens > now_ms else None,
        "blocked": blocked,
    }


def common_version(versions: list[str]) -> str:
    """The most common non-empty version; a tie goes to the highest, so the answer is stable."""
    counts = Counter(v for v in versions if v)
    if not counts:
        return ""
    return max(counts.items(), key=lambda item: (item[1], item[0]))[0]


class Fleet:
    """Args: settings, the store, and a wall clock in seconds."""

    def __init__(self, settings: CollectorSettings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._page = resources.files("collector").joinpath("static/fleet.html").read_bytes()

    async def snapshot(self) -> dict[str, Any]:
        store = self._store
        states = {s.device: s for s in await store.device_states()}
        registry = {r.device: r for r in await store.registrations()}
        models = await store.model_info(self._settings.device_label)
        alerts = await store.alerts_firing()
        now_ms = int(self._clock() * 1000)
        escalations = await escalation_by_device(store, self._settings.device_label, now_ms)
        offline_after_ms = int(self._settings.fleet.offline_after.total_seconds() * 1000)
        common = common_version([s.agent_version for s in states.values()])
        devices = []
        for name in sorted(states.keys() | registry.keys()):
            state = states.get(name) or DeviceState(name)
            reg = registry.get(name)
            model = models.get(name, {})
            routed = escalations.get(name) or Escalation()
            seen = state.last_seen_ms > 0
            devices.append(
                {
                    "device": name,
                    "registered": reg is not None,
                    "revoked": bool(reg and reg.revoked),
                    "last_seen_ms": state.last_seen_ms if seen else None,
                    "last_seen_age_s": (now_ms - state.last_seen_ms) / 1000 if seen else None,
                    "online": seen and now_ms - state.last_seen_ms <= offline_after_ms,
                    "backlog_bytes": state.backlog_bytes,
                    "backlog_oldest_ms": state.backlog_oldest_ms or None,
                    "backlog_age_s": (now_ms - state.backlog_oldest_ms) / 1000 if state.backlog_oldest_ms else None,
                    "samples": state.samples,
                    "batches": state.batches,
                    **state.losses(),
                    # Samples its agent re-stamped because its clock was wrong (docs/clock.md).
                    "corrected_samples": state.corrected_samples,
                    "agent_version": state.agent_version,
                    "version_drift": bool(state.agent_version) and state.agent_version != common,
                    "model_name": _first(model, MODEL_NAME_LABELS),
                    "model_version": _first(model, MODEL_VERSION_LABELS),
                    "model_labels": model,
                    "alerts_firing": alerts.get(name, []),
                    "uplink": link_state(state.uplink, now_ms, alerts.get(name, [])),
                    # Inference requests its proxy sent to the cloud in the last hour, and mostly why.
                    "escalated_share": routed.share,
                    "escalation_reason": routed.main_reason,
                }
            )
        f = self._settings.fleet
        model_versions = await enrich(
            store,
            self._settings.device_label,
            devices,
            now_ms,
            f.behind_after.total_seconds(),
            f.max_clock_skew.total_seconds(),
        )
        return {
            "generated_ms": now_ms,
            "offline_after_s": offline_after_ms / 1000,
            "behind_after_s": f.behind_after.total_seconds(),
            "max_clock_skew_s": f.max_clock_skew.total_seconds(),
            "common_agent_version": common,
            "common_model_versions": model_versions,
            "devices": devices,
        }

    async def api(self, request: web.Request) -> web.Response:
        return web.json_response(await self.snapshot(), headers={"Cache-Control": "no-store"})

    async def device_api(self, request: web.Request) -> web.Response:
        """``GET /api/v1/fleet/DEVICE``: its row, its last day in five-minute rows, its alerts of the
        last day (firing ones whenever they started) and its link switches."""
        name = request.match_info["device"]
        snapshot = await self.snapshot()
        row = next((d for d in snapshot["devices"] if d["device"] == name), None)
        if row is None:
            raise web.HTTPNotFound(text=f"no device {name!r}")
        now_ms = snapshot["generated_ms"]
        history = await self._store.history(name, now_ms - DAY_MS)
        alerts = [
            a.as_dict()
            for a in await self._store.alerts(device=name)
            if a.state == "firing" or (a.ends_ms or a.updated_ms) >= now_ms - DAY_MS
        ]
        body = {
            "generated_ms": now_ms,
            "bucket_ms": BUCKET_MS,
            "device": row,
            "history": [h.as_dict() for h in history],
            "alerts": alerts,
            "link_switches": link_switches(history),
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")
