"""The sources' settings: ``[ingest]`` (limits on remote write), ``[scrape]`` and ``[host]``
(see examples/agent.toml)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import ByteSize, Field, HttpUrl

from backhaul.settings import InputLimits, Section


class IngestSettings(InputLimits):
    """Limits on what senders may push."""

    max_request_bytes: ByteSize = ByteSize(32 * 1024**2)
    max_decompressed_bytes: ByteSize = ByteSize(128 * 1024**2)
    # Samples stamped further ahead of the agent's clock than this are dropped and counted.
    max_future: timedelta = timedelta(minutes=10)


class ScrapeTarget(Section):
    """One /metrics endpoint (Prometheus text or OpenMetrics)."""

    job: str = Field(min_length=1)
    url: HttpUrl
    # Default: [scrape] interval and timeout.
    interval: timedelta | None = Field(None, gt=timedelta(0))
    timeout: timedelta | None = Field(None, gt=timedelta(0))
    labels: dict[str, str] = {}


class ScrapeSettings(Section):
    """Pull-based sources: scrape targets and the agent's own metrics."""

    interval: timedelta = Field(timedelta(seconds=15), gt=timedelta(0))
    timeout: timedelta = Field(timedelta(seconds=10), gt=timedelta(0))
    # Bigger pages are refused (the target's up is 0).
    max_body_bytes: ByteSize = ByteSize(16 * 1024**2)
    # The agent's own registry (proxy, supervisor, model info, backhaul_*) into the buffer; 0 = off.
    self_interval: timedelta = Field(timedelta(0), ge=timedelta(0))
    targets: list[ScrapeTarget] = []


class HostSettings(Section):
    """Host metrics (psutil) and GPU metrics (nvidia-smi, tegrastats) into the buffer."""

    enabled: bool = False
    interval: timedelta = Field(timedelta(seconds=15), gt=timedelta(0))
    # Used when found on PATH (or at this path); "" turns it off.
    nvidia_smi: str = "nvidia-smi"
    tegrastats: str = "tegrastats"
