"""Builds the alert lane from the agent's settings and the parts whose state the built-in alerts read."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from agent.alerts.builtin import Readings
from agent.alerts.channels import Channel, CommandChannel, HttpChannel, MqttChannel
from agent.alerts.lane import AlertLane
from agent.alerts.settings import CommandChannelSettings, HttpChannelSettings, MqttChannelSettings
from agent.buffer.store import BufferStore
from agent.config import AgentSettings
from agent.metrics import AgentMetrics
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)


def channels(settings: AgentSettings) -> list[Channel]:
    """The configured channels in fallback order; by default HTTP to the collector when uplink.url is
    set and names a backhaul collector (an agent that uploads straight to a TSDB has no collector)."""
    configured = list(settings.alerts.channels)
    to_collector = settings.uplink.url is not None and settings.uplink.protocol == "backhaul"
    if not configured and to_collector:
        configured = [HttpChannelSettings()]
    uplink_url = str(settings.uplink.url) if to_collector else None
    out: list[Channel] = []
    for c in configured:
        if isinstance(c, HttpChannelSettings):
            out.append(HttpChannel.from_settings(c, uplink_url, settings.uplink.token.get_secret_value()))
        elif isinstance(c, MqttChannelSettings):
            out.append(MqttChannel(c, settings.device_id))
        elif isinstance(c, CommandChannelSettings):
            out.append(CommandChannel(c))
    return out


def build_lane(
    settings: AgentSettings,
    store: BufferStore,
    upload_error: Callable[[], str | None],
    metrics: AgentMetrics,
    registry: CollectorRegistry,
    clock: Callable[[], float] = time.time,
    long_form: Callable[[SeriesMap], Awaitable[None]] | None = None,
) -> AlertLane:
    b = settings.buffer
    queue_path = settings.alerts.queue_path or b.path.with_name(b.path.stem + ".alerts.db")
    readings = Readings(
        buffer_bytes=lambda: store.totals.bytes,
        budget_bytes=store.budget_bytes,
        disk_path=store.path.parent,
        disk_floor=store.min_free_bytes,
        evicted_total=lambda: registry.get_sample_value("backhaul_buffer_evicted_samples_total") or 0.0,
        upload_error=upload_error,
        clock_skew=lambda: registry.get_sample_value("backhaul_uplink_clock_skew_seconds") or 0.0,
        inference_crash_loop=lambda: registry.get_sample_value("backhaul_inference_crash_loop"),
    )
    chosen = channels(settings)
    if not chosen:
        log.warning("alerts: no channel configured and no uplink.url: alerts are queued but not sent")
    return AlertLane(
        settings.alerts,
        settings.device_id,
        queue_path,
        b.synchronous,
        chosen,
        readings,
        metrics,
        clock,
        long_form if settings.alerts.long_form else None,
    )
