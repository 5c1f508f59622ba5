"""The ``[uplink]`` settings: where batches go and how (see examples/agent.toml)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import ByteSize, Field, HttpUrl, SecretStr, model_validator

from backhaul.settings import ReadableFile, Secret, Section


class UplinkSettings(Section):
    """Where and how batches go."""

    url: HttpUrl | None = None
    token: Secret = SecretStr("")
    # "backhaul": batches to a backhaul collector (url .../api/v1/batches). "remote_write": plain
    # Prometheus remote write 1.0 straight to a TSDB (url e.g. http://vm:8428/api/v1/write).
    protocol: Literal["backhaul", "remote_write"] = "backhaul"
    # remote_write only: samples per request, and the label naming this device on every series
    # (what the collector adds; "" for none).
    max_samples_per_request: int = Field(2000, ge=1, le=1_000_000)
    device_label: str = Field("device_id", pattern=r"^([a-zA-Z_][a-zA-Z0-9_]*)?$")
    # remote_write only: the TSDB takes native histograms (Prometheus with
    # --enable-feature=native-histograms, Mimir); otherwise they are left out (and logged per batch).
    native_histograms: bool = False
    # Gather data for this long before sending a batch (a backlog is sent back to back).
    batch_interval: timedelta = timedelta(seconds=10)
    batch_max_bytes: ByteSize = Field(ByteSize(4 * 1024**2), ge=64 * 1024)
    timeout: timedelta = timedelta(seconds=30)
    backoff_min: timedelta = timedelta(seconds=1)
    backoff_max: timedelta = timedelta(minutes=5)
    # TLS for https URLs (the uplink, the alert lane's http channel, remote_write): a private CA bundle
    # instead of the system's, this device's certificate and key (mTLS), and the name to verify when it
    # differs from the URL's host. Reloaded on SIGHUP and when the files change (backhaul.tls).
    ca_file: ReadableFile | None = None
    client_cert: ReadableFile | None = None
    client_key: ReadableFile | None = None
    server_name: str | None = Field(None, min_length=1, max_length=253)

    @model_validator(mode="after")
    def _key_needs_cert(self) -> UplinkSettings:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("uplink.client_key needs uplink.client_cert")
        return self

    @property
    def tls_configured(self) -> bool:
        return any(v is not None for v in (self.ca_file, self.client_cert, self.server_name))
