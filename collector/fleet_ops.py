"""What an operator works from on the fleet page, beyond each device's own row (collector/fleet.py).

- the inference server of each device, from its agent's self-scraped ``backhaul_inference_*`` series
  (the store keeps them aside for the fleet page, ``collector.store.chunks.FLEET_SERIES``):
  ``up``/``down``/``crash_loop`` and restarts; and the proxy's time to first token, the median over
  the last hour of ``backhaul_proxy_time_to_first_token_seconds`` (its buckets' increase);
- model version drift *per model name*: a device whose model version differs from the most common
  version among the devices that run a model of the same name;
- the flags the filters and ``backhaul-collector status`` share: offline, behind (oldest unsent
  sample older than ``fleet.behind_after``), over budget (the link's daily or monthly budget spent,
  or ``UplinkBudgetSpent`` firing), skewed (clock offset beyond ``fleet.max_clock_skew``, or
  ``ClockSkew`` firing), crash-looping, drift (agent or model version).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from typing import Any

from collector.escalation import increase
from collector.store import Store
from collector.store.history import INFERENCE_SERIES, HistoryRow

INFERENCE = INFERENCE_SERIES[:3]
TTFT_BUCKET = INFERENCE_SERIES[3]
RECENT_MS = 10 * 60 * 1000  # an inference gauge older than this says nothing about now
TTFT_WINDOW_MS = 3600 * 1000


def common(values: list[str]) -> str:
    """The most common non-empty value; a tie goes to the highest, so the answer is stable."""
    counts = Counter(v for v in values if v)
    if not counts:
        return ""
    return max(counts.items(), key=lambda item: (item[1], item[0]))[0]


def model_drift(devices: list[dict[str, Any]]) -> dict[str, str]:
    """The fleet's most common model version per model name, and each device's drift flag set."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for d in devices:
        if d.get("model_name"):
            by_name[d["model_name"]].append(d.get("model_version") or "")
    commons = {name: common(versions) for name, versions in by_name.items()}
    for d in devices:
        expected = commons.get(d.get("model_name") or "", "")
        d["common_model_version"] = expected or None
        d["model_drift"] = bool(d.get("model_version")) and bool(expected) and d["model_version"] != expected
    return commons


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile`` over cumulative ``(le, count)`` buckets (linear within a bucket)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, count
    return None


async def inference_by_device(store: Store, now_ms: int) -> dict[str, dict[str, Any]]:
    """Per device: ``state`` (up, down, crash_loop; None when its agent does not report one),
    ``restarts`` and ``ttft_p50_s`` (None without requests in the last hour), from the samples the
    store keeps aside for the fleet page (``Store.fleet_samples``)."""
    out: dict[str, dict[str, Any]] = {}
    for name in INFERENCE:
        newest: dict[str, tuple[int, float]] = {}
        for device, _, ts, value in await store.fleet_samples(name, now_ms - RECENT_MS, now_ms):
            if device not in newest or ts >= newest[device][0]:
                newest[device] = (ts, value)
        for device, (_, value) in newest.items():
            out.setdefault(device, {"state": None, "restarts": None, "ttft_p50_s": None})[name] = value
    # Each bucket series' increase over the hour, from its last sample before it (a drop: a restart).
    start = now_ms - TTFT_WINDOW_MS
    series: dict[tuple[str, str], tuple[list[tuple[int, float]], list[tuple[int, float]]]] = {}
    for device, labels, ts, value in await store.fleet_samples(TTFT_BUCKET, start - TTFT_WINDOW_MS, now_ms):
        before, recent = series.setdefault((device, labels), ([], []))
        (recent if ts >= start else before).append((ts, value))
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (device, text), (before, recent) in series.items():
        le = dict(json.loads(text)).get("le", "")
        try:
            bound = float(le)
        except ValueError:
            continue
        baseline = max(before)[1] if before else None
        buckets[device][bound] += increase([v for _, v in sorted(recent)], baseline)
    for entry in out.values():
        up, looping = entry.pop(INFERENCE[0], None), entry.pop(INFERENCE[1], None)
        restarts = entry.pop(INFERENCE[2], None)
        if looping:
            entry["state"] = "crash_loop"
        elif up is not None:
            entry["state"] = "up" if up else "down"
        entry["restarts"] = int(restarts) if restarts is not None else None
    for device, found in buckets.items():
        entry = out.setdefault(device, {"state": None, "restarts": None, "ttft_p50_s": None})
        entry["ttft_p50_s"] = quantile(0.5, list(found.items()))
    return out


def flags(d: dict[str, Any], behind_after_s: float, max_skew_s: float) -> dict[str, bool]:
    """The device's flags (see the module docstring), from its row of the fleet snapshot."""
    rules = {a.get("rule") for a in d.get("alerts_firing") or []}
    link = d.get("uplink") or {}
    spent_day, budget_day = link.get("spent_day"), link.get("budget_day")
    spent_month, budget_month = link.get("spent_month"), link.get("budget_month")
    over = bool(budget_day and spent_day is not None and spent_day >= budget_day) or bool(
        budget_month and spent_month is not None and spent_month >= budget_month
    )
    offset = d.get("clock_offset_s")
    inference = d.get("inference") or {}
    return {
        "offline": not d.get("online") and d.get("last_seen_ms") is not None,
        "behind": (d.get("backlog_age_s") or 0) > behind_after_s,
        "over_budget": over or "UplinkBudgetSpent" in rules or link.get("blocked") == "budget",
        "skewed": (offset is not None and abs(offset) > max_skew_s) or "ClockSkew" in rules,
        "crash_looping": inference.get("state") == "crash_loop" or "InferenceCrashLoop" in rules,
        "drift": bool(d.get("version_drift") or d.get("model_drift")),
    }


async def enrich(
    store: Store,
    device_label: str,
    devices: list[dict[str, Any]],
    now_ms: int,
    behind_after_s: float,
    max_skew_s: float,
) -> dict[str, str]:
    """Add the link in use, clock offset, inference server, model drift and flags to the fleet's
    rows; returns the most common model version per model name."""
    latest = await store.latest_history()
    inference = await inference_by_device(store, now_ms)
    commons = model_drift(devices)
    for d in devices:
        row = latest.get(d["device"])
        offset = row.clock_offset_ms if row is not None else None
        d["clock_offset_s"] = offset / 1000 if offset is not None else None
        d["link"] = (row.link if row is not None else "") or None
        found = inference.get(d["device"], {})
        d["inference"] = {"state": found.get("state"), "restarts": found.get("restarts")}
        d["ttft_p50_s"] = found.get("ttft_p50_s")
        d["flags"] = flags(d, behind_after_s, max_skew_s)
    return commons


def link_switches(rows: list[HistoryRow]) -> list[dict[str, Any]]:
    """When the link changed, from one five-minute row to the next that names one."""
    out: list[dict[str, Any]] = []
    previous = ""
    for row in rows:
        if row.link and previous and row.link != previous:
            out.append({"at_ms": row.bucket_ms, "from": previous, "to": row.link})
        previous = row.link or previous
    return out
