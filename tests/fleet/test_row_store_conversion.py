"""A store that kept a row per sample, as the code before the chunk store wrote it (fixtures made with
that code, tests/fixtures/README.md), is converted into chunks at open without losing or changing a
sample, on both back ends: the export shows every series and every value bit for bit, the devices'
figures and the model info stay, and the row tables are gone."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from backhaul.selector import Selector
from backhaul.wire.batch import BatchHeader
from collector.store import Store
from collector.store.postgres import PostgresStore
from collector.store.reader import Reader
from collector.store.sqlite import SqliteStore
from tests.fleet.batches import put

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def expected() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(gzip.decompress((FIXTURES / "row-store.expected.json.gz").read_bytes()))
    return found


async def everything(store: Store) -> dict[str, list[list[object]]]:
    """The export's view of the store, in the fixture's terms: sorted label pairs -> [ts, bits hex]."""
    reader = Reader(store, "device_id")
    out: dict[str, list[list[object]]] = {}
    plan = await reader.plan([Selector.parse('{__name__=~".+"}')], -(2**63), 2**63 - 1)
    async for group in reader.read(plan):
        for chosen, stamps, values in group:
            key = json.dumps(sorted(chosen.labels.items()))
            out[key] = [[t, struct.pack("<d", v).hex()] for t, v in zip(stamps, values, strict=True)]
    return out


async def open_fixture(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Store, str]:
    if backend == "sqlite":
        path = tmp_path / "collector.db"
        path.write_bytes(gzip.decompress((FIXTURES / "row-store.sqlite.gz").read_bytes()))
        return SqliteStore(path, "NORMAL"), str(path)
    dsn: str = request.getfixturevalue("pg_dsn")
    conn = await asyncpg.connect(dsn)
    dump = gzip.decompress((FIXTURES / "row-store.postgres.sql.gz").read_bytes()).decode()
    try:  # a connection of its own: the dump empties its search_path
        # (without psql's meta-commands, which newer pg_dump versions write)
        await conn.execute("\n".join(line for line in dump.splitlines() if not line.startswith("\\")))
    finally:
        await conn.close()
    return PostgresStore(dsn, pool_size=2), dsn


async def row_tables(backend: str, where: str) -> set[str]:
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(where)
        try:
            return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    pg = await asyncpg.connect(where)
    try:
        return {r["tablename"] for r in await pg.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await pg.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_row_store_is_converted_into_chunks_without_losing_a_sample(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    want = expected()
    store, where = await open_fixture(backend, tmp_path, request)
    await store.open()
    try:
        got = await everything(store)
        assert sorted(got) == sorted(want["series"])
        for key, samples in want["series"].items():
            assert got[key] == samples, key
        assert sum(len(s) for s in got.values()) == sum(d[0] for d in want["devices"].values())
        states = {s.device: [s.samples, s.duplicate_samples, s.batches] for s in await store.device_states()}
        assert states == want["devices"]
        assert await store.model_info("device_id") == want["model_info"]
        # a retry of a batch stored before the conversion is still recognised
        assert await store.seen("edge-1", "b1", 5)
        header = BatchHeader(device="edge-1", buffer_id="b1", seq=5, sent_at_ms=0)
        assert (await put(store, "edge-1", {(("__name__", "m_0"),): ([1], [1.0])}, 1, header)).duplicate_batch
    finally:
        await store.close()
    tables = await row_tables(backend, where)
    assert "chunks" in tables and not {"series", "samples"} & tables
    # opening again converts nothing and changes nothing
    store, _ = (SqliteStore(Path(where), "NORMAL"), where) if backend == "sqlite" else (PostgresStore(where, 2), where)
    await store.open()
    try:
        assert await everything(store) == got
    finally:
        await store.close()
