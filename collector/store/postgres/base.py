"""The shared store's connection pool, and the one place where asyncpg's errors become ours.

Every statement goes through :meth:`PostgresBase.connection` (or the helpers built on it), which
translates asyncpg's and the network's errors into :class:`~backhaul.errors.StoreError` with
:func:`translated`: a lost connection or a deadlock is transient (HTTP 503: the agent retries,
nothing is acknowledged), a broken schema is not. No other module of this back end catches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import asyncpg

from backhaul.errors import StoreError
from backhaul.wire.chunk import Codec
from collector.store import overlap, records
from collector.store.cache import BoundedCache
from collector.store.chunks import Scan, TableInfo, scan
from collector.store.postgres.schema import migrate
from collector.store.records import DeviceState

log = logging.getLogger(__name__)

# SQLSTATE classes worth a retry: connection trouble, deadlock/serialization, out of resources,
# server shutting down or restarting, system errors (e.g. disk full).
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def translate(exc: BaseException) -> StoreError:
    """Map asyncpg's errors once, here: lost connections and deadlocks are transient, the rest is not."""
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return StoreError(f"postgres: {code} {exc}", transient=code[:2] in _TRANSIENT_CLASSES)
    return StoreError(f"postgres: {type(exc).__name__}: {exc}", transient=True)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """The boundary: asyncpg's, the socket's and timeouts' errors leave it as StoreError."""
    try:
        yield
    except _ERRORS as exc:
        raise translate(exc) from exc


def count(status: str) -> int:
    """Rows affected, from a command tag such as ``INSERT 0 12`` or ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])


# Bounds of what the store remembers, as in the embedded store (collector/store/sqlite/base.py).
CACHED_TABLE_IDS = 4096
CACHED_TABLE_KEYS = 200_000
CACHED_SCAN_SAMPLES = 200_000


class PostgresBase:
    """Args:
    dsn: ``postgresql://user:password@host:port/database``.
    pool_size: connections this instance keeps open at most.
    device_label: only to convert a store that kept a row per sample (:mod:`collector.store.legacy`).
    """

    def __init__(self, dsn: str, pool_size: int = 10, device_label: str = "device_id") -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self.device_label = device_label
        self._pool: asyncpg.Pool | None = None
        # The last known state of every device, for the metrics page (a scrape cannot await).
        self.devices: dict[str, DeviceState] = {}
        # Bounded caches, never a structure per stored series. Ids are only remembered once their
        # transaction committed; ids are never reused, so a committed one stays right.
        self._codec = Codec()  # used on the event loop only
        self._table_ids: BoundedCache[tuple[str, str], int] = BoundedCache(CACHED_TABLE_IDS)
        self._keys: BoundedCache[int, tuple[bytes, ...]] = BoundedCache(CACHED_TABLE_KEYS, lambda k: len(k) + 1)
        self._scans: BoundedCache[int, Scan] = BoundedCache(CACHED_SCAN_SAMPLES, lambda s: s.samples or 1)

    async def open(self) -> None:
        try:
            with translated():
                self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_size)
            async with self.connection(transaction=True) as conn:
                await migrate(conn)
            await self._convert()
            await self._load_devices()
        except BaseException:
            await self.close()
            raise

    async def _convert(self) -> None:
        """Convert rows of a store that kept a row per sample (collector/store/postgres/legacy.py)."""

    async def _series_keys(self, conn: asyncpg.Connection, table_id: int) -> tuple[bytes, ...]:
        """A stored table's series keys (:func:`overlap.series_keys`), parsed once and cached (a
        table's content never changes under its id, so a key cached by a rolled-back transaction
        stays right)."""
        found = self._keys.get(table_id)
        if found is None:
            row = await conn.fetchrow("SELECT digest, data FROM chunk_tables WHERE id = $1", table_id)
            table = TableInfo.parse(self._codec.decompress(bytes(row["data"]), 1 << 30), row["digest"])
            found = overlap.series_keys(table.labels())
            self._keys.put(table_id, found)
        return found

    async def _scan(self, conn: asyncpg.Connection, chunk_id: int) -> Scan:
        found = self._scans.get(chunk_id)
        if found is None:
            data = await conn.fetchval("SELECT data FROM chunk_data WHERE id = $1", chunk_id)
            found = scan(self._codec.decompress(bytes(data), 1 << 30))
            self._scans.put(chunk_id, found)
        return found

    async def close(self, grace: float | None = None) -> None:
        """Close the pool within ``grace`` seconds (None: no limit); past it, connections are dropped."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), grace)
        except TimeoutError:
            log.error("postgres store: the pool did not close within %s s; terminating it", grace)
            pool.terminate()

    @contextlib.asynccontextmanager
    async def connection(self, transaction: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A connection from the pool (in a transaction if asked), errors translated."""
        if self._pool is None:
            raise StoreError("store is not open", transient=False)
        with translated():
            async with self._pool.acquire() as conn:
                if not transaction:
                    yield conn
                    return
                async with conn.transaction():
                    yield conn

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows

    async def _fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        async with self.connection() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
            return row

    async def _changes(self, sql: str, *args: object) -> bool:
        """Run one write; whether it changed exactly one row."""
        async with self.connection() as conn:
            return count(await conn.execute(sql, *args)) == 1

    async def _load_devices(self) -> list[DeviceState]:
        """Every device's figures as stored (by all instances); refreshes ``devices`` too."""
        states = [DeviceState(*r) for r in await self._fetch(f"SELECT {records.DEVICE_COLUMNS} FROM devices")]
        self.devices.update((s.device, s) for s in states)
        return states
