"""The agent's settings: one root model, one nested model per component (see examples/agent.toml)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, HttpUrl, SecretStr, model_validator
from pydantic_settings import BaseSettings

from agent.alerts.settings import AlertSettings
from agent.proxy.settings import ProxySettings as ProxySettings  # re-exported: [proxy] is part of the root
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


class InferenceSettings(BaseModel):
    """The supervised inference process (nothing is supervised while ``command`` is empty)."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = []
    env: dict[str, str] = {}
    cwd: Path | None = None
    # Polled while the process runs; its answer sets backhaul_inference_healthy.
    health_url: HttpUrl | None = None
    health_interval: timedelta = Field(timedelta(seconds=10), gt=timedelta(0))
    # Scraped like any [[scrape.targets]] entry (job "inference").
    metrics_url: HttpUrl | None = None
    restart_backoff_min: timedelta = Field(timedelta(seconds=1), gt=timedelta(0))
    restart_backoff_max: timedelta = Field(timedelta(seconds=60), gt=timedelta(0))
    # This many restarts within crash_loop_window: state "crash_loop" (gauge and alert hook).
    crash_loop_restarts: int = Field(5, ge=1)
    crash_loop_window: timedelta = Field(timedelta(minutes=5), gt=timedelta(0))
    # On agent shutdown: SIGTERM to the process group, SIGKILL after this.
    stop_grace: timedelta = Field(timedelta(seconds=10), ge=timedelta(0))
    # stdout/stderr lines passed to the agent's log per second; the rest are counted, not logged.
    log_lines_per_second: float = Field(20.0, ge=0)
    # Reported as backhaul_model_info{name,version,sha256} 1; the file's SHA-256 is computed at start.
    model_name: str = ""
    model_version: str = ""
    model_path: Path | None = None


class ScrapeTarget(BaseModel):
    """One /metrics endpoint (Prometheus text or OpenMetrics)."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(min_length=1)
    url: HttpUrl
    # Default: [scrape] interval and timeout.
    interval: timedelta | None = Field(None, gt=timedelta(0))
    timeout: timedelta | None = Field(None, gt=timedelta(0))
    labels: dict[str, str] = {}


class ScrapeSettings(BaseModel):
    """Pull-based sources: scrape targets and the agent's own metrics."""

    model_config = ConfigDict(extra="forbid")

    interval: timedelta = Field(timedelta(seconds=15), gt=timedelta(0))
    timeout: timedelta = Field(timedelta(seconds=10), gt=timedelta(0))
    # Bigger pages are refused (the target's up is 0).
    max_body_bytes: ByteSize = ByteSize(16 * 1024**2)
    # The agent's own registry (proxy, supervisor, model info, backhaul_*) into the buffer; 0 = off.
    self_interval: timedelta = Field(timedelta(0), ge=timedelta(0))
    targets: list[ScrapeTarget] = []


class HostSettings(BaseModel):
    """Host metrics (psutil) and GPU metrics (nvidia-smi, tegrastats) into the buffer."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    interval: timedelta = Field(timedelta(seconds=15), gt=timedelta(0))
    # Used when found on PATH (or at this path); "" turns it off.
    nvidia_smi: str = "nvidia-smi"
    tegrastats: str = "tegrastats"


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
    inference: InferenceSettings = InferenceSettings()
    scrape: ScrapeSettings = ScrapeSettings()
    host: HostSettings = HostSettings()
    proxy: ProxySettings = ProxySettings()
    alerts: AlertSettings = AlertSettings()

    @model_validator(mode="after")
    def _budget_holds_batches(self) -> AgentSettings:
        if self.buffer.budget_bytes < 4 * self.uplink.batch_max_bytes:
            raise ValueError(
                "buffer.budget_bytes must be at least 4 x uplink.batch_max_bytes (a batch in flight is never evicted)"
            )
        u = self.uplink
        if u.url is not None and u.protocol == "backhaul" and not u.token.get_secret_value():
            raise ValueError("uplink.token is required when uplink.url is set")
        return self

    @model_validator(mode="after")
    def _child_stops_within_the_grace(self) -> AgentSettings:
        # The child's grace runs alongside the agent's own shutdown, which SIGKILLs it when time is up.
        if self.inference.command and self.inference.stop_grace > self.shutdown_grace:
            raise ValueError("inference.stop_grace must not exceed shutdown_grace (the child is stopped within it)")
        return self

    @model_validator(mode="after")
    def _alert_channels_have_a_collector(self) -> AgentSettings:
        for channel in self.alerts.channels:
            if channel.type != "http":
                continue
            if channel.url is None and (self.uplink.url is None or self.uplink.protocol != "backhaul"):
                raise ValueError("alerts.channels: an http channel needs a url (or uplink.url of a backhaul collector)")
            if channel.token is None and not self.uplink.token.get_secret_value():
                raise ValueError("alerts.channels: an http channel needs a token (or uplink.token)")
        return self
