"""Batch uploads and the link they go over (``backhaul_uplink_*``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.uplink.budget import KINDS
from agent.uplink.link import Link
from agent.uplink.links import Links

BLOCK_REASONS = ("window", "budget", "cap", "down")


class UplinkMetrics:
    """Args: registry: where the metrics are registered (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.batches = Counter("backhaul_uplink_batches", "Batch upload attempts, by outcome", ["outcome"], registry=r)
        self.uploaded_samples = Counter("backhaul_uplink_samples", "Samples acknowledged by the collector", registry=r)
        self.uploaded_bytes = Counter(
            "backhaul_uplink_bytes", "Batch body bytes acknowledged by the collector", registry=r
        )
        self.upload_failures = Counter(
            "backhaul_uplink_failures", "Failed upload attempts, by reason", ["reason"], registry=r
        )
        self.rejected = Counter(
            "backhaul_uplink_rejected_samples",
            "Samples dropped because the collector refused them as malformed (4xx)",
            registry=r,
        )
        self.last_success = Gauge(
            "backhaul_uplink_last_success_timestamp_seconds",
            "When the collector last acknowledged a batch",
            registry=r,
        )
        self.clock_skew = Gauge(
            "backhaul_uplink_clock_skew_seconds",
            "Agent clock minus the collector's Date header at the last reply (1 s resolution)",
            registry=r,
        )
        self.upload_seconds = Histogram(
            "backhaul_uplink_request_duration_seconds", "Duration of batch upload requests", registry=r
        )
        self.summary_samples = Counter(
            "backhaul_uplink_summary_samples",
            "Samples sent in summary batches (uplink.when_short = summarise), acknowledged",
            registry=r,
        )
        self.wire_bytes = Counter(
            "backhaul_uplink_wire_bytes",
            "Bytes bulk uploads put on the link and received from it (headers included, failed attempts too)",
            registry=r,
        )
        self.budget = Gauge(
            "backhaul_uplink_budget_bytes", "The link's byte budget per period (0: none)", ["period"], registry=r
        )
        self.budget_spent = Gauge(
            "backhaul_uplink_budget_spent_bytes",
            "Bytes the link spent in the current period (bulk uploads and escalated inference requests)",
            ["period"],
            registry=r,
        )
        self.budget_renews = Gauge(
            "backhaul_uplink_budget_renews_timestamp_seconds",
            "When the current budget period ends",
            ["period"],
            registry=r,
        )
        self.cap = Gauge(
            "backhaul_uplink_max_bytes_per_second", "The bulk uploads' bandwidth cap (0: none)", registry=r
        )
        self.next_window = Gauge(
            "backhaul_uplink_next_window_seconds",
            "Seconds until bulk uploads may go again by the windows (0 while one is open or none is set)",
            registry=r,
        )
        self.allowed = Gauge(
            "backhaul_uplink_allowed", "1 while bulk uploads may go now (no window closed, budget left)", registry=r
        )
        self.blocked = Gauge(
            "backhaul_uplink_blocked",
            "1 for the reason bulk uploads are held now: window (closed), budget (spent), cap (throttled)",
            ["reason"],
            registry=r,
        )
        self.link_active = Gauge(
            "backhaul_uplink_link_active", "1 for the link bulk uploads use now (or used last)", ["link"], registry=r
        )
        self.link_up = Gauge(
            "backhaul_uplink_link_up", "1 while the link's interface is up with an address", ["link"], registry=r
        )
        self.link_spent = Gauge(
            "backhaul_uplink_link_spent_bytes",
            "Bytes each link spent in the current period (saved under its name)",
            ["link", "period"],
            registry=r,
        )
        self.link_switches = Counter(
            "backhaul_uplink_link_switches",
            "Times bulk uploads moved from one link to another",
            ["from", "to"],
            registry=r,
        )
        self.newest_acked_age = Gauge(
            "backhaul_uplink_newest_acknowledged_sample_age_seconds",
            "Age of the newest sample the collector acknowledged (freshness at the collector)",
            registry=r,
        )

    def switched(self, was: str, to: str) -> None:
        self.link_switches.labels(was, to).inc()

    def watch_links(self, links: Links, blocked: Callable[[], str | None], newest_acked_ms: Callable[[], int]) -> None:
        """Read the links' gauges at scrape time: the unlabelled ones follow the link in use (its
        budgets, windows, why uploads are held), the ``link`` ones show each link. Called again after
        a reload changed the links."""

        def active() -> Link:
            return links.active

        self.cap.set_function(lambda: float(int(active().settings.max_bytes_per_second)))

        def limit(kind: str) -> Callable[[], float]:
            return lambda: float(active().budget.limits[kind])

        def spent(kind: str) -> Callable[[], float]:
            return lambda: float(active().budget.spent(kind, active().now()))

        def renews(kind: str) -> Callable[[], float]:
            return lambda: active().budget.periods.period(kind, active().now()).end

        for kind in KINDS:
            self.budget.labels(kind).set_function(limit(kind))
            self.budget_spent.labels(kind).set_function(spent(kind))
            self.budget_renews.labels(kind).set_function(renews(kind))

        def next_window() -> float:
            link = active()
            now = link.now()
            opens = link.windows.next_open(now)
            return 0.0 if opens is None else max(0.0, opens - now)

        def reason() -> str | None:
            return blocked() or ("cap" if active().throttling else None)

        self.next_window.set_function(next_window)
        self.allowed.set_function(lambda: 0.0 if blocked() else 1.0)

        def held_for(name: str) -> Callable[[], float]:
            return lambda: 1.0 if reason() == name else 0.0

        for name in BLOCK_REASONS:
            self.blocked.labels(name).set_function(held_for(name))

        def freshness() -> float:
            newest = newest_acked_ms()
            return 0.0 if not newest else max(0.0, active().now() - newest / 1000)

        self.newest_acked_age.set_function(freshness)
        self._watch_each(links)

    def _watch_each(self, links: Links) -> None:
        for gauge in (self.link_active, self.link_up, self.link_spent):
            gauge.clear()  # a reload may have removed or renamed links
        for link in links:
            self.link_active.labels(link.name).set_function(_is_active(links, link))
            self.link_up.labels(link.name).set_function(_is_up(link))
            for kind in KINDS:
                self.link_spent.labels(link.name, kind).set_function(_spent(link, kind))


def _is_active(links: Links, link: Link) -> Callable[[], float]:
    return lambda: float(link is links.active)


def _is_up(link: Link) -> Callable[[], float]:
    return lambda: float(link.down() is None)


def _spent(link: Link, kind: str) -> Callable[[], float]:
    return lambda: float(link.budget.spent(kind, link.now()))
