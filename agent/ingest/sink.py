"""Where the agent's own sources (scrapes, host metrics, self-scrape) hand their samples to the buffer.

They go through the same staging and group commit as remote write. Nobody waits for an answer, but
each source awaits its commit anyway, so a slow disk slows the sources down (backpressure) instead of
letting samples pile up in memory. A failed commit (disk full, overloaded, shutting down) loses that
one pass: it is counted and logged, and the source carries on at its next interval.

With ``buffer.source_commit_interval`` the sources do not wait: their passes gather in staging and
are committed together (:meth:`agent.buffer.staging.Staging.defer`), and each pass is counted, or
counted as failed, when that commit settles. Backpressure is then staging's cap on waiting samples.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter

from agent.buffer.staging import Staging
from agent.clock.keeper import TimeKeeper
from agent.clock.split import Split
from agent.ingest.metrics import IngestMetrics
from backhaul.errors import StoreError, Unavailable
from backhaul.wire.histogram import HistogramSeriesMap
from backhaul.wire.metadata import FamilyMetadata, MetadataMap
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)


class SampleSink:
    """Commits a source's samples to the buffer, dropping (and counting) those outside the accepted window.

    Args:
        staging: the group commit shared with remote write.
        metrics: the agent's metrics (dropped samples are counted there, by reason, like remote write's).
        registry: where the per-source counters are registered.
        max_age: seconds; older samples would expire at once, so they are dropped up front.
        max_future: seconds ahead of the clock beyond which samples are dropped.
        clock: wall clock in seconds.
        observe: called with the samples kept, before the commit (the alert rules look at them, as
            they do at remote write's).
        time_keeper: with ``clock.correct``, sorts samples by the clock era that stamped them (held,
            corrected) and judges the window by true time instead of ``clock``.
    """

    def __init__(
        self,
        staging: Staging,
        metrics: IngestMetrics,
        registry: CollectorRegistry,
        max_age: float,
        max_future: float,
        clock: Callable[[], float] = time.time,
        observe: Callable[[SeriesMap], None] | None = None,
        time_keeper: TimeKeeper | None = None,
    ) -> None:
        self._staging = staging
        self._time = time_keeper if time_keeper is not None and time_keeper.correcting else None
        self._observe = observe
        self._metrics = metrics
        self._max_age_ms = int(max_age * 1000)
        self._max_future_ms = int(max_future * 1000)
        self._clock = clock
        self._families = FamilyMetadata()
        self.committed = Counter(
            "backhaul_source_samples",
            "Samples from the agent's own sources committed, by source",
            ["source"],
            registry=registry,
        )
        self.failures = Counter(
            "backhaul_source_commit_failures",
            "Commits of a source's samples that failed (those samples are lost), by source",
            ["source"],
            registry=registry,
        )

    async def commit(
        self,
        source: str,
        series: SeriesMap,
        histograms: HistogramSeriesMap | None = None,
        metadata: MetadataMap | None = None,
    ) -> bool:
        """Commit ``series`` (and native ``histograms``, each family's ``metadata`` when new or
        changed); False (counted, logged) when the buffer refused it."""
        if self._time is not None:
            return await self._commit_split(source, series, histograms, metadata)
        now_ms = int(self._clock() * 1000)
        lo, hi = now_ms - self._max_age_ms, now_ms + self._max_future_ms
        kept: SeriesMap = {}
        samples = too_old = too_new = 0
        for labels, (stamps, values) in series.items():
            if all(lo <= t <= hi for t in stamps):
                kept[labels] = (stamps, values)
                samples += len(stamps)
                continue
            pairs = [(t, v) for t, v in zip(stamps, values, strict=True) if lo <= t <= hi]
            too_old += sum(1 for t in stamps if t < lo)
            too_new += sum(1 for t in stamps if t > hi)
            if pairs:
                kept[labels] = ([t for t, _ in pairs], [v for _, v in pairs])
                samples += len(pairs)
        kept_h: HistogramSeriesMap = {}
        for labels, (stamps, hs) in (histograms or {}).items():
            keep = [k for k, t in enumerate(stamps) if lo <= t <= hi]
            too_old += sum(1 for t in stamps if t < lo)
            too_new += sum(1 for t in stamps if t > hi)
            if keep:
                kept_h[labels] = ([stamps[k] for k in keep], [hs[k] for k in keep])
                samples += len(keep)
        self._families.offer(metadata or {}, now_ms)
        families = self._families.waiting() if samples else {}
        dropped = too_old + too_new
        if not samples and not dropped:
            return True
        if self._observe is not None and kept:
            try:
                self._observe(kept)
            except Exception:  # a rule bug must never cost the samples
                log.exception("%s: alert rules failed on a scrape", source)
        drops = {"too_old": too_old, "too_far_in_future": too_new}
        return await self._stage(source, kept, samples, dropped, None, kept_h, families, now_ms, drops, None)

    async def _commit_split(
        self, source: str, series: SeriesMap, histograms: HistogramSeriesMap | None, metadata: MetadataMap | None
    ) -> bool:
        """:meth:`commit` when the clock keeper sorts the float samples (clock.correct); native
        histograms are committed as stamped."""
        assert self._time is not None
        done = await self._time.split(series)
        dropped = sum(done.dropped.values())
        now_ms = int(self._clock() * 1000)
        self._families.offer(metadata or {}, now_ms)
        histograms = histograms or {}
        samples = done.samples + sum(len(ts) for ts, _ in histograms.values())
        families = self._families.waiting() if samples else {}
        if not samples and not dropped:
            return True
        if self._observe is not None and done.samples:
            try:
                self._observe(series)
            except Exception:  # a rule bug must never cost the samples
                log.exception("%s: alert rules failed on a scrape", source)
        return await self._stage(
            source, done.ready, samples, dropped, done.held, histograms, families, now_ms, done.dropped, done
        )

    async def _stage(
        self,
        source: str,
        series: SeriesMap,
        samples: int,
        dropped: int,
        held: Mapping[int, SeriesMap] | None,
        histograms: HistogramSeriesMap,
        families: MetadataMap,
        now_ms: int,
        drops: Mapping[str, int],
        done: Split | None,
    ) -> bool:
        """Hand one pass to staging: awaited when every pass commits at once, else deferred
        (``buffer.source_commit_interval``) and counted when its commit settles."""
        deferring = self._staging.defer_for > 0
        try:
            if deferring:
                pending = self._staging.defer(series, samples, dropped, held, histograms, families)
            else:
                await self._staging.submit(series, samples, dropped, held, histograms, families)
        except (Unavailable, StoreError) as exc:
            self._failed(source, samples, exc)
            return False
        if not deferring:
            self._settled(source, samples, families, now_ms, drops, done)
            return True

        def settle(future: asyncio.Future[None]) -> None:
            exc = future.exception()
            if exc is None:
                self._settled(source, samples, families, now_ms, drops, done)
            else:
                self._failed(source, samples, exc)

        pending.add_done_callback(settle)
        return True

    def _failed(self, source: str, samples: int, exc: BaseException) -> None:
        self.failures.labels(source).inc()
        log.warning("%s: %d samples not buffered: %s", source, samples, exc)

    def _settled(
        self,
        source: str,
        samples: int,
        families: MetadataMap,
        now_ms: int,
        drops: Mapping[str, int],
        done: Split | None,
    ) -> None:
        """The pass is durable: count it (and what the clock keeper corrected or holds)."""
        if done is not None and self._time is not None:
            self._time.committed(done)
        self._families.committed(families, now_ms)
        self.committed.labels(source).inc(samples)
        for reason, count in drops.items():
            if count:
                self._metrics.samples_dropped.labels(reason).inc(count)
