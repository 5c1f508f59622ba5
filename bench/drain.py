"""Backlog drain: an hour of scrapes buffered while offline, then uploaded through real processes.

The backlog is written with the agent's own BufferStore exactly as an offline agent writes it (one
chunk per scrape, compacted on the 30 s maintenance timer). Then a real collector (embedded SQLite,
synchronous=FULL) and a real agent process on that buffer file start, and the clock runs from the
agent's start (its integrity check included) until the collector has stored every sample.

The figure is the drain rate as a multiple of real time: samples per second uploaded divided by
the rate at which the workload produces them (series / 5 s). Run alone with
``.venv/bin/python bench/drain.py --series 10000``; ``make bench`` runs it as part of the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from foundation import (
    AGENT_DEFAULT_TARGET_SAMPLES,
    COMPACT_INTERVAL_MS,
    DEVICE,
    Progress,
    Server,
    WorkloadSpec,
    _db_bytes,
    _store,
    free_port,
    http_text,
    metric_sum,
)
from workload import INTERVAL_MS

TOKEN = "bench-drain-token"
STORED = "backhaul_collector_stored_samples_total"


def build_backlog(spec: WorkloadSpec, path: Path, progress: Progress) -> dict[str, Any]:
    """Write the workload into a buffer file as an agent that is offline the whole time would."""
    w = spec.build()
    store = _store(path, AGENT_DEFAULT_TARGET_SAMPLES)
    every = max(1, COMPACT_INTERVAL_MS // INTERVAL_MS)
    done = 0
    progress.set("drain: writing the backlog", lambda: f"{done:,}/{w.n_rounds:,} scrapes")
    try:
        last = 0
        for i, (base, series) in enumerate(w.rounds()):
            store.append(series, 0, base)
            last = base
            done = i + 1
            if done % every == 0:
                store.compact(base + INTERVAL_MS)
        while store.compact(last + INTERVAL_MS):
            pass
        result = {"samples": store.totals.samples, "chunk_bytes": store.totals.bytes, "series": w.n_series}
    finally:
        store.close()
        store.worker.shutdown()
    result["file_bytes"] = _db_bytes(path)
    return result


def _launcher(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", name.replace("backhaul-", "") + ".cli"]


def _env() -> dict[str, str]:
    # BACKHAUL_* variables in our environment would override the config files: leave them out.
    return {k: v for k, v in os.environ.items() if not k.startswith("BACKHAUL_")}


def collector_server(workdir: Path) -> Server:
    port = free_port()
    config = workdir / "collector.toml"
    config.write_text(
        f'log_level = "WARNING"\n\n[listen]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[store]\npath = "{workdir / "collector.db"}"\n\n'
        f'[[devices]]\nid = "{DEVICE}"\ntoken = "{TOKEN}"\n'
    )
    argv = [*_launcher("backhaul-collector"), "run", "--config", str(config)]
    return Server("collector", argv, f"http://127.0.0.1:{port}", "/healthz", workdir, _env())


def agent_server(workdir: Path, buffer: Path, collector_url: str) -> Server:
    port = free_port()
    config = workdir / "agent.toml"
    # Uplink settings are the defaults (4 MiB batches, sent back to back while a backlog remains).
    config.write_text(
        f'device_id = "{DEVICE}"\nlog_level = "WARNING"\n\n'
        f'[listen]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[buffer]\npath = "{buffer}"\nbudget_bytes = {8 * 1024**3}\n\n'
        f'[uplink]\nurl = "{collector_url}/api/v1/batches"\ntoken = "{TOKEN}"\n'
    )
    argv = [*_launcher("backhaul-agent"), "run", "--config", str(config)]
    return Server("agent", argv, f"http://127.0.0.1:{port}", "/healthz", workdir, _env())


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
                stored = metric_sum(http_text(collector.url + "/metrics"), STORED)
                time.sleep(0.1)
            seconds = time.monotonic() - started
            agent_cpu = sum(agent_proc.cpu_times()[:2])
            collector_cpu = sum(collector_proc.cpu_times()[:2])
            wire = metric_sum(http_text(agent.url + "/metrics"), "backhaul_uplink_bytes_total")
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
