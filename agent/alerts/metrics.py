"""The alert lane (``backhaul_alerts_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AlertMetrics:
    """Args: registry: where the metrics are registered (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.alerts_sent = Counter(
            "backhaul_alerts_sent", "Alert messages acknowledged, by channel", ["channel"], registry=r
        )
        self.alert_failures = Counter(
            "backhaul_alerts_failures",
            "Alert delivery attempts that failed, by channel and reason",
            ["channel", "reason"],
            registry=r,
        )
        self.alerts_dropped = Counter(
            "backhaul_alerts_dropped",
            "Alert messages given up: queue_full (oldest resolved/low severity first) or refused as malformed",
            ["reason"],
            registry=r,
        )
        self.alerts_queued = Gauge(
            "backhaul_alerts_queued", "Alert messages waiting for an acknowledgement", registry=r
        )
        self.alerts_firing = Gauge("backhaul_alerts_firing", "Alert instances firing now", registry=r)
        self.alert_transitions = Counter(
            "backhaul_alerts_transitions", "Alert messages queued, by state (firing, resolved)", ["state"], registry=r
        )
        self.alert_ignored_series = Gauge(
            "backhaul_alerts_ignored_series",
            "Series a rule did not track because it already tracks alerts.max_series_per_rule",
            registry=r,
        )
        self.alert_delivery_seconds = Histogram(
            "backhaul_alerts_delivery_seconds",
            "Time from an alert's state change to its acknowledgement",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
            registry=r,
        )
