"""The ``[listen]`` settings of the agent's one HTTP listener (:mod:`agent.http`)."""

from __future__ import annotations

from pydantic import Field

from backhaul.settings import Section


class ListenSettings(Section):
    """The agent's one HTTP listener (remote write, /metrics, /healthz)."""

    host: str = "127.0.0.1"
    port: int = Field(9201, ge=0, le=65535)
