"""The agent's settings: the root model, its composition and the checks that span components.

Each component owns its section's model, beside its code (see examples/agent.toml):
``[listen]`` :mod:`agent.http_settings`, ``[buffer]`` :mod:`agent.buffer.settings`, ``[ingest]``,
``[scrape]`` and ``[host]`` :mod:`agent.ingest.settings`, ``[uplink]`` :mod:`agent.uplink.settings`,
``[inference]`` :mod:`agent.supervisor_settings`, ``[alerts]`` :mod:`agent.alerts.settings`,
``[clock]`` :mod:`agent.clock.settings`.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator

from agent.alerts.settings import AlertSettings
from agent.buffer.settings import BufferSettings
from agent.clock.settings import ClockSettings
from agent.http_settings import ListenSettings
from agent.ingest.settings import HostSettings, IngestSettings, ScrapeSettings
from agent.proxy.settings import ProxySettings as ProxySettings  # re-exported: [proxy] is part of the root
from agent.supervisor_settings import InferenceSettings
from agent.uplink.settings import UplinkSettings
from backhaul.settings import ProgramSettings
from backhaul.wire.batch import DEVICE_ID_PATTERN


class AgentSettings(ProgramSettings):
    """Root of the agent's configuration."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
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
    clock: ClockSettings = ClockSettings()

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
    def _fresh_window_within_max_age(self) -> AgentSettings:
        if self.uplink.fresh_window > self.buffer.max_age:
            if "fresh_window" in self.uplink.model_fields_set:
                raise ValueError("uplink.fresh_window must not exceed buffer.max_age (older data is never buffered)")
            self.uplink.fresh_window = self.buffer.max_age  # the default, for a buffer that keeps less
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
