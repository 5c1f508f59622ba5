"""The ``[uplink]`` settings: where batches go and how (see examples/agent.toml)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import ByteSize, Field, HttpUrl, SecretStr

from backhaul.settings import Section


class UplinkSettings(Section):
    """Where and how batches go."""

    url: HttpUrl | None = None
    token: SecretStr = SecretStr("")
    # "backhaul": batches to a backhaul collector (url .../api/v1/batches). "remote_write": plain
    # Prometheus remote write 1.0 straight to a TSDB (url e.g. http://vm:8428/api/v1/write).
    protocol: Literal["backhaul", "remote_write"] = "backhaul"
    # remote_write only: samples per request, and the label naming this device on every series
    # (what the collector adds; "" for none).
    max_samples_per_request: int = Field(2000, ge=1, le=1_000_000)
    device_label: str = Field("device_id", pattern=r"^([a-zA-Z_][a-zA-Z0-9_]*)?$")
    # Gather data for this long before sending a batch (a backlog is sent back to back).
    batch_interval: timedelta = timedelta(seconds=10)
    batch_max_bytes: ByteSize = Field(ByteSize(4 * 1024**2), ge=64 * 1024)
    timeout: timedelta = timedelta(seconds=30)
    backoff_min: timedelta = timedelta(seconds=1)
    backoff_max: timedelta = timedelta(minutes=5)
