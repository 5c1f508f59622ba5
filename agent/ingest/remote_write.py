"""``POST /api/v1/write``: Prometheus remote write 1.0 and 2.0 into the durable buffer.

The ``proto=`` parameter of ``Content-Type`` picks the message (``remote_write.negotiate``): none or
``prometheus.WriteRequest`` is 1.0, ``io.prometheus.write.v2.Request`` is 2.0. Float samples and
native histograms (1.0's ``histograms`` field, 2.0's) are stored in the buffer (chunk version 3 for
histograms), metadata per family (``agent/ingest/commit.py``); exemplars are counted, not stored
(``backhaul_ingest_exemplars_total``), created timestamps decoded and dropped. A 2.0 answer carries
``X-Prometheus-Remote-Write-Samples-Written``, ``-Histograms-Written`` and ``-Exemplars-Written``
(always 0) as the spec requires, sent only after the commit.

Answers (DESIGN.md, delivery contract 6: 4xx means "drop it", 5xx means "retry"):
    204  samples committed to the buffer (and only then)
    400  body is not a snappy-compressed WriteRequest (or v2 Request), or breaks the 2.0 spec's
         rules (symbols[0] not empty, a reference out of range, unsorted samples, ...): the reason
    413  body, its decompressed form or its decoded samples over the configured limits (decoded: twice
         ``max_decompressed_bytes``; samples: more than ``buffer.max_pending_samples`` in one request,
         which could never be committed)
    415  not ``application/x-protobuf``, a ``proto=`` it does not know, or an encoding other than snappy
    503  shutting down, overloaded (too much waiting for a commit, or being decoded), or the disk
         refused the write: the sender keeps the data and retries
Samples that cannot be stored (timestamps outside the accepted window, labels that break the rules of
backhaul/labels.py, histograms of more buckets than the limit) are dropped one by one and counted in
``backhaul_ingest_dropped_samples_total{reason}``; the rest of the request is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from agent.buffer.settings import BufferSettings
from agent.buffer.staging import Staging
from agent.clock.keeper import TimeKeeper
from agent.ingest.commit import Committer
from agent.ingest.metrics import IngestMetrics
from agent.ingest.settings import IngestSettings
from backhaul.web import read_body, respond
from backhaul.wire import budget
from backhaul.wire import remote_write as rw
from backhaul.wire import remote_write_v2 as rw2
from backhaul.wire.budget import DecodeBudget
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)

ACCEPTED = frozenset({rw.Message.V1, rw.Message.V2})
# Bodies that decompress to more than this are decoded on a worker thread, so that one big request
# cannot stall the event loop, and only within the decoding budget, so that several cannot add up.
_INLINE_DECODE_BYTES = 256 * 1024


class RemoteWriteReceiver:
    """The remote-write handler and what it needs.

    Args:
        staging: where decoded samples wait for their group commit.
        ingest: size and label limits.
        buffer: for ``max_age`` (older samples would expire at once, so they are refused up front).
        metrics: request and sample counters.
        clock: wall clock in seconds.
        observe: called with each request's decoded samples, before the commit (the alert rules look at them).
        device_label: the label that will name this device downstream ("" none): look-alikes of it
            are refused (backhaul/labels.py).
        time_keeper: with ``clock.correct``, sorts samples by the clock era that stamped them (held,
            corrected) and judges the window by true time instead of ``clock`` (a local Prometheus
            stamps with the same wrong clock).
    """

    def __init__(
        self,
        staging: Staging,
        ingest: IngestSettings,
        buffer: BufferSettings,
        metrics: IngestMetrics,
        clock: Callable[[], float] = time.time,
        observe: Callable[[SeriesMap], None] | None = None,
        device_label: str = "",
        time_keeper: TimeKeeper | None = None,
    ) -> None:
        self._device_label = device_label
        self._time = time_keeper if time_keeper is not None and time_keeper.correcting else None
        self._labels = rw.LabelCache()
        self._labels_v2 = rw2.LabelCache()
        self.committer = Committer(staging, metrics, buffer.max_pending_samples, clock, observe, self._time)
        self.ingest = self._ingest = ingest
        self._max_age_ms = int(buffer.max_age.total_seconds() * 1000)
        self._max_future_ms = int(ingest.max_future.total_seconds() * 1000)
        self._metrics = metrics
        metrics.label_cache.labels("sets").set_function(lambda: len(self._labels))
        metrics.label_cache.labels("pairs").set_function(lambda: self._labels.pairs)
        self._clock = clock
        self.budget = DecodeBudget(
            ingest.total_decoding_bytes(),
            ingest.per_request_decoding_bytes(),
            limit_name="2 x [ingest] max_decompressed_bytes, or max_decoding_bytes",
        )

    def limits(self) -> rw.Limits:
        # With a time keeper the window is judged by true time (in the keeper), not by this clock.
        low, high = -rw.MAX_ABS_TIMESTAMP_MS, rw.MAX_ABS_TIMESTAMP_MS
        if self._time is None:
            now_ms = int(self._clock() * 1000)
            low, high = now_ms - self._max_age_ms, now_ms + self._max_future_ms
        return rw.Limits(
            max_decompressed_bytes=int(self._ingest.max_decompressed_bytes),
            max_labels_per_series=self._ingest.max_labels_per_series,
            max_label_bytes=self._ingest.max_label_bytes,
            min_timestamp_ms=low,
            max_timestamp_ms=high,
            max_decoded_bytes=self.budget.per_request,
            device_label=self._device_label,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await respond(self._handle, request, "remote write")
        self._metrics.requests.labels(str(response.status)).inc()
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        # Unsupported (415) for a Content-Type or proto= not understood: never parsed as something else.
        message = rw.negotiate(request.headers.get("Content-Type"), request.headers.get("Content-Encoding"), ACCEPTED)
        body = await read_body(request, int(self._ingest.max_request_bytes))
        length = rw.snappy_uncompressed_length(body)
        if length > _INLINE_DECODE_BYTES:
            cost = min(budget.remote_write_worst(length), self.budget.per_request)
            async with self.budget.reserve(cost, "remote-write request"):
                decoded = await asyncio.to_thread(self._decode, message, body)
        else:
            decoded = self._decode(message, body)
        await self.committer.commit(decoded, "remote write")
        if message is rw.Message.V1:
            return web.Response(status=204)
        self._metrics.v2_requests.inc()
        return web.Response(
            status=204,
            headers={
                rw2.SAMPLES_WRITTEN: str(decoded.samples),
                rw2.HISTOGRAMS_WRITTEN: str(decoded.histogram_samples),
                rw2.EXEMPLARS_WRITTEN: "0",  # counted, not stored
            },
        )

    def _decode(self, message: rw.Message, body: bytes) -> rw.Decoded:
        if message is rw.Message.V2:
            return rw2.decode(body, self.limits(), self._labels_v2)
        # Exemplars are decoded to be counted (and checked), as 2.0's are.
        return rw.decode(body, self.limits(), self._labels, histograms=True, exemplars=True)
