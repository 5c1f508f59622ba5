"""The ``[inference]`` settings: the inference process :mod:`agent.supervisor` runs and watches."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, HttpUrl

from backhaul.settings import Section


class InferenceSettings(Section):
    """The supervised inference process (nothing is supervised while ``command`` is empty)."""

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
