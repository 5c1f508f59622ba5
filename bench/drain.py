"""Backlog drain: an hour of scrapes buffered while offline, then uploaded through real processes.

The backlog is written with the agent's own BufferStore exactly as an offline agent writes it (one
chunk per scrape, compacted on the 30 s maintenance timer). Then a real collector (embedded SQLite,
synchronous=FULL) and a real agent process on that buffer file start, and the clock runs from the
agent's start (its integrity check included) until the collector has stored every sample.

The figure is the drain rate as a multiple of real time: samples per second uploaded divided by
the rate at which the workload produces them (series / 5 s). Run alone with
``.venv/bin/python -m bench.drain --series 10000``; ``make bench`` runs it as part of the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backhaul.wire.series import SeriesMap
from bench.buffer import db_bytes, open_store, write_offline
from bench.progress import Progress
from bench.servers import agent_server, collector_server
from bench.workload import INTERVAL_MS, WorkloadSpec
from harness import metric_sum, read_metrics

STORED = "backhaul_collector_stored_samples_total"


def build_backlog(spec: WorkloadSpec, path: Path, progress: Progress) -> dict[str, Any]:
    """Write the workload into a buffer file as an agent that is offline the whole time would."""
    w = spec.build()
    done = 0

    def rounds() -> Iterator[tuple[int, SeriesMap]]:
        nonlocal done
        for item in w.rounds():
            yield item
            done += 1

    progress.set("drain: writing the backlog", lambda: f"{done:,}/{w.n_rounds:,} scrapes")
    with open_store(path) as store:
        write_offline(store, rounds())
        result = {"samples": store.totals.samples, "chunk_bytes": store.totals.bytes, "series": w.n_series}
    result["file_bytes"] = db_bytes(path)
    return result


def run_drain(spec: WorkloadSpec, progress: Progress, timeout: float = 1800) -> dict[str, Any]:
    """Build the backlog, then time its upload; returns the figures (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        workdir = Path(tmp)
        buffer = workdir / "buffer.db"
        backlog = build_backlog(spec, buffer, progress)
        total = backlog["samples"]
        collector = collector_server(workdir)
        collector_proc = collector.start()
        stored = 0.0
        progress.set("drain: uploading", lambda: f"{stored:,.0f}/{total:,} samples stored at the collector")
        agent = agent_server(workdir, buffer, collector.url)
        started = time.monotonic()
        agent_proc = agent.start()
        peak_rss = 0
        try:
            while stored < total:
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"drain incomplete after {timeout} s: {stored:,.0f} of {total:,} samples")
                peak_rss = max(peak_rss, agent_proc.memory_info().rss)
                stored = metric_sum(read_metrics(collector.url), STORED)
                time.sleep(0.1)
            seconds = time.monotonic() - started
            agent_cpu = sum(agent_proc.cpu_times()[:2])
            collector_cpu = sum(collector_proc.cpu_times()[:2])
            wire = metric_sum(read_metrics(agent.url), "backhaul_uplink_bytes_total")
        finally:
            agent.stop()
            collector.stop()
    produced_per_s = backlog["series"] / (INTERVAL_MS / 1000)
    return {
        **backlog,
        "seconds": seconds,
        "samples_per_s": total / seconds,
        "real_time_multiple": total / seconds / produced_per_s,
        "agent_cpu_seconds": agent_cpu,
        "collector_cpu_seconds": collector_cpu,
        "agent_peak_rss": peak_rss,
        "wire_bytes": wire,
        "stored": stored,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--minutes", type=float, default=60)
    args = ap.parse_args(argv)
    spec = WorkloadSpec(args.series, args.minutes, int(time.time() * 1000) - int(args.minutes * 60_000))
    with Progress() as progress:
        r = run_drain(spec, progress)
    print(
        f"drained {r['samples']:,} samples ({r['series']:,} series, {args.minutes:g} min, "
        f"{r['chunk_bytes'] / 2**20:.1f} MB buffered) in {r['seconds']:.1f} s: {r['samples_per_s']:,.0f} samples/s = "
        f"{r['real_time_multiple']:.0f}x real time; agent {r['agent_cpu_seconds']:.1f} CPU-s, peak RSS "
        f"{r['agent_peak_rss'] / 2**20:.0f} MB; collector {r['collector_cpu_seconds']:.1f} CPU-s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
