"""The proxy's settings: ``[proxy]`` (listener, local upstream) and ``[proxy.cloud]`` (the fallback model).

Names are part of the interface (docs/inference.md, tests): keep them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import ByteSize, Field, HttpUrl, SecretStr, field_validator

from backhaul.listener import ListenLimits
from backhaul.settings import Secret
from backhaul.tls import ClientTlsSettings

# Why a request may leave the device; "requested" (X-Backhaul-Route: cloud) is not a trigger to enable.
Trigger = Literal["down", "overloaded", "slow_start", "too_long", "error"]
TRIGGERS: tuple[Trigger, ...] = ("down", "overloaded", "slow_start", "too_long", "error")


class CloudSettings(ClientTlsSettings):
    """``[proxy.cloud]``: an OpenAI-compatible cloud model the proxy escalates to (off while ``url`` is unset);
    TLS towards it as the uplink's (:class:`~backhaul.tls.ClientTlsSettings`)."""

    # Base URL as a client would use it, e.g. "https://api.example.com" (paths such as
    # /v1/chat/completions are appended as they came).
    url: HttpUrl | None = None
    # Sent as "Authorization: Bearer <token>"; prefer BACKHAUL_PROXY__CLOUD__TOKEN over the file.
    # Empty: the client's own Authorization header is passed on.
    token: Secret = SecretStr("")
    # Local model name -> cloud model name, applied to the request's "model"; others pass as they are.
    model_map: dict[str, str] = {}
    # Whole-request limit towards the cloud (a long generation streams for a while).
    timeout: timedelta = Field(timedelta(minutes=5), gt=timedelta(0))

    escalate_on: list[Trigger] = ["down", "error"]
    # "overloaded": escalate when this many requests are already in flight to the local server.
    max_local_in_flight: int = Field(4, ge=1)
    # "slow_start": no response headers, or (streams) no first token, from the local server within this.
    ttft_deadline: timedelta = Field(timedelta(seconds=2), gt=timedelta(0))
    # "too_long": the prompt's estimated tokens (characters / 4) above this.
    max_local_prompt_tokens: int = Field(4096, ge=1)

    # Path patterns (shell-style: "/v1/embeddings", "/v1/*") whose requests are local-only unless
    # they carry X-Backhaul-Route: allow-cloud (or cloud).
    private_routes: list[str] = []
    # Every request is local-only unless it opts in with X-Backhaul-Route: allow-cloud (or cloud).
    private_by_default: bool = False
    # Refuse escalation while the link may not carry bulk traffic (budget spent, outside its window).
    respect_budget: bool = True
    # Request bodies up to this size are held so they can be sent again to the cloud; bigger ones
    # stream to the local server and are never escalated.
    max_body_bytes: ByteSize = Field(ByteSize(4 * 1024**2), ge=1024)

    @field_validator("escalate_on")
    @classmethod
    def _no_repeats(cls, value: list[Trigger]) -> list[Trigger]:
        if len(set(value)) != len(value):
            raise ValueError("escalate_on lists a trigger twice")
        return value

    @field_validator("private_routes")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.startswith(("/", "*")):
                raise ValueError(f"private_routes: {pattern!r} is not a path pattern (start with / or *)")
        return value

    @property
    def enabled(self) -> bool:
        return self.url is not None


class ProxySettings(ListenLimits):
    """The optional reverse proxy in front of the inference HTTP API; its listener has the timeouts
    and connection cap of ``[listen]`` (:class:`~backhaul.listener.ListenLimits`), set here."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9202, ge=0, le=65535)
    upstream: HttpUrl = HttpUrl("http://127.0.0.1:8080")
    # Whole-request limit towards the upstream (long generations stream for a while).
    timeout: timedelta = Field(timedelta(minutes=10), gt=timedelta(0))
    cloud: CloudSettings = CloudSettings()
