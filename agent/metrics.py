"""The agent's own metrics (``backhaul_*``): each component declares its own next to its code; this
bundles them for the agent's one registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Info

from agent.alerts.metrics import AlertMetrics
from agent.buffer.metrics import BufferMetrics
from agent.clock.metrics import ClockMetrics
from agent.ingest.metrics import IngestMetrics
from agent.uplink.metrics import UplinkMetrics


class AgentMetrics:
    """Every metric the agent exports, grouped by the component that moves it.

    Args: registry: where they are registered (a fresh one per agent; tests pass their own).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.info = Info("backhaul_agent", "Agent version and identity", registry=registry)
        self.ingest = IngestMetrics(registry)
        self.buffer = BufferMetrics(registry)
        self.uplink = UplinkMetrics(registry)
        self.alerts = AlertMetrics(registry)
        self.clock = ClockMetrics(registry)
