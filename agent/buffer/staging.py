"""Group commit: requests wait here until their samples are durable, then all of them are answered.

One transaction (one fsync) serves every request that arrived within ``commit_delay_ms`` of the
first, so durable ingest costs a few fsyncs per second, not one per request.

The agent's own sources (scrapes, host metrics) have nobody waiting for an answer; with
``buffer.source_commit_interval`` their passes wait in memory for up to that long and are committed
as one chunk (or sooner, with the next pushed request's group). Every commit costs the same few pages
whatever it holds, so on flash this divides the writes per sample; a crash or a power cut loses at
most that interval of the agent's own samples, never anything a sender was answered for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.buffer.metrics import BufferMetrics
from agent.buffer.store import BufferStore, Losses
from backhaul.errors import StoreError, Unavailable
from backhaul.wire.chunk import Contents
from backhaul.wire.histogram import HistogramSeriesMap
from backhaul.wire.metadata import MetadataMap
from backhaul.wire.series import SeriesMap, merge_owned

log = logging.getLogger(__name__)


@dataclass
class _Group:
    """Requests (or deferred passes) committed together, and the future that answers them."""

    contents: Contents
    samples: int
    dropped: int
    held: dict[int, SeriesMap]  # more samples held by tag (agent.buffer.holds)
    future: asyncio.Future[None]


@dataclass
class Ride:
    """Writes that ride along with one group's commit, in its transaction (no fsync of their own)."""

    write: Callable[[], None]  # on the store's thread, inside the commit's transaction
    settle: Callable[[bool], None]  # on the loop afterwards: True when the commit went through


