"""WAL frames each kind of buffer transaction writes at steady state (issue 16, "where the bytes go").

The agent's buffer driven directly (:mod:`bench.buffer`, ``synchronous = FULL``), the WAL's automatic
checkpoint turned off so that every commit's frames stay countable: a scrape of ``--series`` series
(one sample each, ~4 KB stored: like one node_exporter page) committed, sealed into a batch and acknowledged, and
the clock keeper's save of the era's end, each repeated ``--rounds`` times (``--passes-per-commit``
scrapes merged into each commit, as ``buffer.source_commit_interval`` does); frames per transaction are
the WAL's growth divided by a frame's size (page + 24-byte header), averaged.

    .venv/bin/python -m bench.wal_frames
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from agent.clock import journal
from agent.clock.eras import EraBook
from backhaul.wire.series import SeriesMap, merge_owned
from bench.buffer import open_store

T = TypeVar("T")
NOW_MS = 1_764_000_000_000
STEP_MS = 5_000


def _scrape(series: int, k: int) -> SeriesMap:
    """One page: counters with six-digit values (a ~5 KB chunk, like one real node_exporter page)."""
    rng = random.Random(k)
    t = NOW_MS + k * STEP_MS
    return {
        (("__name__", f"node_metric_{i % 40}_total"), ("instance", "127.0.0.1:9100"), ("i", str(i))): (
            [t],
            [round(rng.random() * 1e7, 5)],
        )
        for i in range(series)
    }


def _wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def _passes(series: int, k: int, passes: int) -> SeriesMap:
    """``passes`` scrapes ending with scrape ``k``, merged as staging merges the passes it deferred."""
    return merge_owned([_scrape(series, j) for j in range(k - passes + 1, k + 1)])


def measure(series: int, rounds: int, chunks_per_batch: int, passes: int = 1) -> dict[str, float]:
    """Average frames per transaction, by kind."""
    frames: dict[str, list[int]] = {"commit": [], "claim": [], "ack": [], "era save": []}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:  # a real disk, not tmpfs
        path = Path(tmp) / "buffer.db"
        with open_store(path, synchronous="FULL") as store:
            store.conn.execute("PRAGMA wal_autocheckpoint = 0")
            (page,) = store.conn.execute("PRAGMA page_size").fetchone()
            book = EraBook([], 1000, 1000, 0)
            book.start("bench", 0, NOW_MS)

            def counted(kind: str, fn: Callable[[], T]) -> T:
                before = _wal_bytes(path)
                out = fn()
                frames[kind].append((_wal_bytes(path) - before) // (page + 24))
                return out

            def era_save(k: int) -> None:
                book.observe(k * STEP_MS, NOW_MS + k * STEP_MS)
                book.changed.add(book.current.id)
                eras, jumps = book.take_changes()
                journal.save(store, eras, jumps)

            k = 0
            sizes: list[int] = []
            for r in range(rounds + 2):
                for _ in range(chunks_per_batch):
                    k += passes
                    counted("commit", partial(store.append, _passes(series, k, passes), 0, NOW_MS + k * STEP_MS))
                sizes.append(store.conn.execute("SELECT coalesce(sum(length(data)), 0) FROM chunks").fetchone()[0])
                batch = counted("claim", partial(store.claim, 4 << 20, NOW_MS + k * STEP_MS, False))
                assert batch is not None
                counted("ack", partial(store.ack, batch.seq, 0))
                counted("era save", partial(era_save, k))
                if r < 2:  # the first rounds grow the file: not steady state
                    for v in frames.values():
                        v.clear()
    result = {kind: sum(v) / len(v) for kind, v in frames.items() if v}
    result["KB per batch"] = sum(sizes) / len(sizes) / 1000
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=507, help="series per scrape (node_exporter 1.5.0: 507)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--chunks-per-batch", type=int, default=1, help="commits sealed into each batch")
    ap.add_argument(
        "--passes-per-commit", type=int, default=1, help="scrapes per commit (buffer.source_commit_interval / 5 s)"
    )
    args = ap.parse_args(argv)
    result = measure(args.series, args.rounds, args.chunks_per_batch, args.passes_per_commit)
    print(
        f"WAL frames per transaction ({args.series} series, {args.passes_per_commit} scrape(s) per commit,"
        f" {args.chunks_per_batch} commit(s) per batch, {args.rounds} rounds, synchronous = FULL)"
    )
    for kind, n in result.items():
        print(f"  {kind:<9} {n:6.2f}")


if __name__ == "__main__":
    main()
