"""What the agent applies on a reload (SIGHUP), component by component (:mod:`backhaul.reload`).

Applied without a restart: ``log_level``; the scrape targets (``[scrape]`` targets, interval and
timeout, ``inference.metrics_url``); the alert rules, channels and the token that signs alerts; the
uplink's token, batch interval and backoff; the uplink's links (``[[uplink.links]]``: added, removed,
reordered) and each link's cap, budgets, windows, interface, source address and drain order, a link
that keeps its name keeping what it spent; the inference server's health check, restart backoff,
crash-loop rule and log rate; and, re-read at every reload, the uplink's TLS files. Everything else
(the buffer, the listener, the uplink URL and protocol, the inference command, ...) needs a restart:
a reload logs it as such and keeps the value in force. The alert state, the alert queue and the buffer
are never touched by a reload.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agent.alerts.setup import channels, mac_token
from agent.config import AgentSettings
from agent.sources import scrape_targets
from agent.uplink.build import transport_for
from agent.uplink.link import Link
from agent.uplink.remote_write import RemoteWriteTransport
from agent.uplink.settings import INHERITED, PER_LINK
from agent.uplink.transport import HttpTransport, Transport
from backhaul.reload import ConfigReload
from backhaul.wire import alert as wire

if TYPE_CHECKING:
    from agent.app import Agent

SCRAPE = ("scrape.targets", "scrape.interval", "scrape.timeout", "inference.metrics_url")
ALERTS = ("alerts.rules", "alerts.channels", "alerts.token", "uplink.token")
UPLINK_PACE = ("uplink.batch_interval", "uplink.backoff_min", "uplink.backoff_max")
# Each link's settings, and those a link takes from [uplink] (agent/uplink/settings.py).
UPLINK_LINKS = tuple(f"uplink.{name}" for name in ("links", *PER_LINK, *INHERITED))
INFERENCE_HEALTH = tuple(
    f"inference.{name}"
    for name in (
        "health_url",
        "health_interval",
        "restart_backoff_min",
        "restart_backoff_max",
        "crash_loop_restarts",
        "crash_loop_window",
        "log_lines_per_second",
    )
)


def set_log_level(settings: AgentSettings | object) -> None:
    level = getattr(settings, "log_level", "INFO")
    logging.getLogger().setLevel(level)


def register(reload: ConfigReload[AgentSettings], agent: Agent) -> None:
    """The agent's reload steps, for the components this agent runs."""
    reload.apply("log level", ("log_level",), set_log_level)
    reload.apply("scrape targets", SCRAPE, lambda s: agent.sources.scraper.replace_targets(scrape_targets(s)))
    lane = agent.alerts
    if lane is not None:

        async def alerts(s: AgentSettings) -> None:
            chosen = channels(s, agent.tls, lane.budget, agent.links.alert_route)
            await lane.reconfigure(s.alerts.rules, chosen, wire.token_key(mac_token(s)))

        reload.apply("alert rules and channels", ALERTS, alerts)
    uploader = agent.uploader
    if uploader is not None:

        def set_token(s: AgentSettings) -> None:
            for transport in uploader.transports():
                if isinstance(transport, HttpTransport | RemoteWriteTransport):
                    transport.set_token(s.uplink.token.get_secret_value())

        reload.apply("uplink token", ("uplink.token",), set_token)
        reload.apply("uplink batch interval and backoff", UPLINK_PACE, lambda s: uploader.reconfigure(s.uplink))

    async def links(s: AgentSettings) -> None:
        if uploader is None:
            await agent.links.reconfigure(s.uplink)
            return

        def make(link: Link) -> Transport:
            # Where batches go (url, protocol) needs a restart: the new link's transport leads there too.
            transport = transport_for(agent.settings, link, agent.tls)
            if isinstance(transport, HttpTransport | RemoteWriteTransport):
                transport.set_token(s.uplink.token.get_secret_value())
            return transport

        await uploader.reconfigure_links(s.uplink, make)

    reload.apply("uplink links, caps, budgets and windows", UPLINK_LINKS, links)
    supervisor = agent.supervisor
    if supervisor is not None:
        reload.apply("inference health settings", INFERENCE_HEALTH, lambda s: supervisor.reconfigure(s.inference))
