"""Per device, how many inference requests its proxy escalated to the cloud, and mostly why.

Read from the agents' self-scraped ``backhaul_proxy_routed_requests_total{route,reason}`` over the
last hour (``WINDOW_MS``): the increase of each series (a drop is a counter reset: the agent
restarted), from its last sample before the window, or from zero for a series that started inside
it. A local model that keeps escalating is a model that needs an update. The store keeps these
samples aside for the fleet page (``Store.fleet_samples``), so the page never decodes chunks.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from collector.store import Store
from collector.store.chunks import ROUTED

WINDOW_MS = 3600 * 1000
# How far before the window to look for a counter's starting point.
LOOKBACK_MS = 3600 * 1000


@dataclass
class Escalation:
    """One device's routed requests in the window, by route and, for the cloud, by reason."""

    routes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def share(self) -> float | None:
        total = sum(self.routes.values())
        return self.routes["cloud"] / total if total else None

    @property
    def main_reason(self) -> str | None:
        return self.reasons.most_common(1)[0][0] if self.reasons else None


def increase(values: list[float], baseline: float | None) -> float:
    """A counter's increase over ``values`` (in time order), counting a drop as a restart from zero."""
    total = 0.0
    previous = 0.0 if baseline is None else baseline
    for value in values:
        total += value - previous if value >= previous else value
        previous = value
    return total


async def escalation_by_device(store: Store, device_label: str, now_ms: int) -> dict[str, Escalation]:
    start = now_ms - WINDOW_MS
    series: dict[tuple[str, str], tuple[list[float], list[float]]] = {}  # (before, in the window)
    for device, labels, ts, value in await store.fleet_samples(ROUTED, start - LOOKBACK_MS, now_ms):
        before, recent = series.setdefault((device, labels), ([], []))
        (recent if ts >= start else before).append(value)
    out: dict[str, Escalation] = {}
    for (device, text), (before, recent) in series.items():
        if not recent:
            continue
        count = increase(recent, before[-1] if before else None)
        if count <= 0:
            continue
        pairs = dict(json.loads(text))
        e = out.setdefault(device, Escalation())
        route = pairs.get("route", "")
        e.routes[route] += round(count)
        if route == "cloud":
            e.reasons[pairs.get("reason", "")] += round(count)
    return out
