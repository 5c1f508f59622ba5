"""``POST /api/v1/batches``: a device's batch in, stored once, acknowledged only when durable.

200  stored (or already stored: ``"duplicate": true``); the agent may delete the batch
400  not a valid batch or chunk (reason in the body)
401  no or unknown bearer token;  403  the token belongs to another device
409  a chunk refers to a series table the store does not keep (``unknown_tables`` in the JSON body):
     the agent sends the batch again with its tables
413  body, or what it decompresses to, over the limit
415  wrong Content-Type
503  the store cannot write right now (disk full, locked): the agent retries later
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web
from prometheus_client import Counter

from backhaul.errors import InputError, TooLarge, UnknownTables, WireError, store_trouble
from backhaul.wire import batch as batchfmt
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from collector.auth import DeviceAuth
from collector.config import CollectorSettings
from collector.endpoint import DeviceEndpoint
from collector.forward.spool import Chunks, Forward
from collector.metrics import CollectorMetrics
from collector.store import IngestResult, NewChunk, Store
from collector.store.cache import BoundedCache
from collector.store.chunks import TableInfo, prepare

# Tables this instance remembers (they never change: a digest names one table for good): what
# ingest needs of each (a summary: size, names, the fleet page's series), and, when forwarding, the
# tables' bytes (the forwarders read chunks with their tables in them), bounded by bytes.
_CACHED_TABLES = 10_000
_CACHED_TABLE_BYTES = 16 * 1024 * 1024
# A device's stored tables are dropped this long after they were stored, whenever it sends a new one,
# so that series churn cannot grow the store for ever; one still in use costs a 409 and a full batch.
_TABLE_KEPT_MS = 7 * 86_400_000
# On every 2xx: agents may then send chunks by table reference.
_KEEPS_TABLES = {batchfmt.TABLES_HEADER: "1"}


class BatchReceiver(DeviceEndpoint):
    """Args: those of :class:`~collector.endpoint.DeviceEndpoint` (``forward`` gets a batch's chunks,
    each with its series table, before the store commits them)."""

    what = "batch"

    def __init__(
        self,
        settings: CollectorSettings,
        store: Store,
        metrics: CollectorMetrics,
        clock: Callable[[], float] = time.time,
        forward: Forward | None = None,
    ) -> None:
        super().__init__(settings, store, metrics, clock, forward)
        self._tables: BoundedCache[tuple[str, str], TableInfo] = BoundedCache(_CACHED_TABLES)
        self._table_bytes: BoundedCache[tuple[str, str], bytes] = BoundedCache(_CACHED_TABLE_BYTES, len)

    def _answers(self) -> Counter:
        return self._metrics.requests

    async def _handle(self, request: web.Request) -> web.Response:
        device = await self._auth.device_for(request.headers.get("Authorization"))
        if request.content_type != batchfmt.CONTENT_TYPE:
            raise InputError(f"Content-Type must be {batchfmt.CONTENT_TYPE}, not {request.content_type!r}", 415)
        body = await self._read(request)
        self._metrics.body_bytes.inc(len(body))
        header, chunks = batchfmt.decode(body)
        DeviceAuth.check_claim(device, header.device)

        store = self._store
        if await store.seen(header.device, header.buffer_id, header.seq):
            self._metrics.batches.labels("duplicate").inc()
            return web.json_response({"stored": True, "duplicate": True, "seq": header.seq}, headers=_KEEPS_TABLES)
        started = time.perf_counter()
        try:
            tables = await self._tables_for(header)
        except UnknownTables:
            self._metrics.batches.labels("unknown_table").inc()
            raise
        try:
            prepared, frames, new_tables = await asyncio.to_thread(self._prepare, header, chunks, tables)
        except WireError as exc:
            if isinstance(exc, TooLarge):
                raise
            self._metrics.batches.labels("malformed").inc()
            raise
        if new_tables:
            now_ms = int(self._clock() * 1000)
            # Kept before the batch is acknowledged: the agent refers to them from then on.
            with store_trouble("series tables"):
                await store.put_tables(header.device, new_tables, now_ms, now_ms - _TABLE_KEPT_MS)
        for chunk in prepared:
            if chunk.table.data is not None:
                self._remember(header.device, chunk.table)  # (on the event loop: the caches are not thread-safe)
        if self._forward is not None:
            with store_trouble("forward spool"):
                await self._forward(header.device, Chunks(frames), header.samples)
        result: IngestResult = await store.ingest(header.device, prepared, int(self._clock() * 1000), header)
        self._metrics.ingest_seconds.observe(time.perf_counter() - started)
        if result.duplicate_batch:
            self._metrics.batches.labels("duplicate").inc()
        else:
            self._metrics.batches.labels("stored").inc()
            self._metrics.samples.inc(result.samples)
            self._metrics.duplicate_samples.inc(result.duplicate_samples)
        return web.json_response(
            {"stored": True, "duplicate": result.duplicate_batch, "seq": header.seq, "samples": result.samples},
            headers=_KEEPS_TABLES,
        )

    async def _tables_for(self, header: BatchHeader) -> dict[str, TableInfo]:
        """The series tables the batch's chunks refer to; :class:`UnknownTables` if the store lacks one."""
        tables: dict[str, TableInfo] = {}
        missing: list[str] = []
        for digest in dict.fromkeys(r for r in header.table_refs if r):
            key = (header.device, digest)
            table = self._tables.get(key)
            if table is not None and self._forward is not None:  # forwarding needs the table's bytes too
                data = self._table_bytes.get(key)
                table = None if data is None else replace(table, data=data)
            if table is None:
                data = await self._store.get_table(header.device, digest)
                if data is not None:
                    table = await asyncio.to_thread(TableInfo.parse, data, digest)
                    self._remember(header.device, table)
            if table is None:
                missing.append(digest)
            else:
                tables[digest] = table
        if missing:
            raise UnknownTables(missing)
        return tables

    def _remember(self, device: str, table: TableInfo) -> None:
        self._tables.put((device, table.digest), table.summary())
        if self._forward is not None and table.data is not None:
            self._table_bytes.put((device, table.digest), table.data)

    def _prepare(
        self, header: BatchHeader, chunks: list[bytes], tables: dict[str, TableInfo]
    ) -> tuple[list[NewChunk], list[bytes], dict[str, bytes]]:
        """On a worker thread: decompress (capped across the whole batch) and prepare every chunk for
        the store (:func:`collector.store.chunks.prepare`: the header and timestamps are read, the
        values are not).

        Also returns the chunk frames with their tables in them (re-compressed where a chunk came by
        reference) for the forwarders, and, when the agent asks the collector to keep tables
        (``table_refs`` present), the tables this instance has not kept yet.
        """
        limit = int(self._settings.limits.max_decompressed_bytes)
        budget = limit
        # A codec per call: zstd (de)compressor objects must not be used by two threads at once,
        # and concurrent batches are decoded on different worker threads.
        codec = Codec()
        prepared: list[NewChunk] = []
        frames: list[bytes] = []
        new_tables: dict[str, bytes] = {}
        refs = header.table_refs
        for index, frame in enumerate(chunks):
            raw = codec.decompress(frame, budget)
            budget -= len(raw)
            if budget < 0:
                raise TooLarge("decompressed batch", limit)
            try:
                ref = refs[index] if refs else ""
                if ref:
                    chunk = prepare(raw, frame, tables[ref], codec)
                    if self._forward is not None:  # the forwarders read chunks with their tables in them
                        data = tables[ref].data
                        assert data is not None  # see _tables_for
                        frame = codec.compress(chunkfmt.join_table(raw, data))
                    self._metrics.table_references.inc()
                else:
                    chunk = prepare(raw, frame, None, codec)
                    if refs and (header.device, chunk.table.digest) not in self._tables:
                        assert chunk.table.data is not None
                        new_tables[chunk.table.digest] = chunk.table.data
            except WireError as exc:
                raise WireError(f"chunk {index}: {exc}") from exc
            prepared.append(chunk)
            frames.append(frame)
        self._metrics.decompressed_bytes.inc(limit - budget)
        found = sum(c.scan.samples for c in prepared)
        if found != header.samples:
            raise WireError(f"batch header announces {header.samples} samples, its chunks hold {found}")
        return prepared, frames, new_tables
