"""Where the agent's own sources (scrapes, host metrics, self-scrape) hand their samples to the buffer.

They go through the same staging and group commit as remote write. Nobody waits for an answer, but
each source awaits its commit anyway, so a slow disk slows the sources down (backpressure) instead of
letting samples pile up in memory. A failed commit (disk full, overloaded, shutting down) loses that
one pass: it is counted and logged, and the source carries on at its next interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from agent.buffer.staging import Staging
from agent.clock.keeper import TimeKeeper
from agent.ingest.metrics import IngestMetrics
from backhaul.errors import StoreError, Unavailable
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

    async def commit(self, source: str, series: SeriesMap) -> bool:
        """Commit ``series``; False (counted, logged) when the buffer refused it."""
        if self._time is not None:
            return await self._commit_split(source, series)
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
        dropped = too_old + too_new
        if not samples and not dropped:
            return True
        if self._observe is not None and samples:
            try:
                self._observe(kept)
            except Exception:  # a rule bug must never cost the samples
                log.exception("%s: alert rules failed on a scrape", source)
        try:
            await self._staging.submit(kept, samples, dropped)
        except (Unavailable, StoreError) as exc:
            self.failures.labels(source).inc()
            log.warning("%s: %d samples not buffered: %s", source, samples, exc)
            return False
        self.committed.labels(source).inc(samples)
        if too_old:
            self._metrics.samples_dropped.labels("too_old").inc(too_old)
        if too_new:
            self._metrics.samples_dropped.labels("too_far_in_future").inc(too_new)
        return True

    async def _commit_split(self, source: str, series: SeriesMap) -> bool:
        """:meth:`commit` when the clock keeper sorts the samples (clock.correct)."""
        assert self._time is not None
        done = await self._time.split(series)
        dropped = sum(done.dropped.values())
        if not done.samples and not dropped:
            return True
        if self._observe is not None and done.samples:
            try:
                self._observe(series)
            except Exception:  # a rule bug must never cost the samples
                log.exception("%s: alert rules failed on a scrape", source)
        try:
            await self._staging.submit(done.ready, done.samples, dropped, done.held)
        except (Unavailable, StoreError) as exc:
            self.failures.labels(source).inc()
            log.warning("%s: %d samples not buffered: %s", source, done.samples, exc)
            return False
        self._time.committed(done)
        self.committed.labels(source).inc(done.samples)
        for reason, count in done.dropped.items():
            self._metrics.samples_dropped.labels(reason).inc(count)
        return True
