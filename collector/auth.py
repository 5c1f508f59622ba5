"""Per-device bearer tokens. Tokens are compared by their SHA-256, so only digests need be kept."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from collector.config import DeviceEntry


class AuthError(Exception):
    """``status`` is 401 (no or unknown token) or 403 (a token of another device)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class DeviceAuth:
    def __init__(self, devices: Iterable[DeviceEntry]) -> None:
        self._by_digest = {d.digest(): d.id for d in devices}

    def device_for(self, authorization: str | None) -> str:
        """The device a ``Bearer`` header belongs to; raises :class:`AuthError` (401)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "missing bearer token")
        device = self._by_digest.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if device is None:
            raise AuthError(401, "unknown token")
        return device

    @staticmethod
    def check_claim(token_device: str, claimed: str) -> None:
        if token_device != claimed:
            raise AuthError(403, f"this token belongs to device {token_device!r}, not {claimed!r}")
