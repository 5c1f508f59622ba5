"""The embedded SQLite store behind the async :class:`collector.store.Store` interface.

:class:`CollectorStore` is synchronous and owns one connection on one thread; this wrapper runs each
call on that thread, so the event loop never waits for an fsync.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from backhaul.sqlite import Synchronous
from backhaul.wire.alert import AlertMessage
from backhaul.wire.batch import BatchHeader
from backhaul.wire.series import SeriesMap
from collector.store import alerts as alert_store
from collector.store.alerts import StoredAlert, firing_by_device
from collector.store.records import Registration
from collector.store.sqlite import CollectorStore, DeviceState, IngestResult

P = ParamSpec("P")
T = TypeVar("T")


class EmbeddedStore:
    """Args: path of the database file (created when missing) and SQLite's synchronous level."""

    def __init__(self, path: Path, synchronous: Synchronous) -> None:
        self.db = CollectorStore(path, synchronous)

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.db.db.run(fn, *args, **kwargs)

    @property
    def devices(self) -> dict[str, DeviceState]:
        return self.db.devices

    async def open(self) -> None:
        await self._run(self.db.open)

    async def close(self, grace: float | None = None) -> None:
        await self.db.db.aclose(grace)

    async def get_table(self, device: str, digest: str) -> bytes | None:
        return await self._run(self.db.get_table, device, digest)

    async def put_tables(self, device: str, tables: dict[str, bytes], now_ms: int, expire_before_ms: int) -> None:
        await self._run(self.db.put_tables, device, tables, now_ms, expire_before_ms)

    async def seen(self, device: str, buffer_id: str, seq: int) -> bool:
        return await self._run(self.db.seen, device, buffer_id, seq)

    async def ingest(
        self, device: str, series: SeriesMap, device_label: str, now_ms: int, batch: BatchHeader | None = None
    ) -> IngestResult:
        return await self._run(self.db.ingest, device, series, device_label, now_ms, batch)

    async def series(self) -> list[tuple[int, dict[str, str]]]:
        return await self._run(self.db.series)

    async def samples(
        self, series_ids: list[int], start_ms: int, end_ms: int
    ) -> dict[int, tuple[list[int], list[float]]]:
        return await self._run(self.db.samples, series_ids, start_ms, end_ms)

    async def registration(self, token_sha256: str) -> Registration | None:
        return await self._run(self.db.registration, token_sha256)

    async def registrations(self) -> list[Registration]:
        return await self._run(self.db.registrations)

    async def register(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        return await self._run(self.db.register, device, token_sha256, now_ms, source)

    async def set_token(self, device: str, token_sha256: str, now_ms: int, source: str = "cli") -> bool:
        return await self._run(self.db.set_token, device, token_sha256, now_ms, source)

    async def revoke(self, device: str, now_ms: int) -> bool:
        return await self._run(self.db.revoke, device, now_ms)

    async def device_states(self) -> list[DeviceState]:
        return await self._run(self.db.device_states)

    async def model_info(self, device_label: str) -> dict[str, dict[str, str]]:
        return await self._run(self.db.model_info, device_label)

    async def alerts_firing(self) -> dict[str, list[dict[str, Any]]]:
        return firing_by_device(await self.alerts(state="firing"))

    async def record_alert(self, device: str, msg: AlertMessage, received_ms: int, via: str) -> bool:
        return await self._run(alert_store.record, self.db, device, msg, received_ms, via)

    async def alerts(
        self, device: str | None = None, state: str | None = None, resolved_since_ms: int | None = None
    ) -> list[StoredAlert]:
        return await self._run(alert_store.current, self.db, device, state, resolved_since_ms)
