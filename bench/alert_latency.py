"""Alert latency while a large backlog drains over a slow link.

    python -m bench.alert_latency [--backlog-mb 500] [--alerts 30] [--kbit 1000] [--rtt-ms 100]

1. Builds a backlog in a fresh agent buffer through the BufferStore API (random-valued series, so
   they compress poorly and the bytes are real bytes to drain).
2. Starts a real collector, a shaping proxy (bench/shaper.py: ``--kbit`` each direction, shared by
   all connections packet by packet, ``--rtt-ms`` round trip) and a real agent whose uplink — bulk
   batches *and* the alert lane's HTTP channel — goes through the proxy.
3. Waits until the backlog drains, then ``--alerts`` times: pushes a sample over a rule's threshold
   by remote write and waits until ``GET /api/v1/alerts`` at the collector lists the alert firing;
   then pushes one under it and waits for "resolved". Latency is the collector's receive time minus
   (a) the push, (b) the agent's state change (the message's timestamp; same host, same clock).
4. Prints p50/p99/max and the bulk drain rate during the alert phase.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from backhaul.wire.series import SeriesMap
from bench.buffer import open_store
from bench.shaper import Shaper
from harness import READ, READ_HEADERS, TOKEN, Proc, free_port, http, metric_value, push, write_toml

SERIES_PER_CHUNK = 1000  # chunks of compact_target_samples: a backlog as compaction leaves it
SAMPLES_PER_SERIES = 100


def build_backlog(path: Path, megabytes: int, series_per_chunk: int = SERIES_PER_CHUNK) -> tuple[int, int]:
    """Fill a buffer with about ``megabytes`` of chunks; returns (bytes, samples)."""
    rnd = random.Random(7)
    start = int(time.time() * 1000) - 6 * 3600 * 1000
    step = 0
    started = time.monotonic()
    shown = 0
    budget = (megabytes + 64) * 1024**2
    with open_store(path, SERIES_PER_CHUNK * SAMPLES_PER_SERIES, budget, zstd_level=1) as store:
        while store.totals.bytes < megabytes * 1024**2:
            series: SeriesMap = {}
            for i in range(series_per_chunk):
                base = start + step * SAMPLES_PER_SERIES * 100
                stamps = [base + k * 100 for k in range(SAMPLES_PER_SERIES)]
                labels = (("__name__", f"bench_backlog_{i % 50}"), ("job", "bench"), ("series", str(i)))
                series[labels] = (stamps, [rnd.random() * 1000 for _ in range(SAMPLES_PER_SERIES)])
            store.append(series, 0, int(time.time() * 1000))
            step += 1
            mb = store.totals.bytes // 1024**2
            if mb >= shown + 50:
                shown = mb
                rate = mb / (time.monotonic() - started)
                print(f"  backlog: {mb} MB of {megabytes} ({rate:.1f} MB/s)", flush=True)
        return store.totals.bytes, store.totals.samples


def agent_config(port: int, proxy: int, buffer: Path, budget_mb: int) -> dict[str, Any]:
    return {
        "device_id": "dev-1",
        "shutdown_grace": 10,
        "log_level": "WARNING",
        "listen": {"host": "127.0.0.1", "port": port},
        "buffer": {"path": buffer, "budget_bytes": f"{budget_mb}MiB", "synchronous": "NORMAL"},
        "uplink": {
            "url": f"http://127.0.0.1:{proxy}/api/v1/batches",
            "token": TOKEN,
            "batch_interval": 1,
            "batch_max_bytes": "256KiB",
            "timeout": 120,
            "backoff_min": 0.5,
            "backoff_max": 5,
        },
        "alerts": {
            "eval_interval": 5,
            "rules": [
                {
                    "name": "BenchTrigger",
                    "selector": 'bench_trigger{job="bench"}',
                    "op": ">",
                    "threshold": 0.5,
                    "severity": "critical",
                    "summary": "bench trigger {value}",
                }
            ],
        },
    }


def collector_config(port: int, db: Path) -> dict[str, Any]:
    return {
        "log_level": "WARNING",
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"path": db, "synchronous": "NORMAL"},
        "devices": [{"id": "dev-1", "token": TOKEN}],
        "read": READ,
    }


def listed(collector: str) -> dict[str, dict[str, object]]:
    _, body, _ = http("GET", f"{collector}/api/v1/alerts?device=dev-1", headers=READ_HEADERS)
    return {a["rule"]: a for a in json.loads(body)["alerts"]}


def trigger(agent: str, value: float, slow: list[float]) -> None:
    """Push one sample in the background: the answer waits for the buffer's commit, the alert does not."""

    def send() -> None:
        started = time.monotonic()
        now = int(time.time() * 1000)
        try:
            push(agent, {(("__name__", "bench_trigger"), ("job", "bench")): ([now], [value])})
        except OSError:
            pass
        slow.append(time.monotonic() - started)

    threading.Thread(target=send, daemon=True).start()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog-mb", type=int, default=500)
    parser.add_argument("--alerts", type=int, default=30, help="fire/resolve cycles")
    parser.add_argument("--kbit", type=float, default=1000, help="link rate per direction, kbit/s")
    parser.add_argument("--rtt-ms", type=float, default=100)
    parser.add_argument(
        "--series-per-chunk",
        type=int,
        default=SERIES_PER_CHUNK,
        help="x100 samples per backlog chunk; below 1000 the agent compacts the backlog while it drains",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bh-alert-bench-"))
    procs: list[Proc] = []
    try:
        print(f"building a {args.backlog_mb} MB backlog in {tmp}/agent.db ...", flush=True)
        t0 = time.monotonic()
        backlog_bytes, backlog_samples = build_backlog(tmp / "agent.db", args.backlog_mb, args.series_per_chunk)
        print(
            f"backlog: {backlog_bytes / 1e6:.1f} MB, {backlog_samples:,} samples in {time.monotonic() - t0:.0f} s",
            flush=True,
        )

        cport, pport, aport = free_port(), free_port(), free_port()
        collector, agent = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{aport}"
        write_toml(tmp / "collector.toml", collector_config(cport, tmp / "collector.db"))
        write_toml(tmp / "agent.toml", agent_config(aport, pport, tmp / "agent.db", args.backlog_mb + 64))
        rate = args.kbit * 1000 / 8
        with Shaper(pport, ("127.0.0.1", cport), rate, args.rtt_ms / 2000) as shaper:
            procs.append(Proc("backhaul-collector", tmp / "collector.toml", tmp / "collector.log").start())
            procs[-1].wait_healthy(collector, 30)
            procs.append(Proc("backhaul-agent", tmp / "agent.toml", tmp / "agent.log").start())
            print("agent starting (it checks the whole buffer file first) ...", flush=True)
            procs[-1].wait_healthy(agent, 300)
            print(
                f"link: {args.kbit:g} kbit/s each way, RTT {args.rtt_ms:g} ms; waiting for the drain to start",
                flush=True,
            )
            deadline = time.monotonic() + 120
            while metric_value(collector, "backhaul_collector_received_bytes_total") == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("no batch reached the collector in 120 s")
                time.sleep(0.2)
            drained0 = metric_value(collector, "backhaul_collector_received_bytes_total")
            link0, t_start = shaper.up.bytes, time.monotonic()

            answers: list[float] = []  # how long remote write took to answer (waits for the commit)
            from_push: list[float] = []
            from_fire: list[float] = []
            for i in range(args.alerts):
                for state, value in (("firing", 1.0), ("resolved", 0.0)):
                    before = listed(collector).get("BenchTrigger")
                    seen_ms = before["received_ms"] if before else 0
                    pushed = time.time()
                    trigger(agent, value, answers)
                    deadline = time.monotonic() + 30
                    while True:
                        now = listed(collector).get("BenchTrigger")
                        if now and now["state"] == state and now["received_ms"] != seen_ms:
                            break
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"alert {i} {state}: not at the collector after 30 s")
                        time.sleep(0.01)
                    received = float(now["received_ms"])  # type: ignore[arg-type]
                    from_push.append(received / 1000 - pushed)
                    from_fire.append((received - float(now["updated_ms"])) / 1000)  # type: ignore[arg-type]
                    time.sleep(random.uniform(0.2, 0.8))
                if (i + 1) % 5 == 0:
                    print(
                        f"  {i + 1}/{args.alerts} cycles; last push->collector {from_push[-2] * 1000:.0f} ms",
                        flush=True,
                    )
            elapsed = time.monotonic() - t_start
            drained = metric_value(collector, "backhaul_collector_received_bytes_total") - drained0
            link_bytes = shaper.up.bytes - link0
        remaining = metric_value(agent, "backhaul_buffer_bytes")

        def line(name: str, xs: list[float]) -> str:
            ms = [x * 1000 for x in xs]
            return (
                f"{name:<34} n={len(ms)}  p50 {statistics.median(ms):7.1f} ms  p99 {pct(ms, 0.99):7.1f} ms"
                f"  max {max(ms):7.1f} ms"
            )

        print()
        print(f"backlog {backlog_bytes / 1e6:.0f} MB; link {args.kbit:g} kbit/s each way, RTT {args.rtt_ms:g} ms")
        print(line("alert latency push -> collector", from_push))
        print(line("alert latency fire -> collector", from_fire))
        if answers:
            print(line("remote write answer (commit)", answers))
        print(
            f"bulk drain during the alert phase: {drained / elapsed / 1000:.1f} kB/s of batch bodies"
            f" ({drained * 8 / elapsed / 1000:.0f} kbit/s; link carried {link_bytes * 8 / elapsed / 1000:.0f} kbit/s"
            f" upstream of {args.kbit:g}) over {elapsed:.0f} s; {remaining / 1e6:.0f} MB still buffered"
        )
        return 0
    finally:
        for proc in procs:
            proc.kill()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
