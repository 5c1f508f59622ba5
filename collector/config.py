"""The collector's settings: the root model, its composition and the checks that span sections.

Each component owns its section's model, beside its code (see examples/collector.toml):
``[listen]`` and ``[limits]`` :mod:`collector.http_settings`, ``[store]`` :mod:`collector.store.settings`,
``[export]`` :mod:`collector.export_settings`,
``[fleet]`` :mod:`collector.fleet_settings`, ``[[devices]]`` :mod:`collector.registry_settings`,
``[read]`` :mod:`collector.read_settings`,
``[[forward]]`` :mod:`collector.forward.settings`, ``[alerts]`` :mod:`collector.alerts.settings`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from backhaul.settings import ProgramSettings
from collector.alerts.settings import AlertSettings
from collector.export_settings import ExportSettings
from collector.fleet_settings import FleetSettings
from collector.forward.settings import ForwardTarget
from collector.http_settings import LimitSettings, ListenSettings
from collector.read_settings import ReadSettings
from collector.registry_settings import DeviceEntry
from collector.store.settings import StoreSettings


class CollectorSettings(ProgramSettings):
    """Root of the collector's configuration."""

    # Label added to every stored series to tell devices apart (an existing one becomes exported_<name>).
    device_label: str = Field("device_id", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    listen: ListenSettings = ListenSettings()
    store: StoreSettings = StoreSettings()
    limits: LimitSettings = LimitSettings()
    export: ExportSettings = ExportSettings()
    fleet: FleetSettings = FleetSettings()
    read: ReadSettings = ReadSettings()
    devices: list[DeviceEntry] = []
    forward: list[ForwardTarget] = []
    alerts: AlertSettings = AlertSettings()

    def spool_path(self, target: ForwardTarget) -> Path:
        """Where ``target``'s spool lives: its ``spool_path``, else forward-<name>.db beside the store."""
        return target.spool_path or self.store.path.parent / f"forward-{target.name}.db"

    @model_validator(mode="after")
    def _unique(self) -> CollectorSettings:
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("devices: each device id may appear once")
        digests = [d.digest() for d in self.devices]
        if len(set(digests)) != len(digests):
            raise ValueError("devices: two devices share a token")
        if set(digests) & {t.digest() for t in self.read.tokens}:
            raise ValueError("read.tokens: a device's token cannot be a read token (device tokens never read)")
        names = [t.name for t in self.forward]
        if len(set(names)) != len(names):
            raise ValueError("forward: each target name may appear once")
        return self
