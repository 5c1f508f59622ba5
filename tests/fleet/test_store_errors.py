"""A damaged table in a running collector's SQLite store is trouble with the store, not a bug: the
upload is answered 503 with ``Retry-After`` (the agent keeps the batch and retries), never 500, and the
collector keeps running and serves again once the table is back. On either back end, every read
raises StoreError, never the driver's own error."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from backhaul.errors import StoreError
from backhaul.wire.alert import AlertMessage
from collector.store import Store
from collector.store.postgres import PostgresStore
from collector.store.sqlite import SqliteStore
from tests.conftest import Running
from tests.fleet.batches import batch_body, headers, put, series_for
from tests.support import TOKEN, http


def upload(collector: Running, seq: int) -> tuple[int, dict[str, str]]:
    body = batch_body("dev-1", seq, series_for("dev-1", seq))
    status, _, answer_headers = http("POST", f"{collector.url}/api/v1/batches", body, headers(TOKEN))
    return status, answer_headers


def rename_table(db: Path, old: str, new: str) -> None:
    """From another process, as a damaged file or a stray hand with the sqlite3 shell would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
    finally:
        conn.close()


# registry: the token check (DeviceAuth.device_for) reads it first; batches: the de-duplication read (seen).
@pytest.mark.integration
@pytest.mark.parametrize("table", ["registry", "batches"])
def test_a_damaged_table_is_a_503_with_retry_after_and_the_collector_keeps_running(
    table: str, start_collector: Callable[..., Running], tmp_path: Path
) -> None:
    collector = start_collector()
    assert upload(collector, 1)[0] == 200

    rename_table(tmp_path / "collector.db", table, f"{table}_away")
    status, answer_headers = upload(collector, 2)
    assert status == 503, (tmp_path / "collector.log").read_text()
    assert int(answer_headers["Retry-After"]) >= 1
    assert collector.proc.popen is not None and collector.proc.popen.poll() is None
    assert http("GET", f"{collector.url}/healthz")[0] == 200

    rename_table(tmp_path / "collector.db", f"{table}_away", table)
    assert upload(collector, 2)[0] == 200
    assert upload(collector, 2)[0] == 200  # and recognised as a repeat: the store is whole again


TABLES = (
    "registry",
    "batches",
    "chunks",
    "chunk_data",
    "chunk_tables",
    "table_names",
    "fleet_samples",
    "series_tables",
    "devices",
    "alerts",
)


async def damage(backend: str, where: str) -> None:
    """Take the store's tables away behind its back (its connections stay open)."""
    if backend == "postgres":
        conn = await asyncpg.connect(where)
        try:
            await conn.execute("DROP TABLE " + ", ".join(TABLES))
        finally:
            await conn.close()
    else:
        for table in TABLES:
            rename_table(Path(where), table, f"{table}_away")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_every_read_of_a_damaged_store_raises_store_error(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = request.getfixturevalue("pg_dsn") if backend == "postgres" else str(tmp_path / "c.db")
    store: Store = PostgresStore(where, pool_size=2) if backend == "postgres" else SqliteStore(Path(where), "NORMAL")
    await store.open()
    try:
        labels = (("__name__", "backhaul_model_info"), ("model", "m"))
        await put(store, "dev-1", {labels: ([1000], [1.0])}, 1)
        await store.record_alert(
            "dev-1", AlertMessage("dev-1", "Hot", "firing", "critical", 1.0, 5, 1, 7, ""), 6, "http"
        )
        [table] = await store.tables(0, 2000)
        await damage(backend, where)

        reads: dict[str, Callable[[], Awaitable[object]]] = {
            "registration": lambda: store.registration("0" * 64),
            "registrations": store.registrations,
            "get_table": lambda: store.get_table("dev-1", "a" * 32),
            "tables": lambda: store.tables(0, 2000),
            "table_data": lambda: store.table_data([table.id]),
            "chunk_refs": lambda: store.chunk_refs([table.id], 0, 2000),
            "chunk_totals": lambda: store.chunk_totals([table.id], 0, 2000),
            "chunk_frames": lambda: store.chunk_frames([1]),
            "metric_names": store.metric_names,
            "fleet_samples": lambda: store.fleet_samples("backhaul_model_info", 0, 2000),
            "device_states": store.device_states,
            "model_info": lambda: store.model_info("device_id"),
            "alerts": store.alerts,
            "alerts_firing": store.alerts_firing,
        }
        if backend != "postgres":
            reads["seen"] = lambda: store.seen("dev-1", "b", 1)  # the shared store's seen() is a fast path only
        for name, read in reads.items():
            with pytest.raises(StoreError):
                await read()
                pytest.fail(f"{name}() read a damaged store without a StoreError")
        if backend == "postgres":
            assert await store.seen("dev-1", "b", 1) is False  # ingest decides (and raises StoreError)
    finally:
        await store.close()
