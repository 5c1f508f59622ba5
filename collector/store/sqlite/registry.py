"""The device registry in the embedded store: shared by every process that opens the file (the
collector and the ``devices`` CLI). See :mod:`collector.registry`."""

from __future__ import annotations

from collector.store import records
from collector.store.records import Registration
from collector.store.sqlite.base import SqliteBase


class SqliteRegistry(SqliteBase):
    async def registration(self, token_sha256: str) -> Registration | None:
        return await self.db.run(self._registration, token_sha256)

    def _registration(self, token_sha256: str) -> Registration | None:
        sql = f"SELECT {records.REGISTRATION_COLUMNS} FROM registry WHERE token_sha256 = ?"
        row = self.db.conn.execute(sql, (token_sha256,)).fetchone()
        return Registration(*row) if row else None

    async def registrations(self) -> list[Registration]:
        return await self.db.run(self._registrations)

    def _registrations(self) -> list[Registration]:
        sql = f"SELECT {records.REGISTRATION_COLUMNS} FROM registry ORDER BY device"
        return [Registration(*row) for row in self.db.conn.execute(sql)]

    async def register(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        """Add a device; False when the id (or, improbably, the token) is already registered."""
        return await self.db.run(
            self._change,
            "INSERT INTO registry (device, token_sha256, created_ms, source) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (device, token_sha256, now_ms, source),
        )

    async def set_token(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        """Replace a device's token (the old one stops working at once); False if unknown."""
        return await self.db.run(
            self._change,
            "UPDATE registry SET token_sha256 = ?, rotated_ms = ?, source = ? WHERE device = ?",
            (token_sha256, now_ms, source, device),
        )

    async def revoke(self, device: str, now_ms: int) -> bool:
        """Refuse the device from now on (403); False if unknown."""
        return await self.db.run(
            self._change, "UPDATE registry SET revoked_ms = ? WHERE device = ? AND revoked_ms = 0", (now_ms, device)
        )

    def _change(self, sql: str, args: tuple[object, ...]) -> bool:
        """Run one write; whether it changed exactly one row."""
        with self.db.atomic() as conn:
            cur = conn.execute(sql, args)
        return cur.rowcount == 1
