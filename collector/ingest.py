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

from aiohttp import web
from prometheus_client import Counter

from backhaul.errors import InputError, TooLarge, UnknownTables, WireError, store_trouble
from backhaul.wire import batch as batchfmt
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, merge_into, sample_count
from collector.auth import DeviceAuth
from collector.config import CollectorSettings
from collector.endpoint import DeviceEndpoint
from collector.forward.spool import Chunks, Forward
from collector.metrics import CollectorMetrics
from collector.store import IngestResult, Store

# Tables this instance keeps in memory (they never change: a digest names one table for good).
_CACHED_TABLES = 1024
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
        self._tables: dict[tuple[str, str], bytes] = {}  # (device, digest) -> series table

    def _answers(self) -> Counter:
        return self._metrics.requests

    async def _handle(self, request: web.Request) -> web.Response:
        device = await self._auth.device_of(request)
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
            series, frames, new_tables = await asyncio.to_thread(self._decode_chunks, header, chunks, tables)
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
            self._remember_tables(header.device, new_tables)
        if self._forward is not None:
            with store_trouble("forward spool"):
                await self._forward(header.device, Chunks(frames), header.samples)
        result: IngestResult = await store.ingest(
            header.device, series, self._settings.device_label, int(self._clock() * 1000), header
        )
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

    async def _tables_for(self, header: BatchHeader) -> dict[str, bytes]:
        """The series tables the batch's chunks refer to; :class:`UnknownTables` if the store lacks one."""
        tables: dict[str, bytes] = {}
        missing: list[str] = []
        for digest in dict.fromkeys(r for r in header.table_refs if r):
            table = self._tables.get((header.device, digest))
            if table is None:
                table = await self._store.get_table(header.device, digest)
                if table is not None:
                    self._remember_tables(header.device, {digest: table})
            if table is None:
                missing.append(digest)
            else:
                tables[digest] = table
        if missing:
            raise UnknownTables(missing)
        return tables

    def _remember_tables(self, device: str, tables: dict[str, bytes]) -> None:
        if len(self._tables) + len(tables) > _CACHED_TABLES:
            self._tables.clear()
        self._tables.update(((device, digest), table) for digest, table in tables.items())

    def _decode_chunks(
        self, header: BatchHeader, chunks: list[bytes], tables: dict[str, bytes]
    ) -> tuple[SeriesMap, list[bytes], dict[str, bytes]]:
        """On a worker thread: decompress (capped across the whole batch) and decode every chunk.

        Also returns the chunk frames with their tables in them (re-compressed where a chunk came by
        reference) and, when the agent asks the collector to keep tables (``table_refs`` present),
        the tables this instance has not kept yet.
        """
        budget = int(self._settings.limits.max_decompressed_bytes)
        # A codec per call: zstd (de)compressor objects must not be used by two threads at once,
        # and concurrent batches are decoded on different worker threads.
        codec = Codec()
        series: SeriesMap = {}
        frames: list[bytes] = []
        new_tables: dict[str, bytes] = {}
        refs = header.table_refs
        for index, frame in enumerate(chunks):
            raw = codec.decompress(frame, budget)
            try:
                if refs and refs[index]:
                    raw = chunkfmt.join_table(raw, tables[refs[index]])
                    # the forwarders read chunks with their tables in them
                    frame = codec.compress(raw) if self._forward is not None else frame
                    self._metrics.table_references.inc()
                elif refs:
                    table = chunkfmt.table_of(raw)
                    digest = chunkfmt.table_digest(table)
                    if (header.device, digest) not in self._tables:
                        new_tables[digest] = table
                budget -= len(raw)
                if budget < 0:
                    raise TooLarge("decompressed batch", int(self._settings.limits.max_decompressed_bytes))
                merge_into(series, chunkfmt.decode(raw))
            except WireError as exc:
                raise WireError(f"chunk {index}: {exc}") from exc
            frames.append(frame)
        self._metrics.decompressed_bytes.inc(int(self._settings.limits.max_decompressed_bytes) - budget)
        found = sample_count(series)
        if found != header.samples:
            raise WireError(f"batch header announces {header.samples} samples, its chunks hold {found}")
        return series, frames, new_tables
