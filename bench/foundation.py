"""Foundation benchmark: backhaul's wire size, buffer size and durable ingest, each next to a reference.

Run with ``make bench`` (or ``.venv/bin/python -m bench.foundation --quick`` for a smoke run).
Every figure is measured in this run on the same deterministic workload (bench/workload.py):

1. wire bytes per sample for batch windows of 10 s, 1 min, 5 min (and 1 h): the batches the agent
   would send, built with the agent's own BufferStore (one append per scrape, claim per window),
   against Prometheus remote write (snappy protobuf, 500 and 2,000 samples per request) and the
   same protobuf compressed with zstd (levels 1 and 3, as vmagent's protocol does);
2. bytes per sample in the buffer after compaction (chunk bytes, and the database file with WAL);
3. durable ingest through a real agent process over HTTP against a real Prometheus 2.42 receiving
   the same remote-write bodies: samples/s, CPU seconds, peak RSS.

The table goes to stdout and, as JSON, to bench/results/foundation-<timestamp>.json. The pieces:
bench/sizes.py (1, 2), bench/ingest.py (3), bench/drain.py (the backlog drain, with
``--drain-minutes``), bench/table.py (the table and its notes).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from backhaul import __version__
from bench import report
from bench.drain import run_drain
from bench.ingest import IngestResult, make_ingest_plan, run_ingest
from bench.progress import Progress
from bench.servers import ByteSink, Server, agent_server, prometheus_server, vmagent_server, vmagent_speaks_zstd
from bench.sizes import run_size_jobs
from bench.table import build_rows, notes_for, render
from bench.workload import INTERVAL_MS, WorkloadSpec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1000, help="approximate series count (replicates hosts)")
    ap.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="simulated scrape time for the size figures (default 60; 10 above 2,000 series, to stay near 3 min)",
    )
    ap.add_argument("--ingest-seconds", type=float, default=15, help="push duration per ingest target")
    ap.add_argument("--shards", type=int, default=6, help="concurrent remote-write connections")
    ap.add_argument(
        "--drain-minutes",
        type=float,
        default=0,
        help="also time the upload of a backlog of this many minutes to a real collector (0: skip)",
    )
    ap.add_argument("--quick", action="store_true", help="small everything: a smoke run of under 30 s")
    ap.add_argument("--no-prometheus", action="store_true", help="skip the Prometheus ingest reference")
    ap.add_argument(
        "--vmagent",
        default=os.environ.get("BACKHAUL_BENCH_VMAGENT") or shutil.which("vmagent"),
        help="a vmagent >= 1.88 binary for the zstd-protocol reference (bench/fetch-vmagent gets one)",
    )
    args = ap.parse_args(argv)
    if args.vmagent and not vmagent_speaks_zstd(args.vmagent):
        print(f"warning: {args.vmagent} predates vmagent's zstd protocol (1.88); its reference is skipped "
              "(bench/fetch-vmagent gets a newer one)", file=sys.stderr)  # fmt: skip
        args.vmagent = None
    if args.minutes is None:
        args.minutes = 60.0 if args.series <= 2000 else 10.0
    if args.quick:
        args.series, args.minutes, args.ingest_seconds = min(args.series, 1000), min(args.minutes, 6), 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall0 = time.monotonic()
    now_ms = int(time.time() * 1000)
    # The size figures replay a simulated stretch ending now, so its timestamps look like today's.
    spec = WorkloadSpec(args.series, args.minutes, now_ms - int(args.minutes * 60_000))
    workload = spec.build()
    windows_ms = [wm for wm in (10_000, 60_000, 300_000, 3_600_000) if wm <= args.minutes * 60_000]
    print(
        f"workload: {workload.n_series:,} series ({workload.replicas} host(s) of node_exporter + inference server), "
        f"{workload.n_rounds} scrapes every {INTERVAL_MS // 1000} s = {workload.samples:,} samples",
        file=sys.stderr,
    )
    prometheus = None if args.no_prometheus else shutil.which("prometheus")
    if prometheus is None and not args.no_prometheus:
        print("warning: prometheus not found on PATH; ingest reference skipped", file=sys.stderr)

    with Progress() as progress:
        sizes = run_size_jobs(spec, windows_ms, progress)
        progress.set("recording the ingest workload ...")
        ip = make_ingest_plan(args.series, args.shards, int(time.time() * 1000))
        ingest: list[IngestResult] = []
        targets: list[Callable[[Path], Server]] = [agent_server]
        if prometheus:
            targets.append(functools.partial(prometheus_server, binary=prometheus))
        for make in targets:
            with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                ingest.append(run_ingest(make(Path(tmp)), ip, args.ingest_seconds, progress))
        if args.vmagent:
            sink = ByteSink()
            try:
                with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                    server = vmagent_server(Path(tmp), args.vmagent, sink)
                    ingest.append(run_ingest(server, ip, args.ingest_seconds, progress, sink))
            finally:
                sink.close()
        drain = None
        if args.drain_minutes:
            drain_spec = WorkloadSpec(args.series, args.drain_minutes, now_ms - int(args.drain_minutes * 60_000))
            drain = run_drain(drain_spec, progress)
        progress.set("done")

    rows = build_rows(sizes, ingest, workload.n_series, drain)
    elapsed = time.monotonic() - wall0
    table = render(rows)
    print()
    print(
        f"backhaul {__version__} foundation benchmark: {workload.n_series:,} series, "
        f"{args.minutes:g} min of 5 s scrapes ({workload.samples:,} samples); "
        f"ingest {args.ingest_seconds:g} s per target over {args.shards} connections"
    )
    print(table)
    notes = notes_for(sizes, ingest)
    for note in notes:
        print(f"note: {note}")
    print(f"took {elapsed:.0f} s")

    report.save(
        "foundation",
        {
            "version": __version__,
            "args": vars(args),
            "elapsed_seconds": elapsed,
            "workload": {"series": workload.n_series, "rounds": workload.n_rounds, "samples": workload.samples},
            "rows": [asdict(r) for r in rows],
            "sizes": sizes,
            "ingest": [r.row() for r in ingest],
            "drain": drain,
            "notes": notes,
            "table": table,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
