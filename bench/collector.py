"""Collector benchmark (issue 15): simulated devices uploading real batches to real collectors.

    .venv/bin/python -m bench.collector            # about 5 minutes; --quick for a smoke run

Scenarios, each on the same load (bench/collector_load.py: one agent-like uploader per device,
batches of 10 s of the bench workload, tables by reference):

(a) one collector on SQLite (synchronous FULL); (b) two collectors on one PostgreSQL 15, requests
round robin over them as a balancer sends them; (c) (a) forwarding every sample to a real
VictoriaMetrics. References from the same run: VictoriaMetrics itself taking the same samples by
remote write (its CPU per million samples), and the row store of the code before chunks (commit
bench.collector_servers.ROW_STORE_COMMIT, run from ``git archive``; nothing of it is kept in the tree).

Printed per scenario: stored samples/s per collector CPU core, CPU seconds per million samples
(collector, PostgreSQL, VictoriaMetrics apart), p50/p99 batch latency, store bytes per sample on disk,
peak RSS, and the largest fleet one collector core serves at 1k series / 15 s per device. The table
goes to stdout and, as JSON, to bench/results/collector-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import report
from bench.collector_load import Driven, Load, build_load, drive, drive_rw, rw_bodies
from bench.collector_servers import (
    ROW_STORE_COMMIT,
    Postgres,
    collector,
    cpu_seconds,
    file_bytes,
    row_store_collector,
    victoria_metrics,
    vm_rows,
)
from bench.progress import Progress
from bench.servers import Server
from harness import get_json, wait_until

# A device at the reference rate: 1,000 series every 15 s.
DEVICE_RATE = 1000 / 15


@dataclass
class Result:
    name: str
    samples: int
    seconds: float
    collector_cpu: float
    postgres_cpu: float | None = None
    vm_cpu: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    disk_bytes: int | None = None
    peak_rss: int | None = None

    def per_million(self, cpu: float | None) -> float | None:
        return None if cpu is None or not self.samples else cpu / self.samples * 1e6

    @property
    def per_core(self) -> float | None:
        return self.samples / self.collector_cpu if self.collector_cpu else None


class Peak(threading.Thread):
    """The highest RSS of some processes, sampled every 50 ms."""

    def __init__(self, procs: list[psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, max(p.memory_info().rss for p in self.procs))
            time.sleep(0.05)

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return self.peak


def _latencies(result: Result, driven: Driven) -> None:
    result.p50_ms = driven.quantile(0.5) * 1000
    result.p99_ms = driven.quantile(0.99) * 1000


def run_sqlite(load: Load, devices: int, workdir: Path, vm: Server | None, progress: Progress) -> Result:
    name = "(c) SQLite, forwarding to VictoriaMetrics" if vm else "(a) one collector, SQLite"
    extra: dict[str, Any] = {"forward": [{"name": "vm", "url": f"{vm.url}/api/v1/write"}]} if vm else {}
    db = workdir / "collector.db"
    server = collector(workdir, "collector", devices, {"path": str(db)}, **extra)
    proc = server.start()
    vm_proc = vm.start() if vm else None
    try:
        watch = Peak([proc])
        watch.start()
        cpu0, vm0 = cpu_seconds(proc), cpu_seconds(vm_proc) if vm_proc else 0.0
        progress.set(f"{name}: uploading")
        driven = asyncio.run(drive([server.url], devices, load))
        if vm:
            progress.set(f"{name}: forwarding")
            wait_until(lambda: vm_rows(vm) >= driven.samples, 1800, "VictoriaMetrics to hold every sample", 0.2)
            wait_until(lambda: _queued(server) == 0, 600, "the forward spool to drain", 0.2)
        result = Result(name, driven.samples, driven.seconds, cpu_seconds(proc) - cpu0, peak_rss=watch.stop())
        if vm_proc:
            result.vm_cpu = cpu_seconds(vm_proc) - vm0
        _latencies(result, driven)
    finally:
        server.stop()
        if vm:
            vm.stop()
    result.disk_bytes = file_bytes(db)
    return result


def _queued(server: Server) -> int:
    forward = (get_json(f"{server.url}/healthz") or {}).get("forward", {})
    return sum(int(f.get("queued_samples", 0)) for f in forward.values())


def run_postgres(load: Load, devices: int, workdir: Path, progress: Progress) -> Result | None:
    name = "(b) two collectors, one PostgreSQL"
    pg = Postgres(Path(tempfile.mkdtemp(prefix="bench-pg-")))
    try:
        pg_proc = pg.start()
    except (OSError, RuntimeError) as exc:
        print(f"warning: PostgreSQL did not start ({exc}); scenario (b) skipped", file=sys.stderr)
        return None
    servers: list[Server] = []
    try:
        store = {"backend": "postgres", "dsn": pg.dsn(), "pool_size": 8}
        servers = [collector(workdir, f"pg-collector-{k}", devices, store) for k in "ab"]
        procs = [s.start() for s in servers]
        empty = pg.database_bytes()
        watch = Peak(procs)
        watch.start()
        cpu0 = sum(cpu_seconds(p) for p in procs)
        pg0 = cpu_seconds(pg_proc, with_children=True)
        progress.set(f"{name}: uploading")
        driven = asyncio.run(drive([s.url for s in servers], devices, load))
        result = Result(name, driven.samples, driven.seconds, sum(cpu_seconds(p) for p in procs) - cpu0)
        result.postgres_cpu = cpu_seconds(pg_proc, with_children=True) - pg0
        result.peak_rss = watch.stop()
        _latencies(result, driven)
        result.disk_bytes = pg.database_bytes() - empty
    finally:
        for s in servers:
            s.stop()
        pg.stop()
    return result


def run_vm_reference(load: Load, devices: int, workdir: Path, progress: Progress) -> Result | None:
    vm = victoria_metrics(workdir / "vm-ref")
    if vm is None:
        return None
    (workdir / "vm-ref").mkdir(exist_ok=True)
    progress.set("VictoriaMetrics reference: encoding remote write")
    bodies = rw_bodies(load, devices)
    samples = devices * load.samples_per_device
    proc = vm.start()
    try:
        cpu0 = cpu_seconds(proc)
        progress.set("VictoriaMetrics reference: remote write")
        driven = asyncio.run(drive_rw(f"{vm.url}/api/v1/write", bodies))
        wait_until(lambda: vm_rows(vm) >= samples, 600, "VictoriaMetrics to take every sample", 0.2)
        result = Result("VictoriaMetrics, remote write (reference)", samples, driven.seconds, 0.0)
        result.vm_cpu = cpu_seconds(proc) - cpu0
        _latencies(result, driven)
    finally:
        vm.stop()
    return result


def run_row_store(load: Load, devices: int, workdir: Path, progress: Progress) -> Result | None:
    name = f"row store of {ROW_STORE_COMMIT} (reference), SQLite"
    try:
        server = row_store_collector(workdir, workdir / "row-store-code", devices)
    except RuntimeError as exc:
        print(f"warning: {exc}; the row-store reference is skipped", file=sys.stderr)
        return None
    proc = server.start()
    try:
        watch = Peak([proc])
        watch.start()
        cpu0 = cpu_seconds(proc)
        progress.set(f"{name}: uploading")
        driven = asyncio.run(drive([server.url], devices, load))
        result = Result(name, driven.samples, driven.seconds, cpu_seconds(proc) - cpu0, peak_rss=watch.stop())
        _latencies(result, driven)
    finally:
        server.stop()
    result.disk_bytes = file_bytes(workdir / "row-store.db")
    return result


def render(results: list[Result]) -> str:
    def f(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else fmt.format(v)

    head = (
        f"{'scenario':<44} {'samples':>11} {'stored/s/core':>13} {'CPU s/M: coll':>13} {'pg':>6} {'vm':>6}"
        f" {'p50 ms':>7} {'p99 ms':>7} {'B/sample':>8} {'RSS MB':>7} {'devices/core':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        collector_cpu = r.per_million(r.collector_cpu or None)
        lines.append(
            f"{r.name:<44} {r.samples:>11,} {f(r.per_core, '{:,.0f}'):>13} {f(collector_cpu, '{:.2f}'):>13}"
            f" {f(r.per_million(r.postgres_cpu), '{:.2f}'):>6} {f(r.per_million(r.vm_cpu), '{:.2f}'):>6}"
            f" {f(r.p50_ms, '{:.1f}'):>7} {f(r.p99_ms, '{:.1f}'):>7}"
            f" {f(r.disk_bytes / r.samples if r.disk_bytes is not None and r.samples else None, '{:.2f}'):>8}"
            f" {f(r.peak_rss / 2**20 if r.peak_rss else None, '{:.0f}'):>7}"
            f" {f(r.per_core / DEVICE_RATE if r.per_core else None, '{:,.0f}'):>12}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--series", type=int, default=1000, help="series per device (the bench workload)")
    ap.add_argument("--minutes", type=float, default=10, help="of 5 s scrapes each device uploads")
    ap.add_argument("--batch-seconds", type=int, default=10, help="of scrapes per batch (an agent's batch_interval)")
    ap.add_argument("--reference-devices", type=int, default=10, help="devices for the two references")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a minute or two")
    ap.add_argument("--skip", default="", help="comma-separated: a,b,c,vm,rows")
    args = ap.parse_args(argv)
    if args.quick:
        args.devices, args.minutes, args.reference_devices = 10, 2, 4
    skip = set(filter(None, args.skip.split(",")))
    rounds = int(args.minutes * 12)
    load = build_load(args.series, rounds, max(1, args.batch_seconds // 5), int(time.time() * 1000) - 86_400_000)
    print(
        f"load: {args.devices} devices x {load.n_series:,} series, {len(load.batches)} batches of"
        f" {args.batch_seconds} s each = {args.devices * load.samples_per_device:,} samples",
        file=sys.stderr,
    )
    results: list[Result] = []
    wall = time.monotonic()
    with Progress() as progress:
        runs: tuple[tuple[str, Callable[[Path], Result | None]], ...] = (
            ("a", lambda d: run_sqlite(load, args.devices, d, None, progress)),
            ("b", lambda d: run_postgres(load, args.devices, d, progress)),
            ("c", lambda d: run_sqlite(load, args.devices, d, victoria_metrics(d), progress)),
            ("vm", lambda d: run_vm_reference(load, args.reference_devices, d, progress)),
            ("rows", lambda d: run_row_store(load, args.reference_devices, d, progress)),
        )
        for key, run in runs:
            if key in skip:
                continue
            with tempfile.TemporaryDirectory(prefix=f"bench-collector-{key}-") as tmp:
                found = run(Path(tmp))
            if found is not None:
                results.append(found)
        progress.set("done")
    table = render(results)
    print(
        f"\ncollector benchmark: {args.devices} devices x {load.n_series:,} series, batches of {args.batch_seconds} s"
        f" ({args.reference_devices} devices for the references); {time.monotonic() - wall:.0f} s"
    )
    print(table)
    print("devices/core: stored samples/s per collector core / (1,000 series / 15 s)")
    report.save("collector", {"args": vars(args), "results": [asdict(r) for r in results], "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
