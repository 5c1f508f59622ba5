"""What every pushed request does once decoded (remote write 1.0 and 2.0, OTLP): check it can be
committed, show it to the alert rules, commit it, and only then count it.

Metadata is kept per metric family in the buffer (in the chunks of a commit, chunk version 3), but
senders repeat it: Prometheus sends every family's metadata each minute, 2.0 with every series. A
family's metadata is therefore committed when it is new or changed, and again an hour later
(``backhaul.wire.metadata.FamilyMetadata``), so a collector that lost a chunk (eviction) learns it
again; the rest is counted as received and not stored twice. It rides with samples: metadata that
came alone (remote write 1.0 sends it in requests of its own) waits, in memory, for the next commit
that has samples, so no chunk holds metadata alone (a collector keeps chunks by their samples).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.buffer.staging import Staging
from agent.clock.keeper import TimeKeeper
from agent.ingest.metrics import IngestMetrics
from backhaul.errors import InputError
from backhaul.wire import remote_write as rw
from backhaul.wire.metadata import FamilyMetadata
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)


class Committer:
    """Commits decoded requests to the buffer.

    Args:
        staging: the group commit.
        metrics: ingest counters.
        max_pending: ``buffer.max_pending_samples``: a request of more samples can never be committed.
        clock: wall clock in seconds.
        observe: the alert rules, shown each request's float samples before the commit.
        time_keeper: with ``clock.correct``, sorts the float samples by the clock era that stamped
            them (held, corrected; ``agent/clock``). Native histograms are committed as stamped.
    """

    def __init__(
        self,
        staging: Staging,
        metrics: IngestMetrics,
        max_pending: int,
        clock: Callable[[], float],
        observe: Callable[[SeriesMap], None] | None = None,
        time_keeper: TimeKeeper | None = None,
    ) -> None:
        self._staging = staging
        self._time = time_keeper
        self._metrics = metrics
        self._max_pending = max_pending
        self._clock = clock
        self._observe = observe
        self._families = FamilyMetadata()

    async def commit(self, decoded: rw.Decoded, what: str) -> None:
        """Return once ``decoded`` is durable (raises as :meth:`Staging.submit` does); counts after."""
        samples = decoded.samples + decoded.histogram_samples
        if samples > self._max_pending:
            raise InputError(
                f"one request of {samples} samples can never be committed: buffer.max_pending_samples"
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
            samples = decoded.samples + decoded.histogram_samples
        dropped = sum(decoded.dropped.values())
        if self._observe is not None and seen_samples:
            # Before the commit: an alert must not wait for a slow or failing buffer (a full disk is
            # exactly when it matters). A sample refused below and re-sent is merely seen twice.
            try:
                self._observe(seen)
            except Exception:  # a rule bug must never cost the samples (as on the scrape path)
                log.exception("alert rules failed on a %s request", what)
        now_ms = int(self._clock() * 1000)
        self._families.offer(decoded.families, now_ms)
        families = self._families.waiting() if samples else {}
        if samples or dropped:
            held = done.held if done is not None else None
            await self._staging.submit(decoded.series, samples, dropped, held, decoded.histograms, families)
        if done is not None and self._time is not None:
            self._time.committed(done)
        self._families.committed(families, now_ms)
        # Counted once the request is answered 2xx, so that a sender's retry does not count twice.
        self._metrics.metadata_received.inc(decoded.metadata)
        self._metrics.exemplars.inc(decoded.exemplar_count)
        self._metrics.histograms.inc(decoded.histogram_samples)
        for reason, count in decoded.dropped.items():
            self._metrics.samples_dropped.labels(reason).inc(count)
