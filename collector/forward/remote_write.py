"""Forwarding to one remote-write target: a durable spool and one sender task.

What the collector stores is enqueued here first (see :meth:`Forwarder.enqueue` and
docs/forwarding.md for why *before* the store's commit). The sender takes the oldest entries (small
ones together, up to ``GROUP_SAMPLES``), turns them into remote-write 1.0 requests of at most
``max_samples_per_request`` samples, and sends them in order:

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
from dataclasses import dataclass

import aiohttp

from backhaul import __version__
from backhaul.errors import StoreError
from backhaul.retry import Backoff, retry_after
from backhaul.wire import WireError
from backhaul.wire import batch as batchfmt
from backhaul.wire import remote_write as rw
from backhaul.wire.chunk import Codec
from backhaul.wire.series import Labels, SeriesMap, with_device_label
from collector.forward.metrics import ForwardMetrics
from collector.forward.settings import ForwardTarget
from collector.forward.spool import Entry, Kind, Spool

log = logging.getLogger(__name__)

# What Prometheus (and compatible receivers) say when they refuse samples for good.
REJECTIONS = (
    ("out of bounds", "out_of_bounds"),
    ("too old", "too_old"),
    ("out of order", "out_of_order"),
    ("duplicate sample", "duplicate_timestamp"),
)
MISCONFIGURED = (401, 403, 404)
# VictoriaMetrics answers a wrong path with 400 and this text: a wrong URL, not refused samples.
UNSUPPORTED_PATH = "unsupported path requested"
# Small entries (one agent batch each) are sent together up to this many samples: one pass of
# requests and one spool transaction for many batches. Bounds the memory of one pass too.
GROUP_SAMPLES = 100_000


def rejection_reason(status: int, text: str) -> str:
    """A short metric label for a refusal: Prometheus' reason when recognised, else ``http_<status>``."""
    lowered = text.lower()
    for needle, reason in REJECTIONS:
        if needle in lowered:
            return reason
    return f"http_{status}"


