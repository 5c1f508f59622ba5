"""The embedded store: one SQLite file with series, samples, batches seen and devices.

- A batch is recorded in ``batches`` in the same transaction as its samples, so
  ``(device, buffer_id, seq)`` is stored once, whatever the agent re-sends, and a crash can never
  leave a batch half stored or stored without its record.
- Samples are keyed by (series, timestamp): the same sample sent twice (a sender retrying a request
  the agent had already committed) is stored once and counted as a duplicate sample.
- Values are stored as their IEEE-754 bits in an INTEGER column, because SQLite turns NaN into NULL
  and Prometheus' stale markers are NaNs.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from backhaul.sqlite import Database, Synchronous
from backhaul.wire.batch import BatchHeader
from backhaul.wire.series import Labels, SeriesMap
from collector.store.records import Registration

log = logging.getLogger(__name__)


@dataclass
class DeviceState:
    device: str
    last_seen_ms: int = 0
    samples: int = 0
    batches: int = 0
    duplicate_samples: int = 0
    evicted_samples: int = 0
    expired_samples: int = 0
    dropped_samples: int = 0
    agent_version: str = ""
    corrupt_samples: int = 0
    duplicate_batches: int = 0
    backlog_bytes: int = 0  # what the agent last reported still waiting in its buffer
    backlog_oldest_ms: int = 0  # wall-clock ms of its oldest buffered sample (0: none/unknown)


@dataclass
class IngestResult:
    duplicate_batch: bool
    samples: int = 0  # new samples stored
    duplicate_samples: int = 0  # samples already stored before


def _v1(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE series (id INTEGER PRIMARY KEY, name TEXT NOT NULL, labels TEXT NOT NULL UNIQUE)")
    db.execute(
        "CREATE TABLE samples (series_id INTEGER NOT NULL, ts INTEGER NOT NULL, bits INTEGER NOT NULL,"
        " PRIMARY KEY (series_id, ts)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE batches (device TEXT NOT NULL, buffer_id TEXT NOT NULL, seq INTEGER NOT NULL,"
        " received_ms INTEGER NOT NULL, samples INTEGER NOT NULL, PRIMARY KEY (device, buffer_id, seq))"
        " WITHOUT ROWID"
    )
    db.table("devices").create(
        {
            "device": str,
            "last_seen_ms": int,
            "samples": int,
            "batches": int,
            "duplicate_samples": int,
            "evicted_samples": int,
            "expired_samples": int,
            "dropped_samples": int,
            "agent_version": str,
        },
        pk="device",
    )
    db.execute("CREATE INDEX series_by_name ON series (name)")


def _v2(db: sqlite_utils.Database) -> None:
    # Loss counters are cumulative per agent buffer; a device that re-created its buffer (after
    # corruption) starts a new set, so a device's total is the sum over its buffers.
    db.execute(
        "CREATE TABLE buffers (device TEXT NOT NULL, buffer_id TEXT NOT NULL, evicted_samples INTEGER NOT NULL,"
        " expired_samples INTEGER NOT NULL, dropped_samples INTEGER NOT NULL, corrupt_samples INTEGER NOT NULL,"
        " PRIMARY KEY (device, buffer_id)) WITHOUT ROWID"
    )
    db.execute("ALTER TABLE devices ADD COLUMN corrupt_samples INTEGER NOT NULL DEFAULT 0")


def _v3(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE devices ADD COLUMN duplicate_batches INTEGER NOT NULL DEFAULT 0")


def _v4(db: sqlite_utils.Database) -> None:
    # Alert messages (each (device, seq, ts_ms) once, so a re-sent message is recognised) and the
    # latest state of each alert instance (device, fingerprint). See collector/store/alerts.py.
    db.execute(
        "CREATE TABLE alert_messages (device TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,"
        " fingerprint INTEGER NOT NULL, rule TEXT NOT NULL, state TEXT NOT NULL, severity TEXT NOT NULL,"
        " value REAL, summary TEXT NOT NULL, received_ms INTEGER NOT NULL, via TEXT NOT NULL,"
        " PRIMARY KEY (device, seq, ts_ms)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE alerts (device TEXT NOT NULL, fingerprint INTEGER NOT NULL, rule TEXT NOT NULL,"
        " state TEXT NOT NULL, severity TEXT NOT NULL, value REAL, summary TEXT NOT NULL,"
        " starts_ms INTEGER NOT NULL, ends_ms INTEGER, updated_ms INTEGER NOT NULL,"
        " received_ms INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (device, fingerprint)) WITHOUT ROWID"
    )


def _v5(db: sqlite_utils.Database) -> None:
    # The agent's reported backlog, for the fleet page; and the device registry, shared by every
    # process that opens this file (the collector and the `devices` CLI).
    db.execute("ALTER TABLE devices ADD COLUMN backlog_bytes INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE devices ADD COLUMN backlog_oldest_ms INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE TABLE registry (device TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE,"
        " created_ms INTEGER NOT NULL, rotated_ms INTEGER NOT NULL DEFAULT 0,"
        " revoked_ms INTEGER NOT NULL DEFAULT 0, source TEXT NOT NULL DEFAULT 'cli')"
    )


def _v6(db: sqlite_utils.Database) -> None:
    # Series tables agents may refer to by digest instead of sending them again (docs/wire-format.md).
    db.execute(
        "CREATE TABLE series_tables (device TEXT NOT NULL, digest TEXT NOT NULL, data BLOB NOT NULL,"
        " stored_ms INTEGER NOT NULL, PRIMARY KEY (device, digest)) WITHOUT ROWID"
    )


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5, _v6]
LOSS_FIELDS = ("evicted_samples", "expired_samples", "dropped_samples", "corrupt_samples")


class CollectorStore:
    """Owns the collector's database file and its one connection (used on the store's thread only).

    Args:
        path: database file, created when missing.
        synchronous: SQLite synchronous level; FULL makes every acknowledged batch survive power loss.
    """

    def __init__(self, path: Path, synchronous: Synchronous) -> None:
        self.path = path
        self.synchronous: Synchronous = synchronous
        self.db = Database(path, synchronous, MIGRATIONS, "collector-db")
        # After a failed transaction, whatever the exception, what memory holds is rebuilt from the file.
        self.db.on_rollback(self._load)
        self.devices: dict[str, DeviceState] = {}
        self._series_ids: dict[str, int] = {}

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def open(self) -> None:
        self.db.open()
        self._load()

    def _load(self) -> None:
        self._series_ids = {labels: sid for sid, labels in self.conn.execute("SELECT id, labels FROM series")}
        self.devices = {row["device"]: DeviceState(**row) for row in sqlite_utils.Database(self.conn)["devices"].rows}

    def close(self) -> None:
        self.db.close()

    def get_table(self, device: str, digest: str) -> bytes | None:
        row = self.conn.execute(
            "SELECT data FROM series_tables WHERE device = ? AND digest = ?", (device, digest)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put_tables(self, device: str, tables: dict[str, bytes], now_ms: int, expire_before_ms: int) -> None:
        """Keep ``tables``; drop the device's tables stored before ``expire_before_ms`` (an agent that
        still refers to one is asked for it again: a 409, then the batch in full)."""
        with self.db.atomic():
            self.conn.execute(
                "DELETE FROM series_tables WHERE device = ? AND stored_ms < ?", (device, expire_before_ms)
            )
            self.conn.executemany(
                "INSERT OR IGNORE INTO series_tables (device, digest, data, stored_ms) VALUES (?, ?, ?, ?)",
                [(device, digest, data, now_ms) for digest, data in tables.items()],
            )

    def seen(self, device: str, buffer_id: str, seq: int) -> bool:
        """Whether this batch is already stored; a repeat is counted (it survives restarts)."""
        row = self.conn.execute(
            "SELECT 1 FROM batches WHERE device=? AND buffer_id=? AND seq=?", (device, buffer_id, seq)
        ).fetchone()
        if row is not None:
            self._count_duplicate_batch(device)
        return row is not None

    def _count_duplicate_batch(self, device: str) -> None:
        try:
            self.conn.execute(
                "UPDATE devices SET duplicate_batches = duplicate_batches + 1 WHERE device = ?", (device,)
            )
        except sqlite3.Error as exc:  # a statistic: never a reason to refuse the repeat
            log.warning("could not count a duplicate batch: %s", exc)
            return
        if device in self.devices:
            self.devices[device].duplicate_batches += 1

    def ingest(
        self, device: str, series: SeriesMap, device_label: str, now_ms: int, batch: BatchHeader | None = None
    ) -> IngestResult:
        """Store samples of ``device`` in one transaction; returns how many were new.

        With ``batch`` (a backhaul batch) its identity is recorded in the same transaction and a repeat
        stores nothing. Without (plain remote write) only the per-sample key de-duplicates.
        """
        conn = self.conn
        total = sum(len(ts) for ts, _ in series.values())
        new_series = 0
        with self.db.atomic():
            if batch is not None:
                try:
                    conn.execute(
                        "INSERT INTO batches (device, buffer_id, seq, received_ms, samples) VALUES (?,?,?,?,?)",
                        (device, batch.buffer_id, batch.seq, now_ms, total),
                    )
                except sqlite3.IntegrityError:  # a concurrent repeat stored it first
                    self._count_duplicate_batch(device)
                    return IngestResult(duplicate_batch=True)
            before = conn.total_changes
            for labels, (stamps, values) in series.items():
                key = _stored_labels(labels, device_label, device)
                sid = self._series_ids.get(key)
                if sid is None:
                    name = next((v for n, v in labels if n == "__name__"), "")
                    cur = conn.execute("INSERT INTO series (name, labels) VALUES (?, ?)", (name, key))
                    sid = int(cur.lastrowid or 0)
                    self._series_ids[key] = sid
                    new_series += 1
                bits = array("q", array("d", values).tobytes())
                conn.executemany(
                    "INSERT OR IGNORE INTO samples (series_id, ts, bits) VALUES (?, ?, ?)",
                    zip([sid] * len(stamps), stamps, bits, strict=True),
                )
            stored = conn.total_changes - before - new_series
            state = self.devices.get(device) or DeviceState(device)
            updated = DeviceState(**state.__dict__)
            updated.last_seen_ms = now_ms
            updated.samples += stored
            updated.duplicate_samples += total - stored
            if batch is not None:
                updated.batches += 1
                updated.agent_version = batch.agent_version
                updated.backlog_bytes = batch.backlog_bytes
                updated.backlog_oldest_ms = batch.backlog_oldest_ms
                for name, value in self._record_losses(batch).items():
                    setattr(updated, name, value)
            sqlite_utils.Database(conn).table("devices").upsert(updated.__dict__, pk="device")
        self.devices[device] = updated
        return IngestResult(duplicate_batch=False, samples=stored, duplicate_samples=total - stored)

    def _record_losses(self, header: BatchHeader) -> dict[str, int]:
        """Keep the newest loss counters of the batch's buffer; return the device's totals."""
        fields = ", ".join(LOSS_FIELDS)
        keep_max = ", ".join(f"{f} = max({f}, excluded.{f})" for f in LOSS_FIELDS)
        self.conn.execute(
            f"INSERT INTO buffers (device, buffer_id, {fields}) VALUES (?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT (device, buffer_id) DO UPDATE SET {keep_max}",
            (header.device, header.buffer_id, *(getattr(header, f) for f in LOSS_FIELDS)),
        )
        sums = self.conn.execute(
            f"SELECT {', '.join(f'sum({f})' for f in LOSS_FIELDS)} FROM buffers WHERE device = ?", (header.device,)
        ).fetchone()
        return dict(zip(LOSS_FIELDS, sums, strict=True))

    def series(self) -> list[tuple[int, dict[str, str]]]:
        return [(sid, dict(json.loads(labels))) for labels, sid in self._series_ids.items()]

    def samples(self, series_ids: list[int], start_ms: int, end_ms: int) -> dict[int, tuple[list[int], list[float]]]:
        """Samples of several series in ``[start_ms, end_ms]``, by series id, in time order."""
        out: dict[int, tuple[list[int], list[float]]] = {}
        marks = ",".join("?" * len(series_ids))
        rows = self.conn.execute(
            f"SELECT series_id, ts, bits FROM samples WHERE series_id IN ({marks}) AND ts >= ? AND ts <= ?"
            " ORDER BY series_id, ts",
            (*series_ids, start_ms, end_ms),
        ).fetchall()
        for sid, ts, bits in rows:
            entry = out.setdefault(sid, ([], []))
            entry[0].append(ts)
            entry[1].append(bits)
        for sid, (stamps, bits_list) in out.items():
            out[sid] = (stamps, array("d", array("q", bits_list).tobytes()).tolist())
        return out

    # -- device registry (see collector.registry) ------------------------------------------------------

    def registration(self, token_sha256: str) -> Registration | None:
        sql = f"SELECT {_REG_FIELDS} FROM registry WHERE token_sha256 = ?"
        row = self.conn.execute(sql, (token_sha256,)).fetchone()
        return Registration(*row) if row else None

    def registrations(self) -> list[Registration]:
        return [Registration(*row) for row in self.conn.execute(f"SELECT {_REG_FIELDS} FROM registry ORDER BY device")]

    def register(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        """Add a device; False when the id (or, improbably, the token) is already registered."""
        with self.db.atomic():
            cur = self.conn.execute(
                "INSERT INTO registry (device, token_sha256, created_ms, source) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (device, token_sha256, now_ms, source),
            )
        return cur.rowcount == 1

    def set_token(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        """Replace a device's token (the old one stops working at once); False if unknown."""
        return self._update_registry(
            "UPDATE registry SET token_sha256 = ?, rotated_ms = ?, source = ? WHERE device = ?",
            (token_sha256, now_ms, source, device),
        )

    def revoke(self, device: str, now_ms: int) -> bool:
        """Refuse the device from now on (403); False if unknown."""
        return self._update_registry(
            "UPDATE registry SET revoked_ms = ? WHERE device = ? AND revoked_ms = 0", (now_ms, device)
        )

    def _update_registry(self, sql: str, args: tuple[object, ...]) -> bool:
        with self.db.atomic():
            cur = self.conn.execute(sql, args)
        return cur.rowcount == 1

    # -- fleet page ------------------------------------------------------------------------------------

    def device_states(self) -> list[DeviceState]:
        """Every device's figures, read from the file (another process may have written them)."""
        cur = self.conn.execute("SELECT * FROM devices")
        names = [d[0] for d in cur.description]
        return [DeviceState(**dict(zip(names, row, strict=True))) for row in cur]

    def model_info(self, device_label: str) -> dict[str, dict[str, str]]:
        """Per device, the labels of its ``backhaul_model_info`` series with the newest sample."""
        rows = self.conn.execute(
            "SELECT s.labels, max(m.ts) FROM series s JOIN samples m ON m.series_id = s.id"
            " WHERE s.name = 'backhaul_model_info' GROUP BY s.id"
        ).fetchall()
        return newest_model_info(((dict(json.loads(labels)), ts) for labels, ts in rows), device_label)


_REG_FIELDS = "device, token_sha256, created_ms, rotated_ms, revoked_ms, source"


def newest_model_info(rows: Iterable[tuple[dict[str, str], int]], device_label: str) -> dict[str, dict[str, str]]:
    """Pick, per device, the labels (without name and device label) of the most recent series."""
    newest: dict[str, tuple[int, dict[str, str]]] = {}
    for labels, ts in rows:
        device = labels.get(device_label)
        if device is None:
            continue
        if device not in newest or ts > newest[device][0]:
            rest = {k: v for k, v in labels.items() if k not in ("__name__", device_label)}
            newest[device] = (ts, rest)
    return {device: labels for device, (_, labels) in newest.items()}


def _stored_labels(labels: Labels, device_label: str, device: str) -> str:
    """The series' identity at the collector: its labels plus the device label, as sorted JSON pairs."""
    pairs = [(f"exported_{n}" if n == device_label else n, v) for n, v in labels]
    pairs.append((device_label, device))
    pairs.sort()
    return json.dumps(pairs, separators=(",", ":"), ensure_ascii=False)
