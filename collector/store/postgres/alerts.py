"""Alerts in the shared store: as in the embedded store (collector/store/sqlite/alerts.py), made safe
across instances: an instance's row is locked while its state moves, so two instances apply
messages one by one."""

from __future__ import annotations

from backhaul.wire.alert import AlertMessage
from collector.store import records
from collector.store.postgres.base import PostgresBase, count
from collector.store.records import StoredAlert

_UPDATED = ", ".join(f"{c} = EXCLUDED.{c}" for c in records.ALERT_COLUMNS.split(", ")[2:])


def _marks(n: int) -> str:
    return ",".join(f"${i}" for i in range(1, n + 1))


class PostgresAlerts(PostgresBase):
    async def record_alert(self, device: str, msg: AlertMessage, received_ms: int, via: str) -> bool:
        """Store one message; False when this exact message was stored before (a re-send)."""
        async with self.connection(transaction=True) as conn:
            status = await conn.execute(
                f"INSERT INTO alert_messages ({records.MESSAGE_COLUMNS}) VALUES ({_marks(11)}) ON CONFLICT DO NOTHING",
                *records.message_row(device, msg, received_ms, via),
            )
            if count(status) == 0:
                return False
            row = await conn.fetchrow(
                f"SELECT {records.STATE_COLUMNS} FROM alerts WHERE device = $1 AND fingerprint = $2 FOR UPDATE",
                device,
                msg.fingerprint,
            )
            new = records.next_alert_state(device, msg, received_ms, None if row is None else tuple(row))
            if new is not None:
                await conn.execute(
                    f"INSERT INTO alerts ({records.ALERT_COLUMNS}) VALUES ({_marks(12)})"
                    f" ON CONFLICT (device, fingerprint) DO UPDATE SET {_UPDATED}",
                    *new,
                )
        return True

    async def alerts(
        self, device: str | None = None, state: str | None = None, resolved_since_ms: int | None = None
    ) -> list[StoredAlert]:
        """Alert instances, newest change first; ``resolved_since_ms`` keeps only resolved ones ended since then."""
        conditions = records.alert_conditions(device, state, resolved_since_ms)
        sql = f"SELECT {records.ALERT_COLUMNS} FROM alerts"
        if conditions:
            sql += " WHERE " + " AND ".join(text.format(f"${i}") for i, (text, _) in enumerate(conditions, 1))
        rows = await self._fetch(sql + " ORDER BY updated_ms DESC", *(v for _, v in conditions))
        return [StoredAlert(*r) for r in rows]

    async def alerts_firing(self) -> dict[str, list[dict[str, object]]]:
        return records.firing_by_device(await self.alerts(state="firing"))