@dataclass
class _Outcome:
    """One request's fate: ``delay`` > 0 means retry it after that long; ``rejected`` names a refusal."""

    delay: float = 0.0
    rejected: str | None = None


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
        self._device_label = device_label
        self._limit = max_decompressed_bytes
        self._clock = clock
        self._backoff = Backoff(target.backoff_min.total_seconds(), target.backoff_max.total_seconds(), rng)
        self._headers = {
            **target.headers,
            "Content-Type": rw.CONTENT_TYPE,
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": f"backhaul-collector/{__version__}",
        }
        if target.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {target.bearer_token.get_secret_value()}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.last_error: str | None = None
        self._last_refusal = ""
        # The group of entries being sent, how many of its requests were acknowledged, and what the
        # target refused in it so far (logged once the group is done).
        self._pending: list[Entry] | None = None
        self._done = 0
        self._refused: dict[str, int] = {}
        self._relabelled: dict[tuple[Labels, str], Labels] = {}  # (labels, device) -> labels as forwarded

    async def start(self) -> None:
        await self.spool.call(self.spool.open)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.target.timeout.total_seconds()))
        self._task = asyncio.create_task(self._run(), name=f"forward-{self.name}")

    async def stop(self) -> None:
        """Stop sending (an entry half sent stays queued with its progress), close the spool."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self.spool.db.aclose()

    async def enqueue(self, device: str, kind: Kind, body: bytes, samples: int) -> None:
        """Durably queue what ``device`` sent; raises StoreError when the spool cannot write."""
        if not samples:  # a batch that only reports losses: nothing to forward
            return
        dropped = await self.spool.call(self.spool.add, device, kind, body, samples, int(self._clock() * 1000))
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
        while True:
            try:
                # A group that failed is retried as it was, not re-taken with newer entries, so that
                # no request is re-sent (and no refusal counted twice) because the group grew.
                entries = self._pending or await self.spool.call(self.spool.take, GROUP_SAMPLES)
                if not entries:
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                delay = await self._forward(entries)
            except StoreError as exc:
                delay = self._retry_later(f"spool: {exc}")
            except Exception:  # a bug must not stop forwarding for good
                log.exception("forward %s: failed unexpectedly", self.name)
                delay = self._retry_later("internal error (see the log)")
            if delay:
                await asyncio.sleep(delay)

    def _retry_later(self, error: str) -> float:
        delay = self._backoff.next()
        self.last_error = error
        log.error("forward %s: %s; retrying in %.1f s", self.name, error, delay)
        return delay

    async def _forward(self, entries: list[Entry]) -> float:
        """Send what is left of ``entries`` (the oldest in the spool, together); returns how long to
        wait before the next attempt (0: all sent)."""
        try:
            bodies, counts = await asyncio.to_thread(self._requests, entries)
        except WireError as exc:  # checked at ingest, so only a bug or a damaged spool gets here
            ids = [e.id for e in entries]
            log.error("forward %s: entries %s cannot be decoded (%s); dropping them", self.name, ids, exc)
            self._metrics.dropped.labels(self.name, "undecodable").inc(sum(e.samples for e in entries))
            await self.spool.call(self.spool.remove, *entries)
            self._pending = None
            return 0.0
        # Where to resume: a lone entry keeps its progress in the spool (it survives a restart);
        # a group of small ones only in memory, and is sent whole again after a restart.
        single = len(entries) == 1
        if self._pending is not entries:
            self._pending, self._done, self._refused = entries, entries[0].done if single else 0, {}
        for index in range(self._done, len(bodies)):
            outcome = await self._post(bodies[index], counts[index])
            if outcome.delay:
                return outcome.delay
            if outcome.rejected is not None:
                self._refused[outcome.rejected] = self._refused.get(outcome.rejected, 0) + counts[index]
            self._done = index + 1
            if single and self._done < len(bodies):
                await self.spool.call(self.spool.progress, entries[0].id, self._done)
        await self.spool.call(self.spool.remove, *entries)
        refused, self._pending, self._done, self._refused = self._refused, None, 0, {}
        if refused:
            self._explain(entries, refused)
        return 0.0

    def _requests(self, entries: list[Entry]) -> tuple[list[bytes], list[int]]:
        """On a worker thread: the entries as remote-write bodies, and the samples in each."""
        series: SeriesMap = {}
        codec = Codec()
        for entry in entries:
            if entry.kind == "batch":
                _, frames = batchfmt.decode(entry.body)
                for frame in frames:
                    self._add(series, codec.decode(frame, self._limit), entry.device)
            else:
                decoded = rw.decode(entry.body, rw.Limits(max_decompressed_bytes=self._limit))
                self._add(series, decoded.series, entry.device)
        size = self.target.max_samples_per_request
        bodies = rw.encode(series, size)
        total = sum(len(ts) for ts, _ in series.values())
        counts = [size] * (len(bodies) - 1) + [total - size * (len(bodies) - 1)]
        return bodies, counts

    def _add(self, series: SeriesMap, part: SeriesMap, device: str) -> None:
        """Append ``part`` to ``series`` with the device label added. The relabelled keys are cached:
        a batch holds the same series as the last one, and building them dominated the cost."""
        cache = self._relabelled
        if len(cache) > 1_000_000:
            cache.clear()
        for labels, (stamps, values) in part.items():
            key = cache.get((labels, device))
            if key is None:
                (key,) = with_device_label({labels: ([], [])}, self._device_label, device)
                cache[(labels, device)] = key
            entry = series.get(key)
            if entry is None:
                series[key] = (list(stamps), list(values))
            else:
                entry[0].extend(stamps)
                entry[1].extend(values)

    async def _post(self, body: bytes, samples: int) -> _Outcome:
        assert self._session is not None
        started = time.perf_counter()
        try:
            async with self._session.post(str(self.target.url), data=body, headers=self._headers) as resp:
                status = resp.status
                text = (await resp.content.read(4096)).decode("utf-8", "replace").strip()
                headers = dict(resp.headers)
        except TimeoutError:
            return self._failed("timeout", f"no complete answer within {self.target.timeout.total_seconds()} s")
        except aiohttp.ClientError as exc:
            return self._failed("connection", f"{type(exc).__name__}: {str(exc)[:200]}")
        finally:
            self._metrics.request_seconds.labels(self.name).observe(time.perf_counter() - started)
        if 200 <= status < 300:
            self._metrics.sent_samples.labels(self.name).inc(samples)
            self._metrics.sent_requests.labels(self.name).inc()
            self._metrics.sent_bytes.labels(self.name).inc(len(body))
            self._backoff.reset()
            self.last_error = None
            return _Outcome()
        if status in (408, 429) or status >= 500:
            outcome = self._failed(f"http_{status}", f"answered {status}: {text[:300]}")
            asked = retry_after(headers, self._clock())
            if asked is not None:
                outcome.delay = max(0.1, min(asked, self._backoff.maximum))
            return outcome
        if status in MISCONFIGURED or (status == 400 and UNSUPPORTED_PATH in text):
            self._backoff.failures = max(self._backoff.failures, 6)  # a config error: retry slowly
            return self._failed(f"http_{status}", f"refused our request ({status}, check url and token): {text[:300]}")
        reason = rejection_reason(status, text)
        self._metrics.rejected.labels(self.name, reason).inc(samples)
        self._last_refusal = f"{status} {text[:300]}"
        return _Outcome(rejected=reason)

    def _failed(self, reason: str, detail: str) -> _Outcome:
        self._metrics.failures.labels(self.name, reason).inc()
        delay = self._backoff.next()
        self.last_error = detail
        log.warning("forward %s: %s; next attempt in %.1f s", self.name, detail, delay)
        return _Outcome(delay=delay)

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

    async def enqueue(self, device: str, kind: Kind, body: bytes, samples: int) -> None:
        """Queue in every target's spool (concurrently: one fsync each); raises StoreError if any fails."""
        await asyncio.gather(*(f.enqueue(device, kind, body, samples) for f in self.forwarders))
