"""Builds the alert lane from the agent's settings and the parts whose state the built-in alerts read."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from agent.alerts.budget import AlertBudget
from agent.alerts.builtin import Readings
from agent.alerts.channels import Channel, CommandChannel, HttpChannel, Via
from agent.alerts.lane import AlertLane
from agent.alerts.metrics import AlertMetrics
from agent.alerts.settings import CommandChannelSettings, HttpChannelSettings, MqttChannelSettings
from agent.config import AgentSettings
from backhaul.periods import Periods
from backhaul.tls import ClientTls
from backhaul.wire import alert as wire
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)


def channels(
    settings: AgentSettings, tls: ClientTls | None = None, budget: AlertBudget | None = None, via: Via | None = None
) -> list[Channel]:
    """The configured channels in fallback order; by default HTTP to the collector when uplink.url is
    set and names a backhaul collector (an agent that uploads straight to a TSDB has no collector).
    ``tls``: the uplink's TLS settings, for http channels. Each charges ``budget`` (alerts.daily_bytes).
    ``via``: the link http channels send over (``[[uplink.links]]``)."""
    configured = list(settings.alerts.channels)
    to_collector = settings.uplink.url is not None and settings.uplink.protocol == "backhaul"
    if not configured and to_collector:
        configured = [HttpChannelSettings()]
    uplink_url = str(settings.uplink.url) if to_collector else None
    out: list[Channel] = []
    for c in configured:
        if isinstance(c, HttpChannelSettings):
            token = settings.uplink.token.get_secret_value()
            out.append(HttpChannel.from_settings(c, uplink_url, token, tls, budget, via))
        elif isinstance(c, MqttChannelSettings):
            from agent.alerts.mqtt import MqttChannel  # here: aiomqtt and paho only when configured

            out.append(MqttChannel(c, settings.device_id, budget))
        elif isinstance(c, CommandChannelSettings):
            out.append(CommandChannel(c, budget))
    return out


def mac_token(settings: AgentSettings) -> str:
    """The token whose digest keys the alert messages' MAC: the one the collector knows this device
    by -- ``alerts.token``, else the first HTTP channel's own ``token``, else ``uplink.token``."""
    token = settings.alerts.token
    for c in settings.alerts.channels:
        if token is None and isinstance(c, HttpChannelSettings):
            token = c.token
    return token.get_secret_value() if token is not None else settings.uplink.token.get_secret_value()


def build_lane(
    settings: AgentSettings,
    readings: Readings,
    metrics: AlertMetrics,
    clock: Callable[[], float] = time.time,
    long_form: Callable[[SeriesMap], Awaitable[None]] | None = None,
    tls: ClientTls | None = None,
    via: Via | None = None,
) -> AlertLane:
    """The lane for ``settings``; ``readings`` are what the built-in checks look at; ``tls`` the uplink's;
    ``via`` the link its http channels send over."""
    b = settings.buffer
    queue_path = settings.alerts.queue_path or b.path.with_name(b.path.stem + ".alerts.db")
    # Days are counted in the uplink's time zone, so "a day" means the same for both budgets.
    budget = AlertBudget(int(settings.alerts.daily_bytes), Periods(settings.uplink.budget_timezone), clock)
    chosen = channels(settings, tls, budget, via)
    if not chosen:
        log.warning("alerts: no channel configured and no uplink.url: alerts are queued but not sent")
    token = mac_token(settings)
    if chosen and not token.strip():
        log.warning("alerts: no token to sign messages with (alerts.token, uplink.token): a collector refuses them")
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
        wire.token_key(token),
        budget,
    )
