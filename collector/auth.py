"""Per-device bearer tokens, checked against the device registry in the store on every request.

Only SHA-256 digests of tokens are stored. The registry is read per request (one indexed lookup), so
a revocation or rotation made by any instance, or by the ``devices`` CLI, holds at once everywhere.
"""

from __future__ import annotations

from backhaul.errors import AuthError, store_trouble
from collector.store import Store
from collector.tokens import token_digest


class DeviceAuth:
    """Args: the store that holds the registry."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def device_for(self, authorization: str | None) -> str:
        """The device a ``Bearer`` header belongs to; raises :class:`AuthError` or :class:`StoreError`."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "missing bearer token")
        # A registry that cannot be read raises StoreError (503): the device retries.
        with store_trouble("device registry"):
            found = await self._store.registration(token_digest(token))
        if found is None:
            raise AuthError(401, "unknown token")
        if found.revoked:
            raise AuthError(403, f"device {found.device!r} is revoked")
        return found.device

    @staticmethod
    def check_claim(token_device: str, claimed: str) -> None:
        if token_device != claimed:
            raise AuthError(403, f"this token belongs to device {token_device!r}, not {claimed!r}")
