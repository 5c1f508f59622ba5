"""The ``[[forward]]`` settings: one remote-write target per entry (see docs/forwarding.md)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import ByteSize, Field, HttpUrl

from backhaul.settings import Secret
from backhaul.tls import ClientTlsSettings


class ForwardTarget(ClientTlsSettings):
    """One remote-write endpoint (VictoriaMetrics, Prometheus, Mimir, Thanos Receive) that gets every stored
    sample; for an https URL, TLS as the agent's uplink (``ca_file``, ``client_cert``, ``client_key``,
    ``server_name``: :class:`~backhaul.tls.ClientTlsSettings`)."""

    # Names the target in metrics, logs and the default spool file name.
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    url: HttpUrl
    bearer_token: Secret | None = None
    # Extra request headers, e.g. X-Scope-OrgID for Mimir or an Authorization of another kind.
    headers: dict[str, str] = {}
    max_samples_per_request: int = Field(2000, ge=1, le=1_000_000)
    timeout: timedelta = Field(timedelta(seconds=30), gt=timedelta(0))
    backoff_min: timedelta = Field(timedelta(seconds=1), gt=timedelta(0))
    backoff_max: timedelta = Field(timedelta(minutes=5), gt=timedelta(0))
    # The durable queue of what this target has not acknowledged yet (default: next to the store,
    # forward-<name>.db). Over spool_max_bytes the oldest entries are dropped and counted; the
    # collector's own store still holds them.
    spool_path: Path | None = None
    spool_max_bytes: ByteSize = Field(ByteSize(10 * 1024**3), ge=1024**2)
