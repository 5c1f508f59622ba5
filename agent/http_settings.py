"""The ``[listen]`` settings of the agent's one HTTP listener (:mod:`agent.http`)."""

from __future__ import annotations

from pydantic import Field

from backhaul.listener import ListenLimits


class ListenSettings(ListenLimits):
    """The agent's one HTTP listener (remote write, /metrics, /healthz), with its timeouts and cap
    (:class:`~backhaul.listener.ListenLimits`: max_connections, header_timeout, body_timeout, idle_timeout)."""

    host: str = "127.0.0.1"
    port: int = Field(9201, ge=0, le=65535)
