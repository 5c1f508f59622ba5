"""The shared store: PostgreSQL through asyncpg, for several collector instances behind one address.

The same tables as the embedded store, and the same rules, made safe across processes:
- A batch's identity row goes into ``batches`` in the same transaction as its samples. Two instances
  that receive the same ``(device, buffer_id, seq)`` at once race on that primary key: the loser's
  ``INSERT ... ON CONFLICT DO NOTHING`` waits for the winner's commit and then inserts nothing, so it
  answers "duplicate" and stores no sample. If the winner rolls back, the loser goes on and stores it.
- Rows are written in one order (batch, series sorted by labels, samples sorted by key, buffer,
  device) so concurrent transactions queue rather than deadlock; a deadlock or lost connection
  anyway is a transient :class:`StoreError` (503: the agent retries, nothing is acknowledged).
- ``devices`` figures are updated relative to the stored row (``samples = samples + n``), never
  overwritten from an instance's memory.
- Schema migrations run under an advisory lock, so instances starting together migrate once.
"""

from __future__ import annotations

import json
import logging
import math
from array import array
from typing import Any

import asyncpg

from backhaul.errors import StoreError
from backhaul.wire.alert import AlertMessage
from backhaul.wire.batch import BatchHeader
from backhaul.wire.series import SeriesMap
from collector.store.alerts import ALERT_COLUMNS, StoredAlert, firing_by_device, next_alert_state
from collector.store.records import Registration
from collector.store.sqlite import LOSS_FIELDS, DeviceState, IngestResult, _stored_labels, newest_model_info

log = logging.getLogger(__name__)

# Any constant, as long as every instance uses the same one.
_MIGRATION_LOCK = 0x6261636B

_MIGRATIONS = [
    """
    CREATE TABLE series (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, labels TEXT NOT NULL UNIQUE);
    CREATE INDEX series_by_name ON series (name);
    CREATE TABLE samples (series_id BIGINT NOT NULL, ts BIGINT NOT NULL, bits BIGINT NOT NULL,
        PRIMARY KEY (series_id, ts));
    CREATE TABLE batches (device TEXT NOT NULL, buffer_id TEXT NOT NULL, seq BIGINT NOT NULL,
        received_ms BIGINT NOT NULL, samples BIGINT NOT NULL, PRIMARY KEY (device, buffer_id, seq));
    CREATE TABLE buffers (device TEXT NOT NULL, buffer_id TEXT NOT NULL,
        evicted_samples BIGINT NOT NULL, expired_samples BIGINT NOT NULL, dropped_samples BIGINT NOT NULL,
        corrupt_samples BIGINT NOT NULL, PRIMARY KEY (device, buffer_id));
    CREATE TABLE devices (device TEXT PRIMARY KEY, last_seen_ms BIGINT NOT NULL DEFAULT 0,
        samples BIGINT NOT NULL DEFAULT 0, batches BIGINT NOT NULL DEFAULT 0,
        duplicate_samples BIGINT NOT NULL DEFAULT 0, evicted_samples BIGINT NOT NULL DEFAULT 0,
        expired_samples BIGINT NOT NULL DEFAULT 0, dropped_samples BIGINT NOT NULL DEFAULT 0,
        agent_version TEXT NOT NULL DEFAULT '', corrupt_samples BIGINT NOT NULL DEFAULT 0,
        duplicate_batches BIGINT NOT NULL DEFAULT 0, backlog_bytes BIGINT NOT NULL DEFAULT 0,
        backlog_oldest_ms BIGINT NOT NULL DEFAULT 0);
    CREATE TABLE registry (device TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE,
        created_ms BIGINT NOT NULL, rotated_ms BIGINT NOT NULL DEFAULT 0,
        revoked_ms BIGINT NOT NULL DEFAULT 0, source TEXT NOT NULL DEFAULT 'cli');
    """,
    # Alerts, as in the embedded store's migration 4 (see collector/store/alerts.py).
    """
    CREATE TABLE alert_messages (device TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL,
        fingerprint BIGINT NOT NULL, rule TEXT NOT NULL, state TEXT NOT NULL, severity TEXT NOT NULL,
        value DOUBLE PRECISION, summary TEXT NOT NULL, received_ms BIGINT NOT NULL, via TEXT NOT NULL,
        PRIMARY KEY (device, seq, ts_ms));
    CREATE TABLE alerts (device TEXT NOT NULL, fingerprint BIGINT NOT NULL, rule TEXT NOT NULL,
        state TEXT NOT NULL, severity TEXT NOT NULL, value DOUBLE PRECISION, summary TEXT NOT NULL,
        starts_ms BIGINT NOT NULL, ends_ms BIGINT, updated_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL,
        seq BIGINT NOT NULL, PRIMARY KEY (device, fingerprint));
    """,
    # Series tables agents refer to by digest, as in the embedded store's migration 6.
    """
    CREATE TABLE series_tables (device TEXT NOT NULL, digest TEXT NOT NULL, data BYTEA NOT NULL,
        stored_ms BIGINT NOT NULL, PRIMARY KEY (device, digest));
    """,
]

