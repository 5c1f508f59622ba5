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

What to send when — windows, budgets, the cap, fresh data first, summaries — is the link's drain
policy (:mod:`agent.uplink.policy`); the uploader does what it says. A request the link does not
admit (a window closed, the budget spent meanwhile) is not a failure: it waits without backoff.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping

from agent.buffer.store import LOSS_KEYS, Batch, BufferStore
from agent.clock.keeper import Sent, TimeKeeper
from agent.uplink.link import Link
from agent.uplink.links import Links
from agent.uplink.metrics import UplinkMetrics
from agent.uplink.policy import RATE_WINDOW_MS, Backlog, DrainPolicy, Step
from agent.uplink.settings import UplinkSettings
from agent.uplink.transport import Transport
from backhaul import __version__
from backhaul.errors import PeerError, StoreError
from backhaul.http import Reply
from backhaul.retry import Backoff, Verdict, keep_trying, retry_after, verdict
from backhaul.wire.batch import BatchHeader

log = logging.getLogger(__name__)

# A block (window, budget) is looked at again at least this often: the clock may step.
BLOCKED_RECHECK = 60.0


class Uploader:
    """Drains the buffer to the collector.

    Args:
        settings: the ``[uplink]`` settings.
        device_id: this device's id, sent in every batch.
        store: the buffer.
        transport: how batches reach the collector: one per link (by name), or one for every link.
        metrics: upload counters.
        clock: wall clock in seconds; rng: jitter source (both replaceable in tests).
        link: the links (their caps, budgets and windows), or one link (default: built from
            ``settings``, unpersisted). Each batch goes over the first that may carry it.
        time_keeper: judges the agent's clock by the replies' ``Date`` (None: only the skew gauge).
    """

    def __init__(
        self,
        settings: UplinkSettings,
        device_id: str,
        store: BufferStore,
        transport: Transport | Mapping[str, Transport],
        metrics: UplinkMetrics,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        link: Link | Links | None = None,
        time_keeper: TimeKeeper | None = None,
    ) -> None:
        self._settings = settings
        self._device_id = device_id
        self._store = store
        self._transports = dict(transport) if isinstance(transport, Mapping) else {}
        self._one_transport = None if isinstance(transport, Mapping) else transport
        self._metrics = metrics
        self._clock = clock
        if link is None:
            link = Links(settings, clock)
        self.links = link if isinstance(link, Links) else Links.of(link)
        self.links.on_switch = lambda was, to, _why: metrics.switched(was.name, to.name)
        self.policy = DrainPolicy(settings, self.links)
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
        # Why bulk uploads are held now ("window", "budget"), None while they may go.
        self.blocked: str | None = None
        self._reported_block = ""  # the last block, told to the collector with the next batch
        self.newest_acked_ms = 0  # the newest sample timestamp the collector acknowledged
        metrics.watch_links(self.links, lambda: self.blocked, lambda: self.newest_acked_ms)

    @property
    def link(self) -> Link:
        """The link in use (or last used)."""
        return self.links.active

    @property
    def _transport(self) -> Transport:
        found = self._transports.get(self.link.name, self._one_transport)
        if found is None:  # a link without a transport of its own: a bug in the wiring
            raise RuntimeError(f"uplink: no transport for link {self.link.name!r}")
        return found

    def add_transport(self, name: str, transport: Transport) -> None:
        """A link added by a reload: batches over it go through ``transport``."""
        self._transports[name] = transport

    def transports(self) -> list[Transport]:
        """Every transport (to close them at stop)."""
        return [*self._transports.values(), *([self._one_transport] if self._one_transport else [])]

    def reconfigure(self, settings: UplinkSettings) -> None:
        """A reload: the batch interval and the backoff bounds from now on (the URL, the protocol and
        the batch size need a restart: a sealed batch is re-sent unchanged, to the same place)."""
        self._settings = settings
        self._interval = settings.batch_interval.total_seconds()
        self._backoff.minimum = settings.backoff_min.total_seconds()
        self._backoff.maximum = settings.backoff_max.total_seconds()
        self._data.set()

    async def reconfigure_links(self, settings: UplinkSettings, make: Callable[[Link], Transport]) -> None:
        """A reload of the links (:meth:`Links.reconfigure`): a new link gets its transport from ``make``."""
        self.links.on_added = lambda link: self.add_transport(link.name, make(link))
        await self.links.reconfigure(settings)
        self._metrics.watch_links(self.links, lambda: self.blocked, lambda: self.newest_acked_ms)
        self._data.set()

    def notify_data(self) -> None:
        """Staging calls this after each commit."""
        self._data.set()

    async def run(self) -> None:
        await keep_trying(self._step, self._retry_later, "uploader", "buffer")

    async def _step(self) -> float:
        await self._gathered()
        return await self._once()

    def _retry_later(self, error: str) -> float:
        delay = self._backoff.next()
        self.last_error = error
        log.error("uploader: %s; retrying in %.1f s", error, delay)
        self._backlog = True
        self._data.set()  # look at the buffer again after the delay
        return delay

    async def _gathered(self) -> None:
        """Until there is something to look at; without a backlog, a batch window's worth of data."""
        await self._data.wait()
        # (While the clock keeper narrows a wrong clock's offset, its probes go at once.)
        if not self._backlog and not (self._time is not None and self._time.refining):
            wait = self._last_sent + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self._data.clear()

    def _hold(self, reason: str | None, seconds: float) -> float:
        if reason is not None and reason != self.blocked:
            log.info("uplink: bulk uploads held (%s) for %.0f s", reason, seconds)
        self.blocked = reason
        if reason:
            self._reported_block = reason
        self.policy.interrupted()
        self._data.set()  # look again after the pause
        return min(max(seconds, 0.05), BLOCKED_RECHECK)

    async def _once(self) -> float:
        """One step of the policy: returns how long to wait before the next."""
        store = self._store
        now = self._clock()
        unclaimed_bytes, unclaimed_samples, _ = await store.call(store.unclaimed)
        sealed = await store.call(store.sealed_bytes)
        recent, series = await store.call(store.recent, int(now * 1000) - RATE_WINDOW_MS)
        step = self.policy.next(now, Backlog(sealed, unclaimed_bytes, unclaimed_samples, recent, series))
        if step.kind == "wait":
            return self._hold(step.reason, step.seconds)
        if self.blocked is not None:
            log.info("uplink: bulk uploads may go again (was: %s)", self.blocked)
        self.blocked = None
        batch = await self._next_batch(step)
        if batch is None:
            self._backlog = False
            if step.summary and not step.full:  # only summaries fit: the next one at the next interval
                interval = self.link.settings.summary_interval.total_seconds()
                return self._hold("budget", interval - self._clock() % interval + 1)
            if step.strict and unclaimed_bytes:  # data waits, but no part of it fits what the budget has left
                return self._hold("budget", self.link.lifts_in("budget"))
            return 0.0
        return await self._deliver(batch)

    async def _next_batch(self, step: Step) -> Batch | None:
        store, now_ms = self._store, int(self._clock() * 1000)
        if step.summary:
            interval_ms = int(self.link.settings.summary_interval.total_seconds() * 1000)
            batch = await store.call(store.summarise, interval_ms, now_ms)
            if batch is not None:
                return batch
        if not step.full:
            return None
        report_losses = await store.call(store.unsent_loss) > 0
        # While the clock's era waits for its offset, its samples are held: a batch with nothing
        # in it still brings back a Date that settles the era.
        report_losses = report_losses or (self._time is not None and self._time.needs_probe())
        limit = min(step.max_bytes, self._max_bytes)
        batch = await store.call(
            store.claim, limit, now_ms, report_losses, step.newest_first, step.since_ms, step.strict
        )
        if batch is None and step.since_ms is not None:  # nothing that fresh: the newest there is
            batch = await store.call(store.claim, limit, now_ms, report_losses, step.newest_first, None, step.strict)
        return batch

    def _header(self, batch: Batch, counters: dict[str, int]) -> BatchHeader:
        return BatchHeader(
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
            summary_ms=batch.summary_ms,
            uplink=self.link.report(self._reported_block),
            corrected_samples=counters.get("corrected_samples", 0),
        )

    async def _deliver(self, batch: Batch) -> float:
        """Send ``batch`` once; returns how long to wait before the next attempt."""
        counters = await self._store.call(self._store.counters)
        header = self._header(batch, counters)
        reported_loss = sum(counters[k] for k in LOSS_KEYS)
        if self._time is not None:
            await self._time.straddle()  # a probe times its departure to the collector's second
        self._last_sent = time.monotonic()
        started = time.perf_counter()
        wire_before = self.link.wire_bytes
        sent = self._time.sending() if self._time is not None else None
        try:
            reply = await self._transport.send(header, batch.chunks)
        except PeerError as exc:
            if exc.kind == "blocked":  # the link refused it before a byte went: not a failure
                return self._hold(exc.detail, self.link.lifts_in(exc.detail))
            await self.link.flush()
            return self._failed(exc.kind, str(exc), None)
        finally:
            self._metrics.upload_seconds.observe(time.perf_counter() - started)
            self._metrics.wire_bytes.inc(self.link.wire_bytes - wire_before)
        self._reported_block = ""
        self._note_clock(reply, sent)
        if reply.ok:
            await self._acknowledged(batch, reply, reported_loss, self.link.wire_bytes - wire_before)
            return 0.0
        await self.link.flush()
        return await self._refused(batch, reply)

    async def _acknowledged(self, batch: Batch, reply: Reply, reported_loss: int, wire: int) -> None:
        # Every link's count so far (the one before a switch, the proxy's bytes), in the same transaction.
        usage = {link: link.budget.unsaved() for link in self.links}
        try:
            rows = [row for saved in usage.values() for row in saved]
            await self._store.call(self._store.ack, batch.seq, reported_loss, rows)
        except StoreError:
            for link, saved in usage.items():
                link.budget.unsave(saved)
            raise
        log.debug(
            "batch %d acknowledged: %d samples%s in %d chunks, %d body bytes, %d on the wire",
            batch.seq,
            batch.samples,
            " (summary)" if batch.summary_ms else "",
            len(batch.chunks),
            reply.sent_bytes,
            wire,
        )
        m = self._metrics
        m.batches.labels("ok").inc()
        m.uploaded_samples.inc(batch.samples)
        m.uploaded_bytes.inc(reply.sent_bytes)
        m.last_success.set(self._clock())
        if batch.summary_ms:
            m.summary_samples.inc(batch.samples)
        self.newest_acked_ms = max(self.newest_acked_ms, batch.max_ts)
        self.policy.sent(batch.samples, wire, bool(batch.summary_ms), (batch.min_ts, batch.max_ts))
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
        if reply is None and self.link.down() is not None and self.links.select(0)[0] is not None:
            # The link went down under the request and another may carry it: try that one at once
            # rather than back off for a failure of the link that is gone.
            self._backoff.reset()
            delay = 0.0
        self.last_error = detail
        log.warning("upload failed (%s); next attempt in %.1f s", detail, delay)
        self._backlog = True
        self.policy.interrupted()
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
