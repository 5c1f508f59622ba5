"""The uploader: seals batches from the buffer and sends them until the collector acknowledges them.

Rules (DESIGN.md, delivery contract 4):
- A batch is sealed (sequence number assigned, chunks marked) in the database *before* it is sent,
  and re-sent unchanged after any failure or restart, so the collector can drop a repeat by its
  ``(device, buffer_id, seq)``.
- Chunks are deleted only after a 2xx.
- No answer, 5xx, 408 or 429: retry with exponential backoff and jitter, or after ``Retry-After``.
  Data is never given up on for failing to send; only age (``buffer.max_age``) or the budget removes
  it, and both are counted.
- 401/403: the token is wrong; 404: the URL is; keep everything and retry slowly, logging why.
- Any other 4xx: the collector says the batch is malformed. A batch of several chunks is unsealed and
  retried in smaller batches to isolate the bad chunk; a single bad chunk is dropped and counted
  (``backhaul_uplink_rejected_samples_total``), so one bad chunk cannot block the queue forever.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable

from agent.buffer.store import LOSS_KEYS, Batch, BufferStore
from agent.clock.keeper import Sent, TimeKeeper
from agent.uplink.metrics import UplinkMetrics
from agent.uplink.settings import UplinkSettings
from agent.uplink.transport import Transport
from backhaul import __version__
from backhaul.errors import PeerError, StoreError
from backhaul.http import Reply
from backhaul.retry import Backoff, Verdict, retry_after, verdict
from backhaul.wire.batch import BatchHeader

log = logging.getLogger(__name__)


class Uploader:
    """Drains the buffer to the collector.

    Args:
        settings: the ``[uplink]`` settings.
        device_id: this device's id, sent in every batch.
        store: the buffer.
        transport: how batches reach the collector.
        metrics: upload counters.
        clock: wall clock in seconds; rng: jitter source (both replaceable in tests).
        time_keeper: judges the agent's clock by the replies' ``Date`` (None: only the skew gauge).
    """

    def __init__(
        self,
        settings: UplinkSettings,
        device_id: str,
        store: BufferStore,
        transport: Transport,
        metrics: UplinkMetrics,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        time_keeper: TimeKeeper | None = None,
    ) -> None:
        self._settings = settings
        self._device_id = device_id
        self._store = store
        self._transport = transport
        self._metrics = metrics
        self._clock = clock
        self._time = time_keeper
        self._interval = settings.batch_interval.total_seconds()
        self._max_bytes = int(settings.batch_max_bytes)
        self._backoff = Backoff(settings.backoff_min.total_seconds(), settings.backoff_max.total_seconds(), rng)
        self._data = asyncio.Event()
        self._data.set()  # look at the buffer once at start: a backlog may wait from the last run
        self._last_sent = float("-inf")
        self._backlog = True
        self.last_error: str | None = None
        # Agent clock minus the collector's Date header at the last reply (seconds).
        self.clock_skew = 0.0

    def notify_data(self) -> None:
        """Staging calls this after each commit."""
        self._data.set()

    async def run(self) -> None:
        while True:
            try:
                batch = await self._next_batch()
                delay = await self._deliver(batch)
            except StoreError as exc:  # e.g. a full disk while sealing: the data is still there
                delay = self._retry_later(f"buffer: {exc}")
            except Exception:  # a bug must not stop uploads for good: log it loudly and carry on
                log.exception("uploader failed unexpectedly")
                delay = self._retry_later("internal error (see the log)")
            if delay:
                await asyncio.sleep(delay)

    def _retry_later(self, error: str) -> float:
        delay = self._backoff.next()
        self.last_error = error
        log.error("uploader: %s; retrying in %.1f s", error, delay)
        self._backlog = True
        self._data.set()  # look at the buffer again after the delay
        return delay

    async def _next_batch(self) -> Batch:
        while True:
            await self._data.wait()
            # (While the clock keeper narrows a wrong clock's offset, its probes go at once.)
            if not self._backlog and not (self._time is not None and self._time.refining):
                # Let a batch window's worth of data gather before sending.
                wait = self._last_sent + self._interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._data.clear()
            report_losses = await self._store.call(self._store.unsent_loss) > 0
            # While the clock's era waits for its offset, its samples are held: a batch with nothing
            # in it still brings back a Date that settles the era.
            report_losses = report_losses or (self._time is not None and self._time.needs_probe())
            batch = await self._store.call(self._store.claim, self._max_bytes, int(self._clock() * 1000), report_losses)
            if batch is not None:
                return batch
            self._backlog = False

    async def _deliver(self, batch: Batch) -> float:
        """Send ``batch`` once; returns how long to wait before the next attempt."""
        counters = await self._store.call(self._store.counters)
        header = BatchHeader(
            device=self._device_id,
            buffer_id=self._store.buffer_id,
            seq=batch.seq,
            sent_at_ms=batch.sealed_ms,
            samples=batch.samples,
            evicted_samples=counters["evicted_samples"],
            expired_samples=counters["expired_samples"],
            dropped_samples=counters["dropped_samples"] + counters["rejected_samples"],
            corrupt_samples=counters["corrupt_samples"],
            agent_version=__version__,
            # What is still waiting (this batch included), for the collector's fleet page.
            backlog_bytes=self._store.totals.bytes,
            backlog_oldest_ms=self._store.totals.oldest_ts or 0,
            corrected_samples=counters.get("corrected_samples", 0),
        )
        reported_loss = sum(counters[k] for k in LOSS_KEYS)
        if self._time is not None:
            await self._time.straddle()  # a probe times its departure to the collector's second
        self._last_sent = time.monotonic()
        started = time.perf_counter()
        sent = self._time.sending() if self._time is not None else None
        try:
            reply = await self._transport.send(header, batch.chunks)
        except PeerError as exc:
            return self._failed(exc.kind, str(exc), None)
        finally:
            self._metrics.upload_seconds.observe(time.perf_counter() - started)
        self._note_clock(reply, sent)
        if reply.ok:
            await self._store.call(self._store.ack, batch.seq, reported_loss)
            self._metrics.batches.labels("ok").inc()
            self._metrics.uploaded_samples.inc(batch.samples)
            self._metrics.uploaded_bytes.inc(reply.sent_bytes)
            self._metrics.last_success.set(self._clock())
            self._backoff.reset()
            self.last_error = None
            # Half a batch or more waiting, or data older than a batch window (left by an outage),
            # is a backlog: send the next batch at once.
            oldest = await self._store.call(self._store.oldest_unclaimed_ms)
            self._backlog = self._store.totals.bytes >= self._max_bytes // 2 or (
                oldest is not None and self._clock() * 1000 - oldest >= self._interval * 1000
            )
            self._max_bytes = int(self._settings.batch_max_bytes)
            self._data.set()
            return 0.0
        return await self._refused(batch, reply)

    async def _refused(self, batch: Batch, reply: Reply) -> float:
        status = reply.status
        reason = reply.text.strip()[:300]
        found = verdict(status, reply.text)
        if found is Verdict.RETRY:
            return self._failed(f"http_{status}", f"collector answered {status}: {reason}", reply)
        if found is Verdict.MISCONFIGURED:
            self._backoff.slow()
            problem = "has no such endpoint (check uplink.url)" if status == 404 else "refused this device's token"
            return self._failed(f"http_{status}", f"collector {problem} ({status}): {reason}", reply)
        self._metrics.batches.labels("refused").inc()
        try:
            if len(batch.chunks) > 1:
                await self._store.call(self._store.release, batch.seq)
                self._max_bytes = max(1, sum(len(c) for c in batch.chunks) // 2)
                log.warning(
                    "collector refused batch %d (%d): %s; retrying its chunks in smaller batches",
                    batch.seq,
                    status,
                    reason,
                )
            else:
                lost = await self._store.call(self._store.reject, batch.seq)
                self._metrics.rejected.inc(lost)
                log.error(
                    "collector refused batch %d (%d): %s; dropped its %d samples", batch.seq, status, reason, lost
                )
        except StoreError as exc:
            log.error("could not update the buffer after a refused batch: %s", exc)
            return self._backoff.next()
        self._backlog = True
        self._data.set()
        return 0.0

    def _failed(self, reason: str, detail: str, reply: Reply | None) -> float:
        self._metrics.batches.labels("failed").inc()
        self._metrics.upload_failures.labels(reason).inc()
        delay = self._backoff.next(retry_after(reply.headers, self._clock()) if reply else None)
        self.last_error = detail
        log.warning("upload failed (%s); next attempt in %.1f s", detail, delay)
        self._backlog = True
        self._data.set()  # the sealed batch is still there: retry it after the delay
        return delay

    def _note_clock(self, reply: Reply, sent: Sent | None = None) -> None:
        server: float | None = None
        date = reply.headers.get("Date")
        if date:
            try:
                server = email.utils.parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                server = None
        if self._time is not None and sent is not None:
            self._time.replied(sent, server, reply.ok)
        if server is None:
            return
        self.clock_skew = self._clock() - server
        self._metrics.clock_skew.set(self.clock_skew)
