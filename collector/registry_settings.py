"""The ``[[devices]]`` settings: devices the config brings into the registry (:mod:`collector.registry`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from backhaul.settings import PLACEHOLDER_DIGESTS, Secret, Section
from backhaul.wire.batch import DEVICE_ID_PATTERN
from collector.tokens import token_digest


class DeviceEntry(Section):
    """One device allowed to upload. Give ``token_sha256`` (hex) in production; ``token`` is for demos."""

    id: str = Field(pattern=DEVICE_ID_PATTERN)
    token: Secret | None = None
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_token(self) -> DeviceEntry:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token or token_sha256")
        if self.token_sha256 in PLACEHOLDER_DIGESTS:
            # The examples' digests (and that of an empty $TOKEN): anyone who read them could upload.
            raise ValueError("token_sha256 is the digest of a placeholder from the examples: use a real token's")
        return self

    def digest(self) -> str:
        if self.token_sha256 is not None:
            return self.token_sha256
        assert self.token is not None
        return token_digest(self.token.get_secret_value())
