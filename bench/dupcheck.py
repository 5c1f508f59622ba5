"""The duplicate check's cost as one device's store fills with distinct tables (issue 12).

    .venv/bin/python -m bench.dupcheck                       # this tree, about a minute
    .venv/bin/python -m bench.dupcheck --before cc9e4d2      # and the code of a commit, side by side

What the fuzz run (bench/fuzz.py) does to the store, without HTTP: a "hostile" device stores chunks
of random subsets of 200 series (1-12 series, 1-8 samples each, all within one hour), so nearly every
chunk has a table of its own and overlaps every other in time, and tables share series at random.
Between its chunks an ordinary device stores one chunk of its own steady table, the way the store's
one database thread serves every device. Every ingest is timed (in the store's own thread, as the
endpoints call it). Printed per window of the hostile device's chunks stored: ingests per second,
mean, p99 and slowest ingest in ms for each device, and how many of the hostile device's checks
reached the bound (collector/store/overlap.py). The code of ``--before`` runs in a subprocess from
``git archive`` (nothing of it kept), its ``collector`` package ahead of this tree's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.collector_servers import unpack

NOW = 1_800_000_000_000
HOUR = 3_600_000


def hostile_series(rnd: random.Random) -> dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]]:
    out: dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]] = {}
    for _ in range(rnd.randint(1, 12)):
        labels = (("__name__", f"fz_metric_{rnd.randrange(40)}"), ("instance", f"i{rnd.randrange(5)}"))
        start = NOW - rnd.randrange(HOUR)
        stamps = sorted({start + k * rnd.choice((1, 1000, 15_000)) for k in range(rnd.randint(1, 8))})
        out[labels] = (stamps, [rnd.uniform(-1e6, 1e6) for _ in stamps])
    return out


async def measure(chunks: int, windows: int, seed: int) -> list[dict[str, Any]]:
    """Fill a fresh SQLite store; per window: what the ingests of each device cost."""
    from backhaul.wire.chunk import Codec
    from collector.store.chunks import from_series
    from collector.store.sqlite import SqliteStore

    rnd = random.Random(seed)
    codec = Codec()
    steady = {(("__name__", f"node_{i}"), ("job", "node")): ([0], [1.0]) for i in range(50)}
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="backhaul-dupcheck-") as folder:
        store = SqliteStore(Path(folder) / "c.db", "NORMAL")
        await store.open()
        try:
            per_window = chunks // windows
            for w in range(windows):
                hostile: list[float] = []
                ordinary: list[float] = []
                capped = 0
                for k in range(per_window):
                    new = from_series(hostile_series(rnd), codec)
                    started = time.perf_counter()
                    result = await store.ingest("hostile", new, NOW)
                    hostile.append(time.perf_counter() - started)
                    capped += bool(getattr(result, "capped", False))
                    t = NOW - HOUR + (w * per_window + k) * 1000
                    mine = from_series({labels: ([t], [1.0]) for labels in steady}, codec)
                    started = time.perf_counter()
                    await store.ingest("ordinary", mine, NOW)
                    ordinary.append(time.perf_counter() - started)
                out.append(
                    {
                        "stored": (w + 1) * per_window,
                        "rate": per_window / (sum(hostile) + sum(ordinary)),
                        "hostile": _stats(hostile),
                        "ordinary": _stats(ordinary),
                        "capped": capped,
                    }
                )
        finally:
            await store.close()
    return out


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"mean": statistics.fmean(ms), "p99": ms[int(0.99 * (len(ms) - 1))], "max": ms[-1]}


def run_before(commit: str, chunks: int, windows: int, seed: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="backhaul-dupcheck-code-") as code:
        if not unpack(commit, Path(code)):
            raise SystemExit(f"git archive {commit} failed")
        tree = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{tree}"}
        args = ["--chunks", str(chunks), "--windows", str(windows), "--seed", str(seed), "--json"]
        done = subprocess.run(
            [sys.executable, "-P", "-m", "bench.dupcheck", *args], env=env, capture_output=True, text=True, check=True
        )
        result: list[dict[str, Any]] = json.loads(done.stdout)
        return result


def show(name: str, rows: list[dict[str, Any]]) -> None:
    print(f"{name}:")
    print("  stored  ingests/s  hostile mean/p99/max ms   ordinary mean/p99/max ms   capped")
    for r in rows:
        h, o = r["hostile"], r["ordinary"]
        print(
            f"  {r['stored']:6,}  {r['rate']:9,.0f}  {h['mean']:6.1f} {h['p99']:7.1f} {h['max']:7.1f}"
            f"     {o['mean']:6.1f} {o['p99']:7.1f} {o['max']:7.1f}     {r['capped']:5,}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=4000, help="the hostile device's chunks stored in all")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--before", help="also measure the code of this commit (e.g. main)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args(argv)
    rows = asyncio.run(measure(args.chunks, args.windows, args.seed))
    if args.json:
        print(json.dumps(rows))
        return 0
    if args.before:
        show(f"before ({args.before})", run_before(args.before, args.chunks, args.windows, args.seed))
    show("this tree", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
