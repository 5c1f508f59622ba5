"""Alerts in the embedded store: each message once, and the latest state of each alert instance
(the tables of migration 4; the state logic is :func:`collector.store.records.next_alert_state`)."""

from __future__ import annotations

from backhaul.wire.alert import AlertMessage
from collector.store import records
from collector.store.records import StoredAlert
from collector.store.sqlite.base import SqliteBase


class SqliteAlerts(SqliteBase):
    async def record_alert(self, device: str, msg: AlertMessage, received_ms: int, via: str) -> bool:
        """Store one message; False when this exact message was stored before (a re-send)."""
        return await self.db.run(self._record_alert, device, msg, received_ms, via)

    def _record_alert(self, device: str, msg: AlertMessage, received_ms: int, via: str) -> bool:
        with self.db.atomic() as conn:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO alert_messages ({records.MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                records.message_row(device, msg, received_ms, via),
            )
            if cur.rowcount == 0:
                return False
            row = conn.execute(
                f"SELECT {records.STATE_COLUMNS} FROM alerts WHERE device = ? AND fingerprint = ?",
                (device, msg.fingerprint),
            ).fetchone()
            new = records.next_alert_state(device, msg, received_ms, row)
            if new is not None:
                conn.execute(
                    f"INSERT OR REPLACE INTO alerts ({records.ALERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", new
                )
        return True

    async def alerts(
        self, device: str | None = None, state: str | None = None, resolved_since_ms: int | None = None
    ) -> list[StoredAlert]:
        """Alert instances, newest change first; ``resolved_since_ms`` keeps only resolved ones ended since then."""
        return await self.db.run(self._alerts, device, state, resolved_since_ms)

    def _alerts(self, device: str | None, state: str | None, resolved_since_ms: int | None) -> list[StoredAlert]:
        conditions = records.alert_conditions(device, state, resolved_since_ms)
        sql = f"SELECT {records.ALERT_COLUMNS} FROM alerts"
        if conditions:
            sql += " WHERE " + " AND ".join(text.format("?") for text, _ in conditions)
        rows = self.db.conn.execute(sql + " ORDER BY updated_ms DESC", [v for _, v in conditions]).fetchall()
        return [StoredAlert(*row) for row in rows]

    async def alerts_firing(self) -> dict[str, list[dict[str, object]]]:
        return records.firing_by_device(await self.alerts(state="firing"))