# SQLSTATE classes worth a retry: connection trouble, deadlock/serialization, out of resources,
# server shutting down or restarting, system errors (e.g. disk full).
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")

_REG_FIELDS = "device, token_sha256, created_ms, rotated_ms, revoked_ms, source"
_STATE_FIELDS = ", ".join(DeviceState.__dataclass_fields__)


def translate(exc: BaseException) -> StoreError:
    """Map asyncpg's errors once, here: lost connections and deadlocks are transient, the rest is not."""
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return StoreError(f"postgres: {code} {exc}", transient=code[:2] in _TRANSIENT_CLASSES)
    return StoreError(f"postgres: {type(exc).__name__}: {exc}", transient=True)


_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``INSERT 0 12`` or ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    """Args:
    dsn: ``postgresql://user:password@host:port/database``.
    pool_size: connections this instance keeps open at most.
    """

    def __init__(self, dsn: str, pool_size: int = 10) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self.devices: dict[str, DeviceState] = {}
        # Series ids are never reused, so a committed one may be cached for good.
        self._series_ids: dict[str, int] = {}

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open", transient=False)
        return self._pool

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_size)
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                await conn.execute("CREATE TABLE IF NOT EXISTS backhaul_schema (version INTEGER NOT NULL)")
                version = await conn.fetchval("SELECT max(version) FROM backhaul_schema") or 0
                for number, step in enumerate(_MIGRATIONS[version:], start=version + 1):
                    await conn.execute(step)
                    await conn.execute("INSERT INTO backhaul_schema (version) VALUES ($1)", number)
                    log.info("postgres store: schema migrated to version %d", number)
        except _ERRORS as exc:
            await self.close()
            raise translate(exc) from exc
        await self.device_states()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- samples and de-duplication ----------------------------------------------------------------------

    async def seen(self, device: str, buffer_id: str, seq: int) -> bool:
        """A fast path only: :meth:`ingest` de-duplicates on its own, so when the database cannot
        answer here, say "not seen" and let ingest decide (or fail with its transient error)."""
        try:
            async with self.pool.acquire() as conn:
                found = await conn.fetchval(
                    "SELECT true FROM batches WHERE device = $1 AND buffer_id = $2 AND seq = $3", device, buffer_id, seq
                )
                if found:
                    await self._count_duplicate_batch(conn, device)
        except _ERRORS as exc:
            log.warning("could not look up batch %s/%s/%d: %s", device, buffer_id, seq, translate(exc))
            return False
        return bool(found)

    async def _count_duplicate_batch(self, conn: asyncpg.Connection, device: str) -> None:
        await conn.execute("UPDATE devices SET duplicate_batches = duplicate_batches + 1 WHERE device = $1", device)
        if device in self.devices:
            self.devices[device].duplicate_batches += 1

    async def ingest(
        self, device: str, series: SeriesMap, device_label: str, now_ms: int, batch: BatchHeader | None = None
    ) -> IngestResult:
        """Store ``series`` of ``device`` in one transaction (see the module docstring)."""
        total = sum(len(ts) for ts, _ in series.values())
        keyed = {_stored_labels(labels, device_label, device): labels for labels in series}
        new_ids: dict[str, int] = {}
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if batch is not None:
                    won = await conn.fetchval(
                        "INSERT INTO batches (device, buffer_id, seq, received_ms, samples) VALUES ($1, $2, $3, $4, $5)"
                        " ON CONFLICT DO NOTHING RETURNING true",
                        device,
                        batch.buffer_id,
                        batch.seq,
                        now_ms,
                        total,
                    )
                    if not won:  # stored before, or by another instance just now
                        await self._count_duplicate_batch(conn, device)
                        return IngestResult(duplicate_batch=True)
                new_ids = await self._create_series(conn, keyed)
                ids = {**self._series_ids, **new_ids}
                stored = await self._insert_samples(conn, {ids[key]: series[labels] for key, labels in keyed.items()})
                losses = await self._record_losses(conn, batch) if batch is not None else None
                row = await self._update_device(conn, device, now_ms, stored, total - stored, batch, losses)
        except _ERRORS as exc:
            raise translate(exc) from exc
        self._series_ids.update(new_ids)  # committed: safe to remember
        self.devices[device] = DeviceState(**dict(row))
        return IngestResult(duplicate_batch=False, samples=stored, duplicate_samples=total - stored)

    async def _create_series(self, conn: asyncpg.Connection, keyed: dict[str, Any]) -> dict[str, int]:
        """Ids of series not cached yet, creating those that do not exist (in labels order)."""
        missing = sorted(key for key in keyed if key not in self._series_ids)
        if not missing:
            return {}
        names = [next((v for n, v in keyed[key] if n == "__name__"), "") for key in missing]
        await conn.execute(
            "INSERT INTO series (name, labels) SELECT * FROM unnest($1::text[], $2::text[]) AS t(name, labels)"
            " ORDER BY labels ON CONFLICT (labels) DO NOTHING",
            names,
            missing,
        )
        rows = await conn.fetch("SELECT labels, id FROM series WHERE labels = ANY($1::text[])", missing)
        return {r["labels"]: r["id"] for r in rows}

    async def _insert_samples(self, conn: asyncpg.Connection, by_id: dict[int, tuple[list[int], list[float]]]) -> int:
        sids: list[int] = []
        stamps: list[int] = []
        bits: list[int] = []
        for sid in sorted(by_id):
            ts, values = by_id[sid]
            sids += [sid] * len(ts)
            stamps += ts
            bits += array("q", array("d", values).tobytes()).tolist()
        status = await conn.execute(
            "INSERT INTO samples (series_id, ts, bits)"
            " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS t(series_id, ts, bits)"
            " ORDER BY series_id, ts ON CONFLICT DO NOTHING",
            sids,
            stamps,
            bits,
        )
        return _count(status)

    async def _record_losses(self, conn: asyncpg.Connection, header: BatchHeader) -> dict[str, int]:
        """Keep the newest loss counters of the batch's buffer; return the device's totals."""
        fields = ", ".join(LOSS_FIELDS)
        keep_max = ", ".join(f"{f} = greatest(buffers.{f}, excluded.{f})" for f in LOSS_FIELDS)
        await conn.execute(
            f"INSERT INTO buffers (device, buffer_id, {fields}) VALUES ($1, $2, $3, $4, $5, $6)"
            f" ON CONFLICT (device, buffer_id) DO UPDATE SET {keep_max}",
            header.device,
            header.buffer_id,
            *(getattr(header, f) for f in LOSS_FIELDS),
        )
        row = await conn.fetchrow(
            f"SELECT {', '.join(f'sum({f})::bigint AS {f}' for f in LOSS_FIELDS)} FROM buffers WHERE device = $1",
            header.device,
        )
        return {f: int(row[f] or 0) for f in LOSS_FIELDS}

    async def _update_device(
        self,
        conn: asyncpg.Connection,
        device: str,
        now_ms: int,
        stored: int,
        duplicates: int,
        batch: BatchHeader | None,
        losses: dict[str, int] | None,
    ) -> asyncpg.Record:
        counts = "last_seen_ms, samples, duplicate_samples, batches"
        values: list[Any] = [device, now_ms, stored, duplicates, 1 if batch else 0]
        update = [
            "last_seen_ms = greatest(devices.last_seen_ms, excluded.last_seen_ms)",
            "samples = devices.samples + excluded.samples",
            "duplicate_samples = devices.duplicate_samples + excluded.duplicate_samples",
            "batches = devices.batches + excluded.batches",
        ]
        if batch is not None and losses is not None:
            # What the agent says about itself: the newest report wins.
            reported = {
                "agent_version": batch.agent_version,
                "backlog_bytes": batch.backlog_bytes,
                "backlog_oldest_ms": batch.backlog_oldest_ms,
                **losses,
            }
            counts += ", " + ", ".join(reported)
            values += list(reported.values())
            update += [f"{name} = excluded.{name}" for name in reported]
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        return await conn.fetchrow(
            f"INSERT INTO devices (device, {counts}) VALUES ({marks})"
            f" ON CONFLICT (device) DO UPDATE SET {', '.join(update)} RETURNING {_STATE_FIELDS}",
            *values,
        )

    async def series(self) -> list[tuple[int, dict[str, str]]]:
        try:
            rows = await self.pool.fetch("SELECT id, labels FROM series")
        except _ERRORS as exc:
            raise translate(exc) from exc
        return [(r["id"], dict(json.loads(r["labels"]))) for r in rows]

    async def samples(
        self, series_ids: list[int], start_ms: int, end_ms: int
    ) -> dict[int, tuple[list[int], list[float]]]:
        try:
            rows = await self.pool.fetch(
                "SELECT series_id, ts, bits FROM samples WHERE series_id = ANY($1::bigint[]) AND ts >= $2 AND ts <= $3"
                " ORDER BY series_id, ts",
                series_ids,
                start_ms,
                end_ms,
            )
        except _ERRORS as exc:
            raise translate(exc) from exc
        raw: dict[int, tuple[list[int], list[int]]] = {}
        for sid, ts, bits in rows:
            entry = raw.setdefault(sid, ([], []))
            entry[0].append(ts)
            entry[1].append(bits)
        return {sid: (ts, array("d", array("q", bits).tobytes()).tolist()) for sid, (ts, bits) in raw.items()}

    # -- series tables -----------------------------------------------------------------------------------

    async def get_table(self, device: str, digest: str) -> bytes | None:
        row = await self._fetchrow("SELECT data FROM series_tables WHERE device = $1 AND digest = $2", device, digest)
        return None if row is None else bytes(row["data"])

    async def put_tables(self, device: str, tables: dict[str, bytes], now_ms: int, expire_before_ms: int) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "DELETE FROM series_tables WHERE device = $1 AND stored_ms < $2", device, expire_before_ms
                )
                await conn.executemany(
                    "INSERT INTO series_tables (device, digest, data, stored_ms) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT DO NOTHING",
                    [(device, digest, data, now_ms) for digest, data in tables.items()],
                )
        except _ERRORS as exc:
            raise translate(exc) from exc

    # -- device registry ---------------------------------------------------------------------------------

    async def registration(self, token_sha256: str) -> Registration | None:
        row = await self._fetchrow(f"SELECT {_REG_FIELDS} FROM registry WHERE token_sha256 = $1", token_sha256)
        return Registration(*row) if row else None

    async def registrations(self) -> list[Registration]:
        try:
            rows = await self.pool.fetch(f"SELECT {_REG_FIELDS} FROM registry ORDER BY device")
        except _ERRORS as exc:
            raise translate(exc) from exc
        return [Registration(*r) for r in rows]

    async def register(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        return await self._changes(
            "INSERT INTO registry (device, token_sha256, created_ms, source) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            device,
            token_sha256,
            now_ms,
            source,
        )

    async def set_token(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        return await self._changes(
            "UPDATE registry SET token_sha256 = $1, rotated_ms = $2, source = $3 WHERE device = $4",
            token_sha256,
            now_ms,
            source,
            device,
        )

    async def revoke(self, device: str, now_ms: int) -> bool:
        return await self._changes(
            "UPDATE registry SET revoked_ms = $1 WHERE device = $2 AND revoked_ms = 0", now_ms, device
        )

    async def _changes(self, sql: str, *args: object) -> bool:
        try:
            return _count(await self.pool.execute(sql, *args)) == 1
        except _ERRORS as exc:
            raise translate(exc) from exc

    async def _fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        try:
            return await self.pool.fetchrow(sql, *args)
        except _ERRORS as exc:
            raise translate(exc) from exc

    # -- fleet page --------------------------------------------------------------------------------------

    async def device_states(self) -> list[DeviceState]:
        """Every device's figures as stored (by all instances); refreshes ``devices`` too."""
        try:
            rows = await self.pool.fetch(f"SELECT {_STATE_FIELDS} FROM devices")
        except _ERRORS as exc:
            raise translate(exc) from exc
        states = [DeviceState(**dict(r)) for r in rows]
        self.devices.update((s.device, s) for s in states)
        return states

    async def model_info(self, device_label: str) -> dict[str, dict[str, str]]:
        try:
            rows = await self.pool.fetch(
                "SELECT s.labels, max(m.ts) AS ts FROM series s JOIN samples m ON m.series_id = s.id"
                " WHERE s.name = 'backhaul_model_info' GROUP BY s.id, s.labels"
            )
        except _ERRORS as exc:
            raise translate(exc) from exc
        return newest_model_info(((dict(json.loads(r["labels"])), r["ts"]) for r in rows), device_label)

    async def alerts_firing(self) -> dict[str, list[dict[str, Any]]]:
        return firing_by_device(await self.alerts(state="firing"))

    # -- alerts ------------------------------------------------------------------------------------------

    async def record_alert(self, device: str, msg: AlertMessage, received_ms: int, via: str) -> bool:
        """The embedded store's :func:`collector.store.alerts.record`, made safe across instances: the
        instance's row is locked while its state moves, so two instances apply messages one by one."""
        value = None if math.isnan(msg.value) else msg.value
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    "INSERT INTO alert_messages (device, seq, ts_ms, fingerprint, rule, state, severity, value,"
                    " summary, received_ms, via) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) ON CONFLICT DO NOTHING",
                    device, msg.seq, msg.ts_ms, msg.fingerprint, msg.rule, msg.state, msg.severity, value,
                    msg.summary, received_ms, via,
                )  # fmt: skip
                if _count(status) == 0:
                    return False
                row = await conn.fetchrow(
                    "SELECT state, starts_ms, updated_ms FROM alerts WHERE device = $1 AND fingerprint = $2 FOR UPDATE",
                    device,
                    msg.fingerprint,
                )
                new = next_alert_state(device, msg, value, received_ms, None if row is None else tuple(row))
                if new is None:
                    return True
                await conn.execute(
                    f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)"
                    " ON CONFLICT (device, fingerprint) DO UPDATE SET rule = EXCLUDED.rule, state = EXCLUDED.state,"
                    " severity = EXCLUDED.severity, value = EXCLUDED.value, summary = EXCLUDED.summary,"
                    " starts_ms = EXCLUDED.starts_ms, ends_ms = EXCLUDED.ends_ms, updated_ms = EXCLUDED.updated_ms,"
                    " received_ms = EXCLUDED.received_ms, seq = EXCLUDED.seq",
                    *new,
                )
        except _ERRORS as exc:
            raise translate(exc) from exc
        return True

    async def alerts(
        self, device: str | None = None, state: str | None = None, resolved_since_ms: int | None = None
    ) -> list[StoredAlert]:
        where: list[str] = []
        args: list[object] = []
        if device is not None:
            args.append(device)
            where.append(f"device = ${len(args)}")
        if state is not None:
            args.append(state)
            where.append(f"state = ${len(args)}")
        if resolved_since_ms is not None:
            args.append(resolved_since_ms)
            where.append(f"(state = 'firing' OR ends_ms >= ${len(args)})")
        sql = f"SELECT {ALERT_COLUMNS} FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        try:
            rows = await self.pool.fetch(sql + " ORDER BY updated_ms DESC", *args)
        except _ERRORS as exc:
            raise translate(exc) from exc
        return [StoredAlert(*r) for r in rows]
