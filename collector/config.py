"""The collector's settings (see examples/collector.toml)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ByteSize, Field, HttpUrl, SecretStr, model_validator
from pydantic_settings import BaseSettings

from backhaul.settings import settings_config
from backhaul.sqlite import Synchronous
from backhaul.wire.batch import DEVICE_ID_PATTERN


class ListenSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(9300, ge=0, le=65535)


class StoreSettings(BaseModel):
    """The embedded SQLite store (``backend = "sqlite"``), or PostgreSQL shared by several instances."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path = Path("/var/lib/backhaul-collector/collector.db")
    # FULL: a batch is on disk before the agent is told it was stored (the agent then deletes it).
    synchronous: Synchronous = "FULL"
    # postgres only: postgresql://user:password@host:port/database
    dsn: SecretStr | None = None
    pool_size: int = Field(10, ge=1, le=1000)

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> StoreSettings:
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError("backend 'postgres' needs dsn = 'postgresql://user:password@host:port/database'")
        return self

    def describe(self) -> str:
        return f"postgres ({self.pool_size} connections)" if self.backend == "postgres" else f"sqlite {self.path}"


class FleetSettings(BaseModel):
    """The fleet page (GET /fleet) and its JSON API (GET /api/v1/fleet)."""

    # A device whose last batch is older than this is shown offline.
    offline_after: timedelta = Field(timedelta(minutes=5), gt=timedelta(0))


class LimitSettings(BaseModel):
    max_request_bytes: ByteSize = ByteSize(64 * 1024**2)
    # Hard cap on what one batch may decompress to: a zstd bomb gets 413, never an out-of-memory.
    max_decompressed_bytes: ByteSize = ByteSize(256 * 1024**2)


class DeviceEntry(BaseModel):
    """One device allowed to upload. Give ``token_sha256`` (hex) in production; ``token`` is for demos."""

    id: str = Field(pattern=DEVICE_ID_PATTERN)
    token: SecretStr | None = None
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_token(self) -> DeviceEntry:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token or token_sha256")
        return self

    def digest(self) -> str:
        if self.token_sha256 is not None:
            return self.token_sha256
        assert self.token is not None
        return hashlib.sha256(self.token.get_secret_value().encode()).hexdigest()


class ForwardTarget(BaseModel):
    """One remote-write endpoint (VictoriaMetrics, Prometheus, Mimir, Thanos Receive) that gets every stored sample."""

    # Names the target in metrics, logs and the default spool file name.
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    url: HttpUrl
    bearer_token: SecretStr | None = None
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


class MqttSettings(BaseModel):
    """Alert messages from an MQTT broker (QoS 1, a persistent session keeps them while the collector is down)."""

    host: str
    port: int = Field(1883, ge=1, le=65535)
    # The last topic level names the device (the agents' default is backhaul/alerts/<device>).
    topic: str = "backhaul/alerts/+"
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = "backhaul-collector"


class AlertSettings(BaseModel):
    """Receiving urgent alerts and forwarding them."""

    mqtt: MqttSettings | None = None
    # Alertmanager's base URL (alerts go to <url>/api/v2/alerts), and/or a webhook that gets the same JSON list.
    alertmanager_url: HttpUrl | None = None
    webhook_url: HttpUrl | None = None
    # Firing alerts are sent again this often (Alertmanager resolves an alert not re-sent within its
    # resolve_timeout); resolved ones keep being sent for resolved_for, in case a send was lost.
    resend_interval: timedelta = Field(timedelta(seconds=60), gt=timedelta(0))
    resolved_for: timedelta = timedelta(minutes=15)
    timeout: timedelta = timedelta(seconds=10)


class CollectorSettings(BaseSettings):
    """Root of the collector's configuration."""

    model_config = settings_config()

    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # Label added to every stored series to tell devices apart (an existing one becomes exported_<name>).
    device_label: str = Field("device_id", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    listen: ListenSettings = ListenSettings()
    store: StoreSettings = StoreSettings()
    limits: LimitSettings = LimitSettings()
    fleet: FleetSettings = FleetSettings()
    devices: list[DeviceEntry] = []
    forward: list[ForwardTarget] = []

    def spool_path(self, target: ForwardTarget) -> Path:
        return target.spool_path or self.store.path.parent / f"forward-{target.name}.db"

    alerts: AlertSettings = AlertSettings()

    @model_validator(mode="after")
    def _unique(self) -> CollectorSettings:
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("devices: each device id may appear once")
        digests = [d.digest() for d in self.devices]
        if len(set(digests)) != len(digests):
            raise ValueError("devices: two devices share a token")
        names = [t.name for t in self.forward]
        if len(set(names)) != len(names):
            raise ValueError("forward: each target name may appear once")
        return self
