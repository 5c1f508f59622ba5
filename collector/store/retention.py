"""Retention: what the store keeps, for how long, and the job that applies it.

The store keeps recent data (``[store] retention``, 15 days by default) for the export and the fleet
page; long-term history belongs in the TSDB that forwarding feeds. Rules, on either back end:

- Whole chunks go, oldest first (by their newest sample): those whose newest sample is older than
  the retention, then, while the chunks' bytes exceed ``[store] max_bytes``, the oldest ones. The
  samples they had added when stored are counted in
  ``backhaul_collector_store_removed_samples_total{reason="retention"|"max_bytes"}``.
- De-duplication records (``batches``) outlive the chunks: each is kept for the retention and at
  least :data:`DEDUP_MIN_KEPT_MS` (14 days, twice the agent's default ``[buffer] max_age``) after it
  arrived. An agent re-sends a batch only while it holds it, and it holds a batch at most its
  ``max_age`` after the batch's newest sample, so a late retry of a batch whose chunks are gone is
  still answered "duplicate" and not stored again. (With agents whose ``max_age`` is longer, set the
  retention at least that long.)
- Tables no chunk refers to any more are dropped; the tables agents refer to by digest are kept on
  their own terms (collector/ingest.py).
- The fleet page reads its own few series (model info, the proxy's routed requests) from
  ``fleet_samples``: kept for :data:`FLEET_KEPT_MS`, and the newest sample of each series for good,
  so the page never depends on raw samples that retention removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter

from backhaul.errors import StoreError
from collector.store.records import Removed
from collector.store.settings import StoreSettings

log = logging.getLogger(__name__)

DEDUP_MIN_KEPT_MS = 14 * 86_400_000
# The escalation share reads an hour and the hour before it (collector/escalation.py).
FLEET_KEPT_MS = 2 * 3_600_000
# Chunks removed per transaction.
STEP_CHUNKS = 1000
# How often the job runs.
INTERVAL_S = 60.0


@dataclass(frozen=True)
class Rules:
    """Args: retention_ms, max_bytes (None: no limit), dedup_kept_ms (how long batch records stay)."""

    retention_ms: int
    max_bytes: int | None
    dedup_kept_ms: int

    @classmethod
    def of(cls, settings: StoreSettings) -> Rules:
        retention_ms = int(settings.retention.total_seconds() * 1000)
        max_bytes = int(settings.max_bytes) if settings.max_bytes is not None else None
        return cls(retention_ms, max_bytes, max(retention_ms, DEDUP_MIN_KEPT_MS))


R = TypeVar("R", bound=Sequence[Any])


def enough(rows: R, free: int) -> R:
    """The first of ``rows`` (oldest first; bytes in the last column) whose bytes add up to ``free``."""
    total = 0
    for n, row in enumerate(rows):
        total += row[-1]
        if total >= free:
            return rows[: n + 1]  # type: ignore[return-value]
    return rows


class Removes(Protocol):
    async def remove_old(self, rules: Rules, now_ms: int) -> Removed: ...


class Retention:
    """The retention job: :meth:`run` applies the rules every :data:`INTERVAL_S` seconds.

    Args: the store, its settings, the metrics registry, a wall clock in seconds.
    """

    def __init__(
        self,
        store: Removes,
        settings: StoreSettings,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.rules = Rules.of(settings)
        self._clock = clock
        self.removed = Counter(
            "backhaul_collector_store_removed_samples",
            "Samples the store removed (whole chunks, oldest first), by reason: retention or max_bytes",
            ["reason"],
            registry=registry,
        )
        for reason in ("retention", "max_bytes"):
            self.removed.labels(reason)

    async def once(self) -> Removed:
        removed = await self._store.remove_old(self.rules, int(self._clock() * 1000))
        self.removed.labels("retention").inc(removed.retention)
        self.removed.labels("max_bytes").inc(removed.max_bytes)
        if removed.retention or removed.max_bytes:
            log.info(
                "store: removed %d samples past retention, %d over max_bytes", removed.retention, removed.max_bytes
            )
        return removed

    async def run(self) -> None:
        """Forever; a failed pass (the store busy) is logged and tried again at the next interval."""
        while True:
            started = time.monotonic()
            try:
                await self.once()
            except StoreError as exc:  # the store busy or away: the next pass tries again
                log.warning("store retention failed: %s", exc)
            except Exception:  # a bug: logged with its traceback, and the job goes on
                log.exception("store retention failed")
            await asyncio.sleep(max(1.0, INTERVAL_S - (time.monotonic() - started)))
