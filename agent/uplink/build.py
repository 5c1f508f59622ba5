"""The uplink's transports for the settings: batches to a collector, or remote write to a TSDB, one
per link (each bound to its link's ``source_address``)."""

from __future__ import annotations

from agent.config import AgentSettings
from agent.uplink.link import Link
from agent.uplink.links import Links
from agent.uplink.remote_write import RemoteWriteTransport
from agent.uplink.transport import HttpTransport, Transport
from backhaul.tls import ClientTls


def transport_for(settings: AgentSettings, link: Link, tls: ClientTls | None) -> Transport:
    """The transport for ``uplink.protocol``, over ``link`` (its cap, budgets and source address),
    with ``tls``."""
    u = settings.uplink
    token, timeout = u.token.get_secret_value(), u.timeout.total_seconds()

    def source() -> str | None:
        return link.source_address  # read per request: a reload may change it

    if u.protocol == "remote_write":
        return RemoteWriteTransport(
            str(u.url),
            token,
            timeout,
            settings.device_id,
            u.device_label,
            u.max_samples_per_request,
            tls,
            settings=u,
            link=link,
            source=source,
        )
    return HttpTransport(str(u.url), token, timeout, settings.buffer.zstd_level, tls, link, source)


def transports_for(settings: AgentSettings, links: Links, tls: ClientTls | None) -> dict[str, Transport]:
    """A transport for each bulk link, by the link's name."""
    return {link.name: transport_for(settings, link, tls) for link in links.bulk()}
