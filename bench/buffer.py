"""The agent's own buffer (``agent.buffer.store.BufferStore``) driven directly, without an agent
process: backlogs to drain and the batches and files the size figures measure. The one place in
bench/ that knows how to open and close a store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.buffer.store import BufferStore
from backhaul.sqlite import Synchronous
from backhaul.wire.series import SeriesMap
from bench.workload import INTERVAL_MS

AGENT_DEFAULT_TARGET_SAMPLES = 100_000  # agent.config.BufferSettings.compact_target_samples
COMPACT_INTERVAL_MS = 30_000  # agent.config.BufferSettings.maintenance_interval


@contextmanager
def open_store(
    path: Path,
    target_samples: int = AGENT_DEFAULT_TARGET_SAMPLES,
    budget_bytes: int = 1 << 40,
    synchronous: Synchronous = "OFF",
    zstd_level: int = 3,
) -> Iterator[BufferStore]:
    """An open store on ``path`` (used from this thread: no event loop here), closed on exit.

    synchronous=OFF by default: durability does not change sizes, and it keeps building fast."""
    store = BufferStore(
        path, budget_bytes=budget_bytes, synchronous=synchronous, zstd_level=zstd_level, target_samples=target_samples
    )
    store.open()
    try:
        yield store
    finally:
        store.close()


def write_offline(store: BufferStore, rounds: Iterable[tuple[int, SeriesMap]]) -> None:
    """Write scrape rounds as an agent that is offline the whole time does: one chunk per scrape,
    compacted on the agent's 30 s maintenance timer, then whatever is left compacted too."""
    every = max(1, COMPACT_INTERVAL_MS // INTERVAL_MS)
    last = 0
    for i, (base, series) in enumerate(rounds):
        store.append(series, 0, base)
        last = base
        if (i + 1) % every == 0:
            store.compact(base + INTERVAL_MS)
    while store.compact(last + INTERVAL_MS):  # at most 2,000 chunks per call
        pass


def db_bytes(path: Path) -> int:
    """The database file plus its WAL (the -shm index holds no data)."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
