"""The uplink's transport for the settings: batches to a collector, or remote write to a TSDB."""

from __future__ import annotations

from agent.config import AgentSettings
from agent.uplink.link import Link
from agent.uplink.remote_write import RemoteWriteTransport
from agent.uplink.transport import HttpTransport, Transport
from backhaul.tls import ClientTls


def transport_for(settings: AgentSettings, link: Link, tls: ClientTls | None) -> Transport:
    """The transport for ``uplink.protocol``, over ``link`` (its cap and budgets), with ``tls``."""
    u = settings.uplink
    token, timeout = u.token.get_secret_value(), u.timeout.total_seconds()
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
        )
    return HttpTransport(str(u.url), token, timeout, settings.buffer.zstd_level, tls, link)