class Staging:
    """Collects decoded samples and commits them in groups.

    Args:
        store: the buffer the groups are committed to.
        metrics: where commits, evictions and failures are counted.
        commit_delay: seconds to wait for more requests after the first one arrives.
        max_pending_samples: above this many samples awaiting a commit, new requests are refused.
        on_commit: called after each successful commit (wakes the uploader).
        clock: wall clock in seconds.
        defer_for: seconds a :meth:`defer` submission may wait for its commit.
        defer_series: ... or until the waiting passes hold this many distinct series (churn).
        rider: asked before each commit (on the loop) for a :class:`Ride` to take along, or None.
    """

    def __init__(
        self,
        store: BufferStore,
        metrics: BufferMetrics,
        commit_delay: float,
        max_pending_samples: int,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        defer_for: float = 0.0,
        rider: Callable[[], Ride | None] | None = None,
        defer_series: int = 20_000,
    ) -> None:
        self._rider = rider
        self._defer_series = defer_series
        self._store = store
        self.defer_for = defer_for
        metrics.waiting.set_function(lambda: float(self._deferred_samples()))
        self._timer: asyncio.TimerHandle | None = None
        self._gathering: int | None = None  # the index in _pending of the deferred passes' group
        self._metrics = metrics
        self._delay = commit_delay
        self._max_pending = max_pending_samples
        self._on_commit = on_commit
        self._clock = clock
        self._pending: list[_Group] = []
        self._pending_samples = 0
        self._wake = asyncio.Event()
        self._closing = False

    async def submit(
        self,
        series: SeriesMap,
        samples: int,
        dropped: int,
        held: Mapping[int, SeriesMap] | None = None,
        histograms: HistogramSeriesMap | None = None,
        metadata: MetadataMap | None = None,
    ) -> None:
        """Return once ``series`` (and ``histograms``, ``metadata``) are durable; raises
        :class:`Unavailable` or :class:`StoreError`.

        ``held``: more samples, committed with them but held (by tag) until released
        (:mod:`agent.buffer.holds`); ``samples`` counts them too, and the histograms.
        """
        future = self._enqueue(Contents(series, histograms or {}, metadata or {}), samples, dropped, held)
        self._wake.set()
        # Shielded: a sender that hangs up must not cancel the commit others share.
        await asyncio.shield(future)

    def defer(
        self,
        series: SeriesMap,
        samples: int,
        dropped: int,
        held: Mapping[int, SeriesMap] | None = None,
        histograms: HistogramSeriesMap | None = None,
        metadata: MetadataMap | None = None,
    ) -> asyncio.Future[None]:
        """As :meth:`submit`, for a submitter that does not wait: the commit comes within
        ``defer_for`` seconds (at once when that is 0) and settles the returned future.

        Raises :class:`Unavailable` at once when shutting down or when too many samples wait.
        """
        part = Contents(series, histograms or {}, metadata or {})
        if self._gathering is None:
            future = self._enqueue(part, samples, dropped, held)
            self._gathering = len(self._pending) - 1
        else:
            future = self._gather(part, samples, dropped, held)
        if self.defer_for <= 0 or self._deferred_series() >= self._defer_series:
            self._wake.set()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.defer_for, self._wake.set)
        return future

    def _gather(
        self, part: Contents, samples: int, dropped: int, held: Mapping[int, SeriesMap] | None
    ) -> asyncio.Future[None]:
        """Merge a deferred pass into the deferred group at once, so that the series of many passes
        share their label tuples while they wait (10k series x 12 passes would otherwise hold 12
        copies); every pass of the group shares its future."""
        self._check(samples)
        assert self._gathering is not None
        group = self._pending[self._gathering]
        merge_owned([group.contents.series, part.series])
        merge_owned([group.contents.histograms, part.histograms])
        group.contents.metadata.update(part.metadata)
        for tag, tagged in (held or {}).items():
            merge_owned([group.held.setdefault(tag, {}), tagged])
        group.samples += samples
        group.dropped += dropped
        self._pending_samples += samples
        return group.future

    def _deferred_samples(self) -> int:
        """Samples nobody waits for: every deferred pass is in the one gathering group."""
        return self._pending[self._gathering].samples if self._gathering is not None else 0

    def _deferred_series(self) -> int:
        if self._gathering is None:
            return 0
        contents = self._pending[self._gathering].contents
        return len(contents.series) + len(contents.histograms)

    def _check(self, samples: int) -> None:
        if self._closing:
            raise Unavailable("agent is shutting down")
        if self._pending_samples + samples > self._max_pending:
            raise Unavailable(f"{self._pending_samples} samples already wait for a commit")

    def _enqueue(
        self, part: Contents, samples: int, dropped: int, held: Mapping[int, SeriesMap] | None
    ) -> asyncio.Future[None]:
        self._check(samples)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Group(part, samples, dropped, dict(held or {}), future))
        self._pending_samples += samples
        return future

    async def run(self) -> None:
        """Commit loop; runs until cancelled (after :meth:`drain`)."""
        while True:
            await self._wake.wait()
            if self._delay and not self._closing:
                await asyncio.sleep(self._delay)
            await self._commit_pending()

    async def drain(self) -> None:
        """Refuse new requests and commit every one already accepted."""
        self._closing = True
        while self._pending:
            await self._commit_pending()

    async def _commit_pending(self) -> None:
        group, self._pending = self._pending, []
        self._pending_samples = 0
        self._gathering = None
        self._wake.clear()
        if self._timer is not None:  # the deferred passes ride with this group
            self._timer.cancel()
            self._timer = None
        if not group:
            return
        started = time.perf_counter()
        ride = self._rider() if self._rider is not None else None
        try:
            losses = await self._store.call(self._write, group, ride)
        except Exception as exc:
            if ride is not None:
                ride.settle(False)
            # Every waiting sender must get an answer (503/500 and a retry), whatever went wrong.
            failure = exc if isinstance(exc, StoreError) else StoreError(f"internal error: {exc!r}", transient=False)
            if not isinstance(exc, StoreError):
                log.exception("commit of %d requests failed unexpectedly", len(group))
            self._metrics.commit_failures.inc()
            log.error("commit of %d requests failed: %s", len(group), failure)
            for g in group:
                if not g.future.done():
                    g.future.set_exception(failure)
            return
        if ride is not None:
            ride.settle(True)
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        self._metrics.commits.inc()
        self._metrics.samples_ingested.inc(sum(g.samples for g in group))
        self._metrics.evicted.inc(losses.evicted)
        if losses.evicted:
            log.warning("buffer full: evicted %d oldest samples", losses.evicted)
        for g in group:
            if not g.future.done():
                g.future.set_result(None)
        self._on_commit()

    def _write(self, groups: list[_Group], ride: Ride | None) -> Losses:
        """On the store's thread: merge the groups into one chunk (one more per hold tag) and commit
        it (with the ride's writes)."""
        # The requests' decoded maps are ours alone (a request is answered only after this commit).
        merged = merge_owned([g.contents.series for g in groups])
        histograms = merge_owned([g.contents.histograms for g in groups])
        metadata: MetadataMap = {}
        for g in groups:
            metadata.update(g.contents.metadata)
        dropped = sum(g.dropped for g in groups)
        now_ms = int(self._clock() * 1000)
        by_tag: dict[int, list[SeriesMap]] = {}
        for g in groups:
            for tag, part in g.held.items():
                by_tag.setdefault(tag, []).append(part)
        if not by_tag and ride is None:
            return self._store.append(merged, dropped, now_ms, histograms=histograms, metadata=metadata)
        with self._store.db.atomic():  # one transaction for the whole group, held chunks included
            losses = self._store.append(merged, dropped, now_ms, histograms=histograms, metadata=metadata)
            for tag, tagged in by_tag.items():
                losses.evicted += self._store.append(merge_owned(tagged), 0, now_ms, hold=tag).evicted
            if ride is not None:
                ride.write()
        return losses
