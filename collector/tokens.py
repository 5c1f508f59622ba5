"""Device tokens as the registry keeps them: only their SHA-256 digest is stored.

The one place the digest is computed, for a token from a request's ``Authorization`` header
(:mod:`collector.auth`), from the ``devices`` CLI and from ``[[devices]]`` in the config
(:mod:`collector.registry_settings`): were two of these to differ, a token would never match.
"""

from __future__ import annotations

import hashlib

from pydantic import Field, model_validator

from backhaul.settings import PLACEHOLDER_DIGESTS, Secret, Section


def token_digest(token: str) -> str:
    """Hex SHA-256 of ``token`` without surrounding whitespace (which does not survive in an HTTP header)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


class Credential(Section):
    """A token given in the config, as a device's upload token or an operator's read token: exactly one of
    ``token_sha256`` (hex; production, so the config holds no secret) or ``token`` (a trial)."""

    token: Secret | None = None
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_token(self) -> Credential:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token or token_sha256")
        if self.token_sha256 in PLACEHOLDER_DIGESTS:
            # The examples' digests (and that of an empty $TOKEN): anyone who read them could use them.
            raise ValueError("token_sha256 is the digest of a placeholder from the examples: use a real token's")
        return self

    def digest(self) -> str:
        if self.token_sha256 is not None:
            return self.token_sha256
        assert self.token is not None
        return token_digest(self.token.get_secret_value())
