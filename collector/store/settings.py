"""The ``[store]`` settings: which back end keeps what the collector received (see examples/collector.toml)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, SecretStr, model_validator

from backhaul.settings import Section
from backhaul.sqlite import Synchronous


class StoreSettings(Section):
    """The embedded SQLite store (``backend = "sqlite"``), or PostgreSQL shared by several instances."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path = Path("/var/lib/backhaul-collector/collector.db")
    # FULL: a batch is on disk before the agent is told it was stored (the agent then deletes it).
    synchronous: Synchronous = "FULL"
    # postgres only: postgresql://user:password@host:port/database
    dsn: SecretStr | None = None
    pool_size: int = Field(10, ge=1, le=1000)
    # Recent data for the export and the fleet page; long-term history belongs in the TSDB that
    # [[forward]] feeds. Whole chunks whose newest sample is older than this are removed (at least
    # 2 h: the fleet page's escalation share reads the last two hours).
    retention: timedelta = Field(timedelta(days=15), ge=timedelta(hours=2))
    # Over this many bytes of chunks the oldest are removed too (None: no limit but retention).
    max_bytes: ByteSize | None = Field(None, ge=1024**2)

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> StoreSettings:
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError("backend 'postgres' needs dsn = 'postgresql://user:password@host:port/database'")
        return self

    def describe(self) -> str:
        return f"postgres ({self.pool_size} connections)" if self.backend == "postgres" else f"sqlite {self.path}"
