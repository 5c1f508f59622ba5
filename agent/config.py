"""The agent's settings: one root model, one nested model per component (see examples/agent.toml)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ByteSize, Field, HttpUrl, SecretStr, model_validator
from pydantic_settings import BaseSettings

from agent.alerts.settings import AlertSettings
from backhaul.settings import settings_config
from backhaul.sqlite import Synchronous
from backhaul.wire.batch import DEVICE_ID_PATTERN


class ListenSettings(BaseModel):
    """The agent's one HTTP listener (remote write, /metrics, /healthz)."""

    host: str = "127.0.0.1"
    port: int = Field(9201, ge=0, le=65535)


class BufferSettings(BaseModel):
    """The durable SQLite ring buffer."""

    path: Path = Path("/var/lib/backhaul/buffer.db")
    budget_bytes: ByteSize = Field(ByteSize(512 * 1024**2), ge=1024**2)
    # Samples older than this are dropped (and counted as expired) rather than kept forever.
    max_age: timedelta = timedelta(days=7)
    # FULL: a commit is on disk before the sender is answered, so a power cut loses nothing
    # acknowledged. NORMAL is faster but may lose the last commits on power loss (not on a crash).
    synchronous: Synchronous = "FULL"
    # Group commit: how long to gather further requests into one transaction.
    commit_delay_ms: float = Field(2.0, ge=0, le=1000)
    # Requests waiting for a commit above this many samples are answered 503 (sender retries).
    max_pending_samples: int = Field(2_000_000, ge=1000)
    # Small chunks (one per commit) are merged in the background into chunks of about this size.
    compact_target_samples: int = Field(100_000, ge=1000)
    # How often expiry (max_age) and compaction run.
    maintenance_interval: timedelta = Field(timedelta(seconds=30), gt=timedelta(0))
    zstd_level: int = Field(3, ge=1, le=22)
    # The filesystem's free-space floor: the buffer evicts its oldest data rather than take the free
    # space below this, and answers 503 when even that cannot make room (other files filled the disk).
    min_free_bytes: ByteSize = ByteSize(64 * 1024**2)


class IngestSettings(BaseModel):
    """Limits on what senders may push."""

    max_request_bytes: ByteSize = ByteSize(32 * 1024**2)
    max_decompressed_bytes: ByteSize = ByteSize(128 * 1024**2)
    max_labels_per_series: int = Field(128, ge=1)
    max_label_bytes: int = Field(16 * 1024, ge=64)
    # Samples stamped further ahead of the agent's clock than this are dropped and counted.
    max_future: timedelta = timedelta(minutes=10)


class UplinkSettings(BaseModel):
    """Where and how batches go."""

    url: HttpUrl | None = None
    token: SecretStr = SecretStr("")
    # Gather data for this long before sending a batch (a backlog is sent back to back).
    batch_interval: timedelta = timedelta(seconds=10)
    batch_max_bytes: ByteSize = Field(ByteSize(4 * 1024**2), ge=64 * 1024)
    timeout: timedelta = timedelta(seconds=30)
    backoff_min: timedelta = timedelta(seconds=1)
    backoff_max: timedelta = timedelta(minutes=5)


class AgentSettings(BaseSettings):
    """Root of the agent's configuration."""

    model_config = settings_config()

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # SIGTERM: time allowed to flush and close before exiting anyway (below systemd's TimeoutStopSec).
    shutdown_grace: timedelta = timedelta(seconds=20)
    listen: ListenSettings = ListenSettings()
    buffer: BufferSettings = BufferSettings()
    ingest: IngestSettings = IngestSettings()
    uplink: UplinkSettings = UplinkSettings()
    alerts: AlertSettings = AlertSettings()

    @model_validator(mode="after")
    def _budget_holds_batches(self) -> AgentSettings:
        if self.buffer.budget_bytes < 4 * self.uplink.batch_max_bytes:
            raise ValueError(
                "buffer.budget_bytes must be at least 4 x uplink.batch_max_bytes (a batch in flight is never evicted)"
            )
        if self.uplink.url is not None and not self.uplink.token.get_secret_value():
            raise ValueError("uplink.token is required when uplink.url is set")
        return self

    @model_validator(mode="after")
    def _alert_channels_have_a_collector(self) -> AgentSettings:
        for channel in self.alerts.channels:
            if channel.type != "http":
                continue
            if channel.url is None and self.uplink.url is None:
                raise ValueError("alerts.channels: an http channel needs a url (or uplink.url)")
            if channel.token is None and not self.uplink.token.get_secret_value():
                raise ValueError("alerts.channels: an http channel needs a token (or uplink.token)")
        return self
