"""``POST /api/v1/write``: Prometheus remote write 1.0 into the durable buffer.

Answers (DESIGN.md, delivery contract 6: 4xx means "drop it", 5xx means "retry"):
    204  samples committed to the buffer (and only then)
    400  body is not a snappy-compressed WriteRequest
    413  body or its decompressed form over the configured limit
    415  not ``application/x-protobuf`` or an encoding other than snappy
    503  shutting down, overloaded, or the disk refused the write: the sender keeps the data and retries
Samples that cannot be stored (timestamps outside the accepted window, absurd label sets, native
histograms) are dropped one by one and counted in ``backhaul_ingest_dropped_samples_total{reason}``.
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
from backhaul.wire import remote_write as rw
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)

# Bodies above this are decoded on a worker thread so one big request cannot stall the event loop.
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
        time_keeper: TimeKeeper | None = None,
    ) -> None:
        self._staging = staging
        self._time = time_keeper if time_keeper is not None and time_keeper.correcting else None
        self._labels = rw.LabelCache()
        self._observe = observe
        self._ingest = ingest
        self._max_age_ms = int(buffer.max_age.total_seconds() * 1000)
        self._max_future_ms = int(ingest.max_future.total_seconds() * 1000)
        self._metrics = metrics
        self._clock = clock

    def limits(self) -> rw.Limits:
        if self._time is not None:  # the keeper judges the window, by true time
            return rw.Limits(
                max_decompressed_bytes=int(self._ingest.max_decompressed_bytes),
                max_labels_per_series=self._ingest.max_labels_per_series,
                max_label_bytes=self._ingest.max_label_bytes,
            )
        now_ms = int(self._clock() * 1000)
        return rw.Limits(
            max_decompressed_bytes=int(self._ingest.max_decompressed_bytes),
            max_labels_per_series=self._ingest.max_labels_per_series,
            max_label_bytes=self._ingest.max_label_bytes,
            min_timestamp_ms=now_ms - self._max_age_ms,
            max_timestamp_ms=now_ms + self._max_future_ms,
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
        if len(body) > _INLINE_DECODE_BYTES:
            decoded = await asyncio.to_thread(rw.decode, body, self.limits(), self._labels)
        else:
            decoded = rw.decode(body, self.limits(), self._labels)

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
