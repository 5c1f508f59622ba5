"""``POST /api/v1/write`` on the collector: plain Prometheus remote write from a device, with its token.

For senders that are not a backhaul agent (a Prometheus or vmagent on a well-connected site). Answers
204 once stored; 400/401/413/415 for bad input; 503 when the store cannot write (the sender retries).
The samples are encoded once into a chunk and stored like a batch's (collector/store/chunks.py). A
retried request is harmless: its samples are recognised as stored already (counted as duplicates,
collector/store/overlap.py), and a chunk of nothing but duplicates is not stored again.
A series whose labels break the rules (backhaul/labels.py) is dropped and counted per device and reason
(``backhaul_collector_dropped_samples_total``); the rest of the request is stored.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import Counter

from backhaul.errors import InputError, store_trouble
from backhaul.wire import budget
from backhaul.wire import remote_write as rw
from backhaul.wire.chunk import Codec
from collector.endpoint import DeviceEndpoint
from collector.forward.spool import RemoteWrite
from collector.store.chunks import from_series

# Bodies that decompress to more than this are decoded on a worker thread (and priced first).
_INLINE_DECODE_BYTES = 256 * 1024


class RemoteWriteReceiver(DeviceEndpoint):
    """Args: those of :class:`~collector.endpoint.DeviceEndpoint` (``forward`` is called before the
    store commits)."""

    what = "remote write"

    def _answers(self) -> Counter:
        return self._metrics.remote_write_requests

    async def _handle(self, request: web.Request) -> web.Response:
        device = await self._auth.device_of(request)
        problem = rw.header_problem(request.headers.get("Content-Type"), request.headers.get("Content-Encoding"))
        if problem:
            raise InputError(problem, 415)
        body = await self._read(request)
        s = self._settings.limits
        limits = rw.Limits(
            max_decompressed_bytes=int(s.max_decompressed_bytes),
            max_labels_per_series=s.max_labels_per_series,
            max_label_bytes=s.max_label_bytes,
            device_label=self._settings.device_label,
            max_decoded_bytes=self._budget.per_request,
        )
        length = rw.snappy_uncompressed_length(body)
        if length <= _INLINE_DECODE_BYTES:
            decoded = rw.decode(body, limits)
            return await self._store_decoded(device, body, decoded)
        cost = min(budget.remote_write_worst(length), self._budget.per_request)
        async with self._budget.reserve(cost, "remote-write request"):
            decoded = await asyncio.to_thread(rw.decode, body, limits)
            return await self._store_decoded(device, body, decoded)

    async def _store_decoded(self, device: str, body: bytes, decoded: rw.Decoded) -> web.Response:
        if decoded.samples:
            if self._forward is not None:
                # The forwarders decode the body again, with the same rules: refused series stay out.
                with store_trouble("forward spool"):
                    await self._forward(device, RemoteWrite(body), decoded.samples)
            # a codec per call: zstd objects must not be shared by two worker threads
            chunks = await asyncio.to_thread(from_series, decoded.series, Codec())
            result = await self._store.ingest(device, chunks, int(self._clock() * 1000))
            self._metrics.samples.inc(result.samples)
            self._metrics.duplicate_samples.inc(result.duplicate_samples)
        self._count_dropped(device, decoded.dropped)
        return web.Response(status=204)
