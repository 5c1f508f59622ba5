"""The ``[read]`` settings: who may read what the collector holds (:mod:`collector.read_auth`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from backhaul.settings import Section
from collector.tokens import Credential


class ReadToken(Credential):
    """One operator credential: a bearer token, or the password of HTTP basic auth (any user name).
    Give ``token_sha256`` (hex) in production, so the config holds no secret; ``token`` for a trial."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class ReadSettings(Section):
    """``auth = "token"`` (the default): the read endpoints (/api/v1/export, /api/v1/fleet, /fleet,
    GET /api/v1/alerts, /metrics) need one of ``tokens``; without any they answer 401 to everyone.
    ``auth = "none"`` opens them to anyone who reaches the listener (logged at start)."""

    auth: Literal["token", "none"] = "token"
    tokens: list[ReadToken] = []

    @model_validator(mode="after")
    def _unique(self) -> ReadSettings:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("read.tokens: each name may appear once")
        return self
