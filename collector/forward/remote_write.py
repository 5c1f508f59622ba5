"""Forwarding to one remote-write target: a durable spool and one sender task.

What the collector stores is enqueued here first (see :meth:`Forwarder.enqueue` and
docs/forwarding.md for why *before* the store's commit). The sender takes the oldest entries (small
ones together, up to ``GROUP_SAMPLES``) and sends them with the shared remote-write sender
(:mod:`backhaul.remote_write_sender`: requests of at most ``max_samples_per_request`` samples, in order,
resuming at the first one not acknowledged). This module's policy:

- 2xx: next request; once all requests are acknowledged the entries are deleted.
- no answer, timeout, 408, 429, 5xx: retry the same request after a backoff with jitter, or after
  ``Retry-After``. Nothing is given up on for failing to send.
- 401, 403, 404 (or VictoriaMetrics' 400 "unsupported path"): the target is misconfigured (token,
  URL): keep everything, retry slowly, log why.
- any other 4xx: the target refuses these samples for good. Prometheus answers 400 "out of bounds"
  for samples older than its head block (backfill after an outage) and rolls back the whole request.
  The samples are counted in ``backhaul_collector_forward_rejected_samples_total{target,reason}``,
  logged once per group of entries with an explanation, and passed over: the collector's store keeps them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from backhaul import __version__
from backhaul.remote_write_sender import Answer, Outbox, RemoteWriteSender, Request, chunk_contents
from backhaul.retry import Backoff, Verdict, keep_trying, retry_after
from backhaul.wire import WireError
from backhaul.wire import remote_write as rw
from backhaul.wire.chunk import Contents
from collector.forward.encode import ChunkEncoder
from collector.forward.metrics import ForwardMetrics
from collector.forward.settings import ForwardTarget
from collector.forward.spool import Chunks, Entry, Payload, RemoteWrite, Spool

log = logging.getLogger(__name__)

# Small entries (one agent batch each) are sent together up to this many samples: one pass of
# requests and one spool transaction for many batches. Bounds the memory of one pass too.
GROUP_SAMPLES = 100_000


class Forwarder:
    """Forwards every enqueued entry to one target, in order, until acknowledged.

    Args:
        target: the target's settings.
        spool: its durable queue (opened by :meth:`start`).
        metrics: forwarding metrics shared by all targets.
        device_label: the label the collector adds to every series (``device_id``).
        max_decompressed_bytes: cap for decoding an entry (the ingest path already checked it).
        clock: wall clock in seconds; rng: jitter source.
    """

    def __init__(
        self,
        target: ForwardTarget,
        spool: Spool,
        metrics: ForwardMetrics,
        device_label: str,
        max_decompressed_bytes: int,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.target = target
        self.name = target.name
        self.spool = spool
        self._metrics = metrics
        self._limit = max_decompressed_bytes
        self._clock = clock
        self._backoff = Backoff(target.backoff_min.total_seconds(), target.backoff_max.total_seconds(), rng)
        self._device_label = device_label
        # Built (and its files checked) now; reloaded by the collector with its listener's (collector/app.py).
        self.tls = target.client_tls(f"forward {target.name}")
        self._sender = self._new_sender(target)
        self._retired: list[RemoteWriteSender] = []  # replaced by a reload, closed at stop
        self._encoder = ChunkEncoder(device_label, target.max_samples_per_request)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self._last_refusal = ""
        # The group of entries being sent, its requests and how many were acknowledged, and what the
        # target refused in it so far (logged once the group is done).
        self._pending: list[Entry] | None = None
        self._outbox: Outbox | None = None
        self._refused: dict[str, int] = {}

    def retarget(self, target: ForwardTarget) -> None:
        """A reload: the target's URL, token, headers, timeout and backoff for the next requests (a
        request in flight finishes on the old ones; the spool and its progress stay)."""
        self.target = target
        self._backoff.minimum = target.backoff_min.total_seconds()
        self._backoff.maximum = target.backoff_max.total_seconds()
        self._retired.append(self._sender)
        self._sender = self._new_sender(target)
        self._encoder = ChunkEncoder(self._device_label, target.max_samples_per_request)

    def _new_sender(self, target: ForwardTarget) -> RemoteWriteSender:
        token = target.bearer_token.get_secret_value() if target.bearer_token is not None else ""
        return RemoteWriteSender(
            str(target.url),
            target.timeout.total_seconds(),
            f"backhaul-collector/{__version__}",
            token,
            target.headers,
            self._device_label,
            target.max_samples_per_request,
            self.tls,
            native_histograms=target.native_histograms,
        )

    async def start(self) -> None:
        await self.spool.call(self.spool.open)
        self._task = asyncio.create_task(self._run(), name=f"forward-{self.name}")

    async def stop(self) -> None:
        """Stop sending (an entry half sent stays queued with its progress), close the spool."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for sender in [*self._retired, self._sender]:
            await sender.close()
        await self.spool.db.aclose()

    async def enqueue(self, device: str, payload: Payload, samples: int) -> None:
        """Durably queue what ``device`` sent; raises StoreError when the spool cannot write."""
        if not samples:  # a batch that only reports losses: nothing to forward
            return
        dropped = await self.spool.call(self.spool.add, device, payload, samples, int(self._clock() * 1000))
        if dropped:
            self._metrics.dropped.labels(self.name, "spool_full").inc(dropped)
            log.error(
                "forward %s: spool over %d bytes; dropped the oldest %d unsent samples (the store keeps them)",
                self.name,
                self.spool.max_bytes,
                dropped,
            )
        self._wake.set()

    async def _run(self) -> None:
        await keep_trying(self._step, self._retry_later, f"forward {self.name}", "spool")

    async def _step(self) -> float:
        # A group that failed is retried as it was, not re-taken with newer entries, so that no
        # request is re-sent (and no refusal counted twice) because the group grew.
        entries = self._pending or await self.spool.call(self.spool.take, GROUP_SAMPLES)
        if not entries:
            await self._wake.wait()
            self._wake.clear()
            return 0.0
        return await self._forward(entries)

    def _retry_later(self, error: str) -> float:
        delay = self._backoff.next()
        self.last_error = error
        log.error("forward %s: %s; retrying in %.1f s", self.name, error, delay)
        return delay

    async def _forward(self, entries: list[Entry]) -> float:
        """Send what is left of ``entries`` (the oldest in the spool, together); returns how long to
        wait before the next attempt (0: all sent)."""
        # Where to resume: a lone entry keeps its progress in the spool (it survives a restart);
        # a group of small ones only in memory, and is sent whole again after a restart.
        single = len(entries) == 1
        outbox = self._outbox
        if self._pending is not entries or outbox is None:
            try:
                requests = await asyncio.to_thread(self._requests, entries)
            except WireError as exc:  # checked at ingest, so only a bug or a damaged spool gets here
                ids = [e.id for e in entries]
                log.error("forward %s: entries %s cannot be decoded (%s); dropping them", self.name, ids, exc)
                self._metrics.dropped.labels(self.name, "undecodable").inc(sum(e.samples for e in entries))
                await self.spool.call(self.spool.remove, *entries)
                self._pending = self._outbox = None
                return 0.0
            outbox = Outbox(tuple(e.id for e in entries), requests, entries[0].done if single else 0)
            self._pending, self._outbox, self._refused = entries, outbox, {}

        async def noted(answer: Answer) -> None:
            self._metrics.request_seconds.labels(self.name).observe(answer.seconds)
            if answer.verdict is Verdict.OK:
                self._sent(answer.request)
            elif answer.verdict is Verdict.REFUSED:
                self._metrics.rejected.labels(self.name, answer.kind).inc(answer.request.samples)
                self._refused[answer.kind] = self._refused.get(answer.kind, 0) + answer.request.samples
                assert answer.reply is not None  # a refusal is an answer
                self._last_refusal = f"{answer.reply.status} {answer.reply.text.strip()[:300]}"
            else:
                return
            if single and not outbox.finished:
                await self.spool.call(self.spool.progress, entries[0].id, outbox.done)

        stopped = await self._sender.send(outbox, pass_over_refused=True, on_answer=noted)
        if not outbox.finished:
            assert stopped is not None
            return self._failed(stopped)
        await self.spool.call(self.spool.remove, *entries)
        refused, self._pending, self._outbox, self._refused = self._refused, None, None, {}
        if refused:
            self._explain(entries, refused)
        return 0.0

    def _requests(self, entries: list[Entry]) -> list[Request]:
        """On a worker thread: the entries as remote-write requests (agents' chunks written directly,
        collector/forward/encode.py, unless they hold what only the general path encodes: native
        histograms, left out and counted for a target that does not take them, and metadata)."""
        payloads = [(e.device, e.payload()) for e in entries]
        chunks = [(device, p.frames) for device, p in payloads if isinstance(p, Chunks)]
        if len(chunks) == len(payloads):
            direct = self._encoder.encode(chunks, self._limit)
            if direct is not None:
                return direct
        parts = [(device, self._contents(p)) for device, p in payloads]
        left_out = self._sender.left_out(c for _, c in parts)
        if left_out:
            self._metrics.dropped.labels(self.name, "native_histogram").inc(left_out)
        return self._sender.requests(parts)

    def _contents(self, payload: Payload) -> Contents:
        if isinstance(payload, RemoteWrite):
            decoded = rw.decode(payload.body, rw.Limits(max_decompressed_bytes=self._limit), histograms=True)
            return Contents(decoded.series, decoded.histograms, decoded.families)
        return chunk_contents(payload.frames, self._limit)

    def _sent(self, request: Request) -> None:
        self._metrics.sent_samples.labels(self.name).inc(request.samples)
        self._metrics.sent_requests.labels(self.name).inc()
        self._metrics.sent_bytes.labels(self.name).inc(len(request.body))
        self._backoff.reset()
        self.last_error = None

    def _failed(self, answer: Answer) -> float:
        """A request to retry (no answer, or the target is busy or misconfigured): how long to wait."""
        self._metrics.failures.labels(self.name, answer.kind).inc()
        asked = None
        detail = answer.detail
        if answer.verdict is Verdict.MISCONFIGURED:
            self._backoff.slow()
            assert answer.reply is not None
            status, text = answer.reply.status, answer.reply.text.strip()[:300]
            detail = f"refused our request ({status}, check url and token): {text}"
        elif answer.reply is not None:
            asked = retry_after(answer.reply.headers, self._clock())
        delay = self._backoff.next(asked)
        if asked is not None:
            delay = max(0.1, delay)  # a peer asking for no wait at all must not make a busy loop
        self.last_error = detail
        log.warning("forward %s: %s; next attempt in %.1f s", self.name, detail, delay)
        return delay

    def _explain(self, entries: list[Entry], refused: dict[str, int]) -> None:
        """One log line per group of entries, whatever the number of refused requests in it."""
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(refused.items()))
        hint = ""
        if "out_of_bounds" in refused or "too_old" in refused:
            hint = (
                " — the target does not take samples older than its head block (a stock Prometheus; set"
                " storage.tsdb.out_of_order_time_window there, or forward backfill to VictoriaMetrics)"
            )
        log.warning(
            "forward %s: target refused %s samples from %s for good (last answer: %s); not retried, "
            "the collector's store keeps them%s",
            self.name,
            counts,
            "device " + ", ".join(sorted({e.device for e in entries})),
            self._last_refusal,
            hint,
        )


class Forwarding:
    """All targets together: what the ingest endpoints call before they store anything.

    Args:
        forwarders: one per configured target.
    """

    def __init__(self, forwarders: list[Forwarder]) -> None:
        self.forwarders = forwarders

    async def start(self) -> None:
        started: list[Forwarder] = []
        try:
            for forwarder in self.forwarders:
                await forwarder.start()
                started.append(forwarder)
        except BaseException:
            await asyncio.gather(*(f.stop() for f in started))
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(f.stop() for f in self.forwarders))

    async def __aenter__(self) -> Forwarding:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def dead(self) -> dict[str, str]:
        """Targets whose sender task ended by itself (a bug), for /healthz."""
        out: dict[str, str] = {}
        for f in self.forwarders:
            task = f._task
            if task is not None and task.done() and not task.cancelled():
                exc = task.exception()
                out[f"forward {f.name}"] = "stopped" if exc is None else f"{type(exc).__name__}: {exc}"[:200]
        return out

    async def enqueue(self, device: str, payload: Payload, samples: int) -> None:
        """Queue in every target's spool (concurrently: one fsync each); raises StoreError if any fails."""
        await asyncio.gather(*(f.enqueue(device, payload, samples) for f in self.forwarders))
