"""``POST /api/v1/batches``: a device's batch in, stored once, acknowledged only when durable.

200  stored (or already stored: ``"duplicate": true``); the agent may delete the batch
400  not a valid batch or chunk (reason in the body); a series whose labels break the rules
     (backhaul/labels.py) is dropped and counted, the rest stored (``dropped`` in the JSON body)
401  no or unknown bearer token;  403  the token belongs to another device
409  a chunk refers to a series table the store does not keep (``unknown_tables`` in the JSON body):
     the agent sends the batch again with its tables
413  body, what it decompresses to, or what its chunks declare they decode to, over the limit
415  wrong Content-Type
503  the store cannot write right now (disk full, locked), or too much is being decoded at once:
     the agent retries later
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from backhaul.errors import InputError, StoreError, TooLarge, UnknownTables, WireError, store_trouble
from backhaul.wire import batch as batchfmt
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.batch import BatchHeader
from backhaul.wire.budget import chunk_cost
from backhaul.wire.chunk import Codec
from collector.auth import DeviceAuth
from collector.endpoint import DeviceEndpoint
from collector.forward.spool import Chunks
from collector.store import IngestResult, NewChunk
from collector.store.cache import BoundedCache
from collector.store.chunks import TableInfo, prepare
from collector.store.history import BatchNote

log = logging.getLogger(__name__)

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tables: BoundedCache[tuple[str, str], TableInfo] = BoundedCache(_CACHED_TABLES)
        self._table_bytes: BoundedCache[tuple[str, str], bytes] = BoundedCache(_CACHED_TABLE_BYTES, len)

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
            # What the chunks declare, compared and priced before anything is decoded.
            cost = self._plan(header, chunks, tables)
        except WireError as exc:
            if not isinstance(exc, TooLarge):
                self._metrics.batches.labels("malformed").inc()
            raise
        async with self._budget.reserve(cost, "batch"):
            return await self._store_batch(header, chunks, tables, started)

    async def _store_batch(
        self, header: BatchHeader, chunks: list[bytes], tables: dict[str, TableInfo], started: float
    ) -> web.Response:
        store = self._store
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
        dropped: dict[str, int] = {}
        for chunk in prepared:
            if chunk.sent_table.data is not None:
                self._remember(header.device, chunk.sent_table)  # (on the event loop: the caches are not thread-safe)
            for reason, count in chunk.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
        prepared = [c for c in prepared if c.scan.samples]
        if self._forward is not None and frames:
            with store_trouble("forward spool"):
                await self._forward(header.device, Chunks(frames), header.samples - sum(dropped.values()))
        result: IngestResult = await store.ingest(header.device, prepared, int(self._clock() * 1000), header)
        self._metrics.ingest_seconds.observe(time.perf_counter() - started)
        if result.duplicate_batch:
            self._metrics.batches.labels("duplicate").inc()
        else:
            self._metrics.batches.labels("stored").inc()
            self._metrics.stored(header.device, result)
            self._count_dropped(header.device, dropped)
            newest = max((c.scan.max_ts for c in prepared), default=0)
            await self._note(header, newest, sum(len(c) for c in chunks), result.samples)
        answer: dict[str, object] = {
            "stored": True,
            "duplicate": result.duplicate_batch,
            "seq": header.seq,
            "samples": result.samples,
        }
        if dropped and not result.duplicate_batch:
            answer["dropped"] = dropped
        return web.json_response(answer, headers=_KEEPS_TABLES)

    async def _note(self, header: BatchHeader, newest: int, size: int, samples: int) -> None:
        """Into the device's history for the fleet page; a failure there never fails the batch."""
        # The link's name, once the agent reports it in the header's uplink object (issue 13/14).
        reported = getattr(header, "uplink", None)
        link = reported.get("link", "") if isinstance(reported, dict) else ""
        note = BatchNote(
            header.device,
            int(self._clock() * 1000),
            size,
            samples,
            header.backlog_bytes,
            newest,
            header.sent_at_ms,
            link if isinstance(link, str) else "",
        )
        try:
            await self._store.note_batch(note)
        except StoreError as exc:
            log.warning("device %s: its history for the fleet page was not kept: %s", header.device, exc)

    def _plan(self, header: BatchHeader, chunks: list[bytes], tables: dict[str, TableInfo]) -> int:
        """The decoding cost of the batch, from what its chunks declare (each decompressed only as far
        as its header); a WireError when those counts do not add up to the header's, TooLarge when the
        chunks cannot fit the limits."""
        codec = Codec()
        declared = raw = cost = 0
        refs = header.table_refs
        limit = int(self._settings.limits.max_decompressed_bytes)
        shapes = []
        for index, frame in enumerate(chunks):
            try:
                raw += codec.content_size(frame) or 0
                if raw > limit:  # as the frames' headers declare: a zstd bomb is refused before anything runs
                    raise TooLarge("decompressed batch", limit)
                shapes.append(codec.peek(frame))
            except WireError as exc:
                if isinstance(exc, TooLarge):
                    raise
                raise WireError(f"chunk {index}: {exc}") from exc
        raw = 0
        for index, shape in enumerate(shapes):
            table_len = tables[refs[index]].size if refs and refs[index] else shape.table_len
            length = shape.min_len + table_len - shape.table_len
            declared += shape.n_samples
            raw += length
            cost += chunk_cost(shape.n_series, shape.n_samples, table_len, length)
        if declared != header.samples:
            raise WireError(f"batch header announces {header.samples} samples, its chunks declare {declared}")
        if raw > limit:
            raise TooLarge("decompressed batch", limit)
        self._budget.check(cost, "batch")
        return cost

    async def _tables_for(self, header: BatchHeader) -> dict[str, TableInfo]:
        """The series tables the batch's chunks refer to; :class:`UnknownTables` if the store lacks one."""
        tables: dict[str, TableInfo] = {}
        missing: list[str] = []
        for digest in dict.fromkeys(r for r in header.table_refs if r):
            key = (header.device, digest)
            table = self._tables.get(key)
            if table is not None and (self._forward is not None or table.refused):
                # forwarding needs the table's bytes too, and so does leaving out the series it refuses
                data = self._table_bytes.get(key)
                table = None if data is None else replace(table, data=data)
            if table is None:
                data = await self._store.get_table(header.device, digest)
                if data is not None:
                    table = await asyncio.to_thread(TableInfo.parse, data, digest, self._rules)
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
        if (self._forward is not None or table.refused) and table.data is not None:
            self._table_bytes.put((device, table.digest), table.data)

    def _prepare(
        self, header: BatchHeader, chunks: list[bytes], tables: dict[str, TableInfo]
    ) -> tuple[list[NewChunk], list[bytes], dict[str, bytes]]:
        """On a worker thread: decompress (capped across the whole batch) and prepare every chunk for
        the store (:func:`collector.store.chunks.prepare`: the header and timestamps are read, the
        values are not).

        Also returns the chunk frames with their tables in them (re-compressed where a chunk came by
        reference or had series refused for their labels: the forwarders get what is stored) for
        the forwarders, and, when the agent asks the collector to keep tables (``table_refs``
        present), the tables this instance has not kept yet.
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
                    chunk = prepare(raw, frame, tables[ref], codec, self._rules)
                    if self._forward is not None and not chunk.dropped:  # the forwarders read chunks with their tables
                        data = tables[ref].data
                        assert data is not None  # see _tables_for
                        frame = codec.compress(chunkfmt.join_table(raw, data))
                    self._metrics.table_references.inc()
                else:
                    chunk = prepare(raw, frame, None, codec, self._rules)
                    sent = chunk.sent_table
                    if refs and (header.device, sent.digest) not in self._tables:
                        assert sent.data is not None
                        new_tables[sent.digest] = sent.data
                if chunk.dropped and self._forward is not None:
                    assert chunk.table.data is not None
                    frame = codec.compress(chunkfmt.join_table(codec.decompress(chunk.frame, limit), chunk.table.data))
            except WireError as exc:
                raise WireError(f"chunk {index}: {exc}") from exc
            prepared.append(chunk)
            if chunk.scan.samples:
                frames.append(frame)
        self._metrics.decompressed_bytes.inc(limit - budget)
        found = sum(c.scan.samples + sum(c.dropped.values()) for c in prepared)
        if found != header.samples:
            raise WireError(f"batch header announces {header.samples} samples, its chunks hold {found}")
        return prepared, frames, new_tables
