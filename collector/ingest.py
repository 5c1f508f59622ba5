"""``POST /api/v1/batches``: a device's batch in, stored once, acknowledged only when durable.

200  stored (or already stored: ``"duplicate": true``); the agent may delete the batch
400  not a valid batch or chunk (reason in the body)
401  no or unknown bearer token;  403  the token belongs to another device
413  body, or what it decompresses to, over the limit
415  wrong Content-Type
503  the store cannot write right now (disk full, locked): the agent retries later
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter

from backhaul.sqlite import StoreError
from backhaul.wire import TooLarge, WireError
from backhaul.wire import batch as batchfmt
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, merge_into, sample_count
from collector.auth import AuthError, DeviceAuth
from collector.endpoint import DeviceEndpoint
from collector.forward.spool import Kind
from collector.store import IngestResult


class BatchReceiver(DeviceEndpoint):
    """Args: settings, store, metrics and a wall clock (seconds)."""

    what = "batch"
    # Set when forwarding is configured: queues a batch durably for every target *before* the store
    # commits it (docs/forwarding.md: a crash in between can then only forward twice, never lose).
    forward: Callable[[str, Kind, bytes, int], Awaitable[None]] | None = None

    def _answers(self) -> Counter:
        return self._metrics.requests

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            device = await self._auth.device_for(request.headers.get("Authorization"))
        except AuthError as exc:
            return self._error(exc.status, str(exc), {"WWW-Authenticate": "Bearer"})
        if request.content_type != batchfmt.CONTENT_TYPE:
            return self._error(415, f"Content-Type must be {batchfmt.CONTENT_TYPE}, not {request.content_type!r}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, f"body exceeds the limit of {int(self._settings.limits.max_request_bytes)} bytes")
        self._metrics.body_bytes.inc(len(body))
        try:
            header, chunks = batchfmt.decode(body)
            DeviceAuth.check_claim(device, header.device)
        except WireError as exc:
            return self._error(400, str(exc))
        except AuthError as exc:
            return self._error(exc.status, str(exc))

        store = self._store
        if await store.seen(header.device, header.buffer_id, header.seq):
            self._metrics.batches.labels("duplicate").inc()
            return web.json_response({"stored": True, "duplicate": True, "seq": header.seq})
        started = time.perf_counter()
        try:
            series = await asyncio.to_thread(self._decode_chunks, header, chunks)
        except TooLarge as exc:
            return self._error(413, str(exc))
        except WireError as exc:
            self._metrics.batches.labels("malformed").inc()
            return self._error(400, str(exc))
        if self.forward is not None:
            try:
                await self.forward(header.device, "batch", body, header.samples)
            except StoreError as exc:
                return self._error(503, f"forward spool: {exc}", {"Retry-After": "10"})
        try:
            result: IngestResult = await store.ingest(
                header.device, series, self._settings.device_label, int(self._clock() * 1000), header
            )
        except StoreError as exc:
            return self._error(503 if exc.transient else 500, str(exc), {"Retry-After": "10"})
        self._metrics.ingest_seconds.observe(time.perf_counter() - started)
        if result.duplicate_batch:
            self._metrics.batches.labels("duplicate").inc()
        else:
            self._metrics.batches.labels("stored").inc()
            self._metrics.samples.inc(result.samples)
            self._metrics.duplicate_samples.inc(result.duplicate_samples)
        return web.json_response(
            {"stored": True, "duplicate": result.duplicate_batch, "seq": header.seq, "samples": result.samples}
        )

    def _decode_chunks(self, header: BatchHeader, chunks: list[bytes]) -> SeriesMap:
        """On a worker thread: decompress (capped across the whole batch) and decode every chunk."""
        budget = int(self._settings.limits.max_decompressed_bytes)
        # A codec per call: zstd (de)compressor objects must not be used by two threads at once,
        # and concurrent batches are decoded on different worker threads.
        codec = Codec()
        series: SeriesMap = {}
        for index, frame in enumerate(chunks):
            raw = codec.decompress(frame, budget)
            budget -= len(raw)
            try:
                merge_into(series, chunkfmt.decode(raw))
            except WireError as exc:
                raise WireError(f"chunk {index}: {exc}") from exc
        self._metrics.decompressed_bytes.inc(int(self._settings.limits.max_decompressed_bytes) - budget)
        found = sample_count(series)
        if found != header.samples:
            raise WireError(f"batch header announces {header.samples} samples, its chunks hold {found}")
        return series
