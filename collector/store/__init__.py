"""Where the collector keeps what it received: embedded SQLite by default, PostgreSQL when several
collector instances share one store.

Both back ends implement :class:`Store`. Everything a second instance must agree on lives behind it:
the batches already stored (de-duplication), the device registry (tokens, revocations), the figures
the fleet page shows, and recent data (chunks as they arrived, :mod:`collector.store.chunks`, with
an index by device, series table and time range, kept for ``[store] retention``,
:mod:`collector.store.retention`). An instance keeps nothing else that another instance would need.

The back ends have the same shape: ``sqlite/`` and ``postgres/`` each hold a base (the connection and
what memory holds of the store), the schema, and one module per concern (samples, reading,
retention, the conversion of a row store, registry, alerts). What they agree on is here beside them:
records and the alert state logic (:mod:`~collector.store.records`), the chunk format as stored
(:mod:`~collector.store.chunks`), what counts as a duplicate sample (:mod:`~collector.store.overlap`),
how a selector reads chunks (:mod:`~collector.store.reader`), bounded caches
(:mod:`~collector.store.cache`). The rest of the collector imports these instead of a back end.
"""

from __future__ import annotations

from typing import Any, Protocol

from backhaul.wire.alert import AlertMessage
from backhaul.wire.batch import BatchHeader
from collector.store.chunks import NewChunk
from collector.store.reader import Source
from collector.store.records import ChunkRef, DeviceState, IngestResult, Registration, Removed, StoredAlert, TableRef
from collector.store.retention import Rules
from collector.store.settings import StoreSettings

__all__ = [
    "ChunkRef",
    "DeviceState",
    "IngestResult",
    "NewChunk",
    "Registration",
    "Removed",
    "Store",
    "StoredAlert",
    "TableRef",
    "make_store",
]


class Store(Source, Protocol):
    """What the collector's endpoints need from a store; every call is a coroutine.

    ``devices`` is the last known state of every device this instance has seen, for the metrics
    page (a scrape cannot await); the fleet page reads :meth:`device_states` for the shared truth.
    """

    @property
    def devices(self) -> dict[str, DeviceState]: ...

    async def open(self) -> None: ...
    async def close(self, grace: float | None = None) -> None: ...

    # -- chunks and de-duplication
    async def seen(self, device: str, buffer_id: str, seq: int) -> bool: ...
    async def ingest(
        self, device: str, chunks: list[NewChunk], now_ms: int, batch: BatchHeader | None = None
    ) -> IngestResult: ...
    async def remove_old(self, rules: Rules, now_ms: int) -> Removed: ...

    # -- series tables agents refer to by digest (docs/wire-format.md)
    async def get_table(self, device: str, digest: str) -> bytes | None: ...
    async def put_tables(self, device: str, tables: dict[str, bytes], now_ms: int, expire_before_ms: int) -> None: ...

    # -- reading: the methods of collector.store.reader.Source (the reader decodes, off the store's thread)

    # -- device registry
    async def registration(self, token_sha256: str) -> Registration | None: ...
    async def registrations(self) -> list[Registration]: ...
    async def register(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool: ...
    async def set_token(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool: ...
    async def revoke(self, device: str, now_ms: int) -> bool: ...

    # -- fleet page
    async def device_states(self) -> list[DeviceState]: ...
    async def model_info(self, device_label: str) -> dict[str, dict[str, str]]: ...
    async def fleet_samples(self, name: str, start_ms: int, end_ms: int) -> list[tuple[str, str, int, float]]: ...
    async def alerts_firing(self) -> dict[str, list[dict[str, Any]]]: ...

    # -- alerts (records.next_alert_state)
    async def record_alert(self, device: str, msg: AlertMessage, received_ms: int, via: str) -> bool: ...
    async def alerts(
        self, device: str | None = None, state: str | None = None, resolved_since_ms: int | None = None
    ) -> list[StoredAlert]: ...


def make_store(settings: StoreSettings, device_label: str = "device_id") -> Store:
    """The configured back end, not yet opened (``device_label``: to convert a store of rows)."""
    if settings.backend == "postgres":
        from collector.store.postgres import PostgresStore  # asyncpg is only loaded when used

        assert settings.dsn is not None  # checked by the settings
        return PostgresStore(settings.dsn.get_secret_value(), settings.pool_size, device_label)
    from collector.store.sqlite import SqliteStore

    return SqliteStore(settings.path, settings.synchronous, device_label)
