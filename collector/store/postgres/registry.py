"""The device registry in the shared store: every instance and the ``devices`` CLI read the same
rows, so a rotation or revocation holds at once everywhere. See :mod:`collector.registry`."""

from __future__ import annotations

from collector.store import records
from collector.store.postgres.base import PostgresBase
from collector.store.records import Registration


class PostgresRegistry(PostgresBase):
    async def registration(self, token_sha256: str) -> Registration | None:
        row = await self._fetchrow(
            f"SELECT {records.REGISTRATION_COLUMNS} FROM registry WHERE token_sha256 = $1", token_sha256
        )
        return Registration(*row) if row else None

    async def registrations(self) -> list[Registration]:
        rows = await self._fetch(f"SELECT {records.REGISTRATION_COLUMNS} FROM registry ORDER BY device")
        return [Registration(*r) for r in rows]

    async def register(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        """Add a device; False when the id (or, improbably, the token) is already registered."""
        return await self._changes(
            "INSERT INTO registry (device, token_sha256, created_ms, source) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            device,
            token_sha256,
            now_ms,
            source,
        )

    async def set_token(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        """Replace a device's token (the old one stops working at once); False if unknown."""
        return await self._changes(
            "UPDATE registry SET token_sha256 = $1, rotated_ms = $2, source = $3 WHERE device = $4",
            token_sha256,
            now_ms,
            source,
            device,
        )

    async def revoke(self, device: str, now_ms: int) -> bool:
        """Refuse the device from now on (403); False if unknown."""
        return await self._changes(
            "UPDATE registry SET revoked_ms = $1 WHERE device = $2 AND revoked_ms = 0", now_ms, device
        )
