"""Per device, how many inference requests its proxy escalated to the cloud, and mostly why.

Read from the agents' self-scraped ``backhaul_proxy_routed_requests_total{route,reason}`` over the
last hour (``WINDOW_MS``): the increase of each series (a drop is a counter reset: the agent
restarted), from its last sample before the window, or from zero for a series that started inside
it. A local model that keeps escalating is a model that needs an update.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from collector.store import Store

ROUTED = "backhaul_proxy_routed_requests_total"
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
    series = [(sid, labels) for sid, labels in await store.series() if labels.get("__name__") == ROUTED]
    if not series:
        return {}
    ids = [sid for sid, _ in series]
    start = now_ms - WINDOW_MS
    recent = await store.samples(ids, start, now_ms)
    before = await store.samples(ids, start - LOOKBACK_MS, start - 1)
    out: dict[str, Escalation] = {}
    for sid, labels in series:
        device = labels.get(device_label)
        stamps, values = recent.get(sid, ([], []))
        if device is None or not values:
            continue
        earlier = before.get(sid, ([], []))[1]
        count = increase([v for _, v in sorted(zip(stamps, values, strict=True))], earlier[-1] if earlier else None)
        if count <= 0:
            continue
        e = out.setdefault(device, Escalation())
        route = labels.get("route", "")
        e.routes[route] += round(count)
        if route == "cloud":
            e.reasons[labels.get("reason", "")] += round(count)
    return out
