"""Alerts in the collector's store: each message once, and the latest state of each alert instance.

Runs on the store's thread (``CollectorStore.db``), on the store's one connection, in the tables
of migration 4. Messages may arrive out of order (a fallback channel, a retry): an instance's state
only moves forward in the device's time (``ts_ms``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from backhaul.wire.alert import AlertMessage
from collector.store.sqlite import CollectorStore


@dataclass
class StoredAlert:
    device: str
    fingerprint: int
    rule: str
    state: str
    severity: str
    value: float | None
    summary: str
    starts_ms: int
    ends_ms: int | None
    updated_ms: int
    received_ms: int
    seq: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


ALERT_COLUMNS = (
    "device, fingerprint, rule, state, severity, value, summary, starts_ms, ends_ms, updated_ms, received_ms, seq"
)


def next_alert_state(
    device: str, msg: AlertMessage, value: float | None, received_ms: int, row: tuple[str, int, int] | None
) -> tuple[object, ...] | None:
    """The instance's new row (in ALERT_COLUMNS order) after ``msg``, given its stored
    ``(state, starts_ms, updated_ms)``; None when the message is older than what is stored."""
    if row is not None and row[2] > msg.ts_ms:
        return None  # an older message than the state we have: kept in the log only
    firing = msg.state == "firing"
    if row is not None and row[0] == "firing" and firing:
        starts = row[1]  # a repeat: the alert started earlier
    else:
        starts = msg.ts_ms
    return (
        device,
        msg.fingerprint,
        msg.rule,
        msg.state,
        msg.severity,
        value,
        msg.summary,
        starts if firing else (row[1] if row is not None else msg.ts_ms),
        None if firing else msg.ts_ms,
        msg.ts_ms,
        received_ms,
        msg.seq,
    )


def firing_by_device(found: list[StoredAlert]) -> dict[str, list[dict[str, object]]]:
    """Firing alerts grouped by device, for the fleet page."""
    out: dict[str, list[dict[str, object]]] = {}
    for alert in found:
        out.setdefault(alert.device, []).append(
            {"rule": alert.rule, "severity": alert.severity, "summary": alert.summary, "starts_ms": alert.starts_ms}
        )
    return out


def record(store: CollectorStore, device: str, msg: AlertMessage, received_ms: int, via: str) -> bool:
    """Store one message; False when this exact message was stored before (a re-send)."""
    conn = store.conn
    value = None if math.isnan(msg.value) else msg.value
    with store.db.atomic():
        cur = conn.execute(
            "INSERT OR IGNORE INTO alert_messages (device, seq, ts_ms, fingerprint, rule, state, severity,"
            " value, summary, received_ms, via) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                device,
                msg.seq,
                msg.ts_ms,
                msg.fingerprint,
                msg.rule,
                msg.state,
                msg.severity,
                value,
                msg.summary,
                received_ms,
                via,
            ),
        )
        if cur.rowcount == 0:
            return False
        row = conn.execute(
            "SELECT state, starts_ms, updated_ms FROM alerts WHERE device = ? AND fingerprint = ?",
            (device, msg.fingerprint),
        ).fetchone()
        new = next_alert_state(device, msg, value, received_ms, row)
        if new is None:
            return True
        conn.execute(f"INSERT OR REPLACE INTO alerts ({ALERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", new)
    return True


def current(
    store: CollectorStore, device: str | None = None, state: str | None = None, resolved_since_ms: int | None = None
) -> list[StoredAlert]:
    """Alert instances, newest change first; ``resolved_since_ms`` keeps only resolved ones ended since then."""
    where: list[str] = []
    args: list[object] = []
    if device is not None:
        where.append("device = ?")
        args.append(device)
    if state is not None:
        where.append("state = ?")
        args.append(state)
    if resolved_since_ms is not None:
        where.append("(state = 'firing' OR ends_ms >= ?)")
        args.append(resolved_since_ms)
    sql = f"SELECT {ALERT_COLUMNS} FROM alerts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = store.conn.execute(sql + " ORDER BY updated_ms DESC", args).fetchall()
    return [StoredAlert(*row) for row in rows]
