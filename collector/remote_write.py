"""``POST /api/v1/write`` on the collector: plain Prometheus remote write from a device, with its token.

Remote write 1.0 and 2.0 (``proto=io.prometheus.write.v2.Request``; anything else 415), float samples,
native histograms and metadata per family (committed when new or changed, with samples, as the agent
does), exemplars counted, not stored. A 2.0 answer carries the ``X-Prometheus-Remote-Write-*-Written``
headers the spec requires.

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
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from backhaul.errors import store_trouble
from backhaul.wire import budget
from backhaul.wire import chunk as chunkfmt
from backhaul.wire import remote_write as rw
from backhaul.wire import remote_write_v2 as rw2
from backhaul.wire.chunk import Codec
from backhaul.wire.metadata import FamilyMetadata, MetadataMap
from collector.endpoint import DeviceEndpoint
from collector.forward.spool import Chunks, Payload, RemoteWrite
from collector.store.chunks import NewChunk, prepare

# Bodies that decompress to more than this are decoded on a worker thread (and priced first).
_INLINE_DECODE_BYTES = 256 * 1024
ACCEPTED = frozenset({rw.Message.V1, rw.Message.V2})
_DEVICES_WITH_METADATA = 10_000


class RemoteWriteReceiver(DeviceEndpoint):
    """Args: those of :class:`~collector.endpoint.DeviceEndpoint` (``forward`` is called before the
    store commits)."""

    what = "remote write"
    _by_device: dict[str, FamilyMetadata]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._by_device = {}

    def _answers(self) -> Counter:
        return self._metrics.remote_write_requests

    def _families(self, device: str) -> FamilyMetadata:
        """What ``device``'s metadata is (committed, or waiting for samples); bounded in devices."""
        found = self._by_device.get(device)
        if found is None:
            if len(self._by_device) >= _DEVICES_WITH_METADATA:
                self._by_device.clear()
            found = self._by_device[device] = FamilyMetadata()
        return found

    async def _handle(self, request: web.Request) -> web.Response:
        device = await self._auth.device_of(request)
        # Unsupported (415) for a Content-Type or proto= not understood: never parsed as something else.
        message = rw.negotiate(request.headers.get("Content-Type"), request.headers.get("Content-Encoding"), ACCEPTED)
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
            decoded = _decode(message, body, limits)
            return await self._store_decoded(device, message, body, decoded)
        cost = min(budget.remote_write_worst(length), self._budget.per_request)
        async with self._budget.reserve(cost, "remote-write request"):
            decoded = await asyncio.to_thread(_decode, message, body, limits)
            return await self._store_decoded(device, message, body, decoded)

    async def _store_decoded(self, device: str, message: rw.Message, body: bytes, decoded: rw.Decoded) -> web.Response:
        samples = decoded.samples + decoded.histogram_samples
        now_ms = int(self._clock() * 1000)
        families = self._families(device)
        families.offer(decoded.families, now_ms)
        if samples:
            metadata = families.waiting()
            # a codec per call: zstd objects must not be shared by two worker threads
            forward_frame = self._forward is not None and message is rw.Message.V2
            chunks, frame = await asyncio.to_thread(_chunk, decoded, metadata, Codec(), forward_frame)
            if self._forward is not None:
                # A 1.0 body is forwarded as it came (the forwarders decode it with the same rules);
                # a 2.0 one as the chunk stored, which the forwarders send as 1.0.
                payload: Payload = RemoteWrite(body) if message is rw.Message.V1 else Chunks([frame])
                with store_trouble("forward spool"):
                    await self._forward(device, payload, samples)
            result = await self._store.ingest(device, chunks, now_ms)
            families.committed(metadata, now_ms)
            self._metrics.stored(device, result)
        self._count_dropped(device, decoded.dropped)
        if message is rw.Message.V1:
            return web.Response(status=204)
        written = {
            rw2.SAMPLES_WRITTEN: str(decoded.samples),
            rw2.HISTOGRAMS_WRITTEN: str(decoded.histogram_samples),
            rw2.EXEMPLARS_WRITTEN: "0",  # counted, not stored
        }
        return web.Response(status=204, headers=written)


def _decode(message: rw.Message, body: bytes, limits: rw.Limits) -> rw.Decoded:
    if message is rw.Message.V2:
        return rw2.decode(body, limits)
    return rw.decode(body, limits, histograms=True)


def _chunk(decoded: rw.Decoded, metadata: MetadataMap, codec: Codec, framed: bool) -> tuple[list[NewChunk], bytes]:
    """The request as one chunk for the store, and (``framed``) as a frame with its table in it."""
    raw = chunkfmt.encode(decoded.series, decoded.histograms, metadata)
    return [prepare(raw, b"", None, codec)], codec.compress(raw) if framed else b""
