"""``POST /api/v1/write`` on the collector: plain Prometheus remote write from a device, with its token.

For senders that are not a backhaul agent (a Prometheus or vmagent on a well-connected site). Answers
204 once stored; 400/401/413/415 for bad input; 503 when the store cannot write (the sender retries).
The samples are encoded once into a chunk and stored like a batch's (collector/store/chunks.py). A
retried request is harmless: its samples are recognised as stored already (counted as duplicates,
collector/store/overlap.py), and a chunk of nothing but duplicates is not stored again.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import Counter

from backhaul.errors import InputError, store_trouble
from backhaul.wire import remote_write as rw
from backhaul.wire.chunk import Codec
from collector.endpoint import DeviceEndpoint
from collector.forward.spool import RemoteWrite
from collector.store.chunks import from_series


class RemoteWriteReceiver(DeviceEndpoint):
    """Args: those of :class:`~collector.endpoint.DeviceEndpoint` (``forward`` is called before the
    store commits)."""

    what = "remote write"

    def _answers(self) -> Counter:
        return self._metrics.remote_write_requests

    async def _handle(self, request: web.Request) -> web.Response:
        device = await self._auth.device_for(request.headers.get("Authorization"))
        problem = rw.header_problem(request.headers.get("Content-Type"), request.headers.get("Content-Encoding"))
        if problem:
            raise InputError(problem, 415)
        body = await self._read(request)
        limits = rw.Limits(max_decompressed_bytes=int(self._settings.limits.max_decompressed_bytes))
        decoded = rw.decode(body, limits)
        if decoded.samples:
            if self._forward is not None:
                with store_trouble("forward spool"):
                    await self._forward(device, RemoteWrite(body), decoded.samples)
            # a codec per call: zstd objects must not be shared by two worker threads
            chunks = await asyncio.to_thread(from_series, decoded.series, Codec())
            result = await self._store.ingest(device, chunks, int(self._clock() * 1000))
            self._metrics.samples.inc(result.samples)
            self._metrics.duplicate_samples.inc(result.duplicate_samples)
        return web.Response(status=204)
