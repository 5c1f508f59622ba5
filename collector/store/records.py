"""Records the stores hand out beyond samples: device registrations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Registration:
    """A device in the registry. Only the SHA-256 of its token is kept, never the token.

    Args:
        device: the device id.
        token_sha256: hex SHA-256 of the device's current bearer token.
        created_ms: when the device was added (collector wall clock, ms).
        rotated_ms: when its token was last replaced, 0 if never.
        revoked_ms: when it was revoked, 0 while active.
        source: "cli", or "config" when imported from the collector's ``[[devices]]`` table.
    """

    device: str
    token_sha256: str
    created_ms: int
    rotated_ms: int = 0
    revoked_ms: int = 0
    source: str = "cli"

    @property
    def revoked(self) -> bool:
        return self.revoked_ms > 0
