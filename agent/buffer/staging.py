"""Group commit: requests wait here until their samples are durable, then all of them are answered.

One transaction (one fsync) serves every request that arrived within ``commit_delay_ms`` of the
first, so durable ingest costs a few fsyncs per second, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from agent.buffer.metrics import BufferMetrics
from agent.buffer.store import BufferStore, Losses
from backhaul.errors import StoreError, Unavailable
from backhaul.wire.series import SeriesMap, merge_owned

log = logging.getLogger(__name__)


class Staging:
    """Collects decoded samples and commits them in groups.

    Args:
        store: the buffer the groups are committed to.
        metrics: where commits, evictions and failures are counted.
        commit_delay: seconds to wait for more requests after the first one arrives.
        max_pending_samples: above this many samples awaiting a commit, new requests are refused.
        on_commit: called after each successful commit (wakes the uploader).
        clock: wall clock in seconds.
    """

    def __init__(
        self,
        store: BufferStore,
        metrics: BufferMetrics,
        commit_delay: float,
        max_pending_samples: int,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._delay = commit_delay
        self._max_pending = max_pending_samples
        self._on_commit = on_commit
        self._clock = clock
        self._pending: list[tuple[SeriesMap, int, int, Mapping[int, SeriesMap] | None, asyncio.Future[None]]] = []
        self._pending_samples = 0
        self._wake = asyncio.Event()
        self._closing = False

    async def submit(
        self, series: SeriesMap, samples: int, dropped: int, held: Mapping[int, SeriesMap] | None = None
    ) -> None:
        """Return once ``series`` is durable; raises :class:`Unavailable` or :class:`StoreError`.

        ``held``: more samples, committed with them but held (by tag) until released
        (:mod:`agent.buffer.holds`); ``samples`` counts them too.
        """
        if self._closing:
            raise Unavailable("agent is shutting down")
        if self._pending_samples + samples > self._max_pending:
            raise Unavailable(f"{self._pending_samples} samples already wait for a commit")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((series, samples, dropped, held, future))
        self._pending_samples += samples
        self._wake.set()
        # Shielded: a sender that hangs up must not cancel the commit others share.
        await asyncio.shield(future)

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
        self._wake.clear()
        if not group:
            return
        started = time.perf_counter()
        try:
            losses = await self._store.call(
                self._write, [g[0] for g in group], sum(g[2] for g in group), [g[3] for g in group if g[3]]
            )
        except Exception as exc:
            # Every waiting sender must get an answer (503/500 and a retry), whatever went wrong.
            failure = exc if isinstance(exc, StoreError) else StoreError(f"internal error: {exc!r}", transient=False)
            if not isinstance(exc, StoreError):
                log.exception("commit of %d requests failed unexpectedly", len(group))
            self._metrics.commit_failures.inc()
            log.error("commit of %d requests failed: %s", len(group), failure)
            for *_, future in group:
                if not future.done():
                    future.set_exception(failure)
            return
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        self._metrics.commits.inc()
        self._metrics.samples_ingested.inc(sum(g[1] for g in group))
        self._metrics.evicted.inc(losses.evicted)
        if losses.evicted:
            log.warning("buffer full: evicted %d oldest samples", losses.evicted)
        for *_, future in group:
            if not future.done():
                future.set_result(None)
        self._on_commit()

    def _write(self, parts: list[SeriesMap], dropped: int, held: list[Mapping[int, SeriesMap]]) -> Losses:
        """On the store's thread: merge the group into one chunk (one more per hold tag) and commit it."""
        # The requests' decoded maps are ours alone (a request is answered only after this commit).
        merged = merge_owned(parts)
        now_ms = int(self._clock() * 1000)
        if not held:
            return self._store.append(merged, dropped, now_ms)
        by_tag: dict[int, list[SeriesMap]] = {}
        for tags in held:
            for tag, part in tags.items():
                by_tag.setdefault(tag, []).append(part)
        with self._store.db.atomic():  # one transaction for the whole group, held chunks included
            losses = self._store.append(merged, dropped, now_ms)
            for tag, tagged in by_tag.items():
                losses.evicted += self._store.append(merge_owned(tagged), 0, now_ms, hold=tag).evicted
        return losses
