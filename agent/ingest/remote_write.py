"""``POST /api/v1/write``: Prometheus remote write 1.0 into the durable buffer.

Answers (DESIGN.md, delivery contract 6: 4xx means "drop it", 5xx means "retry"):
    204  samples committed to the buffer (and only then)
    400  body is not a snappy-compressed WriteRequest
    413  body, its decompressed form or its decoded samples over the configured limits (decoded: twice
         ``max_decompressed_bytes``; samples: more than ``buffer.max_pending_samples`` in one request,
         which could never be committed)
    415  not ``application/x-protobuf`` or an encoding other than snappy
    503  shutting down, overloaded (too much waiting for a commit, or being decoded), or the disk
         refused the write: the sender keeps the data and retries
Samples that cannot be stored (timestamps outside the accepted window, labels that break the rules of
backhaul/labels.py, native histograms) are dropped one by one and counted in
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
from agent.ingest.metrics import IngestMetrics
from agent.ingest.settings import IngestSettings
from backhaul.errors import InputError
from backhaul.web import respond
from backhaul.wire import budget
from backhaul.wire import remote_write as rw
from backhaul.wire.budget import DecodeBudget
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)

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
        self._staging = staging
        self._device_label = device_label
        self._time = time_keeper if time_keeper is not None and time_keeper.correcting else None
        self._labels = rw.LabelCache()
        self._observe = observe
        self._ingest = ingest
        self._max_age_ms = int(buffer.max_age.total_seconds() * 1000)
        self._max_future_ms = int(ingest.max_future.total_seconds() * 1000)
        self._metrics = metrics
        metrics.label_cache.labels("sets").set_function(lambda: len(self._labels))
        metrics.label_cache.labels("pairs").set_function(lambda: self._labels.pairs)
        self._clock = clock
        self._max_pending = buffer.max_pending_samples
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
        problem = rw.header_problem(request.headers.get("Content-Type"), request.headers.get("Content-Encoding"))
        if problem:
            raise InputError(problem, 415)
        limit = int(self._ingest.max_request_bytes)
        if request.content_length is not None and request.content_length > limit:
            raise InputError(f"request body of {request.content_length} bytes exceeds the limit of {limit}", 413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise InputError(f"request body exceeds the limit of {limit} bytes", 413) from None
        length = rw.snappy_uncompressed_length(body)
        if length > _INLINE_DECODE_BYTES:
            cost = min(budget.remote_write_worst(length), self.budget.per_request)
            async with self.budget.reserve(cost, "remote-write request"):
                decoded = await asyncio.to_thread(rw.decode, body, self.limits(), self._labels)
        else:
            decoded = rw.decode(body, self.limits(), self._labels)
        if decoded.samples > self._max_pending:
            raise InputError(
                f"one request of {decoded.samples} samples can never be committed: buffer.max_pending_samples"
                f" is {self._max_pending}; send smaller requests",
                413,
            )

        # The rules see the samples as stamped (by the clock they judge them by), held ones too.
        seen, seen_samples = decoded.series, decoded.samples
        done = None
        if self._time is not None:
            done = await self._time.split(decoded.series)
            decoded.series, decoded.samples = done.ready, done.samples
            for reason, count in done.dropped.items():
                decoded.drop(reason, count)
        dropped = sum(decoded.dropped.values())
        if self._observe is not None and seen_samples:
            # Before the commit: an alert must not wait for a slow or failing buffer (a full disk is
            # exactly when it matters). A sample refused below and re-sent is merely seen twice.
            try:
                self._observe(seen)
            except Exception:  # a rule bug must never cost the samples (as on the scrape path)
                log.exception("alert rules failed on a remote-write request")
        if decoded.samples or dropped:
            await self._staging.submit(decoded.series, decoded.samples, dropped, done.held if done else None)
        if self._time is not None and done is not None:
            self._time.committed(done)
        # Counted once the request is answered 2xx, so that a sender's retry does not count twice.
        self._metrics.metadata_received.inc(decoded.metadata)
        for reason, count in decoded.dropped.items():
            self._metrics.samples_dropped.labels(reason).inc(count)
        return web.Response(status=204)
