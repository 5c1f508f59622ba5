"""The ``[[devices]]`` settings: devices the config brings into the registry (:mod:`collector.registry`)."""

from __future__ import annotations

from pydantic import Field

from backhaul.wire.batch import DEVICE_ID_PATTERN
from collector.tokens import Credential


class DeviceEntry(Credential):
    """One device allowed to upload. Give ``token_sha256`` (hex) in production; ``token`` is for demos."""

    id: str = Field(pattern=DEVICE_ID_PATTERN)
