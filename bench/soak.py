"""Crash-loop soak: the fault-injection crash loop (tests/faults/test_crash_loop.py), for hours.

A real collector and a real agent run from their console scripts (next to this Python) on
127.0.0.1, in a fresh work directory. A sender plays Prometheus (one scrape of ``--series`` series
every ``--interval`` s, each request retried until it is answered 2xx) while faults are injected at
random (seeded) moments, one every 1-4 s (weights 5:2:2:1; no collector fault during an outage):

    agent-kill          SIGKILL the agent (mid-ingest, mid-commit, mid-compaction, mid-upload ...);
                        half of them 0-4 ms after a new request went out (mid-decode or mid-commit)
    agent-term-kill     SIGTERM the agent, then SIGKILL it 0-100 ms later (mid-shutdown)
    collector-kill      SIGKILL the collector, restart it 0-2 s later
    collector-outage    stop the collector for a while; the agent keeps buffering (``--outage-max``,
                        by default 20 s, or with ``--budget`` long enough to fill the budget: evictions)

Killed processes are restarted at once, as systemd would. Before each agent restart, a copy of the
dead agent's database is searched for the request the sender was waiting on: if it was committed
before the agent could answer, the sender's retry commits it a second time ("committed twice").

At the end (``--minutes`` elapsed, or Ctrl-C) the faults stop, the agent drains to the collector
and the books are settled, per sample (the collector's export against what the sender had
acknowledged) and by count (the agent's persistent loss counters, as the collector reports them)::

    lost = acknowledged + committed twice - delivered - evicted - expired - dropped - corrupt

where "delivered" counts every copy the collector received in a batch it stored. The exit status is
1 if lost or duplicated (samples stored twice at the collector) is not 0, if an acknowledged sample
is missing beyond what was counted as evicted or expired, or if a stored value differs; 0 otherwise.

Run it from the repository root (no Makefile needed)::

    .venv/bin/python -m bench.soak                        # 30 minutes, seed 1
    .venv/bin/python -m bench.soak --minutes 240 --seed 7
    .venv/bin/python -m bench.soak --minutes 20 --budget 1MiB   # small budget: outages evict

The agent runs with the crash-loop test's settings: compaction every 0.2 s (5,000-sample target),
64 KiB batches every 0.1 s, backoff 0.2-2 s. The default load, 200 series every 0.1 s, adds about
7 million samples an hour to the collector's database (~200 MB an hour); the check at the end reads
them all back through the export API, one series at a time.

A status line is printed every ~10 s, a summary table at the end. Logs and databases stay in the
work directory (``--workdir``; a temporary one by default, removed after a clean run unless
``--keep``).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from pydantic import ByteSize, TypeAdapter

from backhaul.wire.series import SeriesMap
from harness import (
    LOSS_CAUSES,
    READ,
    TOKEN,
    Proc,
    ProcError,
    RecordingSender,
    agent_loss_counters,
    copy_database,
    export,
    free_port,
    metric_value,
    reported_losses,
    samples_at,
    write_toml,
)

DEVICE = "dev-1"
FAULTS = ("agent-kill", "agent-term-kill", "collector-kill", "collector-outage")
BYTES_PER_SAMPLE = 5.5  # in the agent's buffer after compaction, for SoakSender's noisy values (measured)


class SoakSender(RecordingSender):
    """The harness's :class:`~harness.RecordingSender` (one request per scrape, retried until answered,
    every attempt noted, values that barely compress) with wall-clock timestamps, remembering only the
    timestamps of the scrapes answered, so that it can run for days in little memory. The value of
    series ``i`` at ``ts`` is ``noisy_value(ts, i)``: checkable at the end."""

    def __init__(self, agent_url: str, series: int, interval: float) -> None:
        now = int(time.time() * 1000)
        super().__init__(
            agent_url, series, interval, noisy=True, start_ms=now, step_ms=1, timeout=30, keep_attempts=2000
        )
        self.acked_stamps: set[int] = set()
        self.unanswered_stamps: set[int] = set()

    def scrape(self) -> SeriesMap:
        self.next_ms = max(self.next_ms, int(time.time() * 1000))  # now, and never two scrapes at one ms
        return super().scrape()

    def acknowledged(self, part: SeriesMap) -> None:
        self.acked_stamps.add(_stamp(part))

    def abandoned(self, part: SeriesMap) -> None:
        self.unanswered_stamps.add(_stamp(part))  # never answered, but perhaps committed


def _stamp(part: SeriesMap) -> int:
    """The timestamp of a scrape's request (all its samples share it)."""
    stamps, _ = next(iter(part.values()))
    return stamps[0]


def rss_mb(proc: Proc) -> float:
    try:
        return float(proc.ps().memory_info().rss) / 2**20
    except psutil.Error:
        return 0.0


@dataclass
class Stats:
    cycles: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))
    agent_restarts: list[float] = field(default_factory=list)  # SIGKILL -> /healthz 200, s
    agent_rss_after_restart: list[float] = field(default_factory=list)
    agent_rss_max: float = 0.0
    collector_restarts: int = 0
    committed_twice: int = 0  # samples
    committed_unanswered_kills: int = 0
    in_flight_kills: int = 0
    mid_shutdown_kills: int = 0
    undecided: int = 0  # samples perhaps committed twice (see _count_committed)
    partial_commits: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.stats = Stats()
        self.db = workdir / "agent.db"
        self.collector_url = f"http://127.0.0.1:{free_port()}"
        self.agent_url = f"http://127.0.0.1:{free_port()}"
        write_toml(
            workdir / "collector.toml",
            {
                "listen": {"host": "127.0.0.1", "port": int(self.collector_url.rsplit(":", 1)[1])},
                "store": {"path": workdir / "collector.db"},
                "devices": [{"id": DEVICE, "token": TOKEN}],
                "read": READ,
            },
        )
        write_toml(
            workdir / "agent.toml",
            {
                "device_id": DEVICE,
                "shutdown_grace": 10,
                "listen": {"host": "127.0.0.1", "port": int(self.agent_url.rsplit(":", 1)[1])},
                "buffer": {
                    "path": self.db,
                    "budget_bytes": args.budget,
                    "maintenance_interval": 0.2,
                    "compact_target_samples": 5000,
                },
                "uplink": {
                    "url": f"{self.collector_url}/api/v1/batches",
                    "token": TOKEN,
                    "batch_interval": 0.1,
                    "batch_max_bytes": "64KiB",
                    "backoff_min": 0.2,
                    "backoff_max": 2,
                    "timeout": 10,
                },
            },
        )
        # detached: a Ctrl-C in the terminal reaches the soak, which then settles the books
        self.collector = Proc(
            "backhaul-collector", workdir / "collector.toml", workdir / "collector.log", detached=True
        )
        self.agent = Proc("backhaul-agent", workdir / "agent.toml", workdir / "agent.log", detached=True)
        self.sender = SoakSender(self.agent_url, args.series, args.interval)
        self.outage_until: float | None = None
        self._suspects: set[int] = set()
        self._last: dict[str, float] = {}

    # -- faults --------------------------------------------------------------------------------------

    def kill_agent(self, term_first: bool) -> None:
        assert self.agent.popen is not None
        self.stats.agent_rss_max = max(self.stats.agent_rss_max, rss_mb(self.agent))
        if not term_first and self.rng.random() < 0.5:
            # aim at a request: decoding it, waiting for its group commit, committing it
            self.sender.fresh.clear()
            self.sender.fresh.wait(5)
            time.sleep(self.rng.uniform(0.0, 0.004))
        signal_at = time.monotonic()
        if term_first:
            self.agent.popen.send_signal(signal.SIGTERM)
            deadline = signal_at + self.rng.uniform(0.0, 0.1)  # a clean stop takes ~0.1 s
            while time.monotonic() < deadline and self.agent.popen.poll() is None:
                time.sleep(0.001)
            self.stats.mid_shutdown_kills += self.agent.popen.poll() is None
        sigkill_at = time.monotonic()
        self.agent.kill()
        dead_at = time.monotonic()
        # The sender's request in flight dies with the connection; was it committed unanswered?
        overlapping = [a for a in self.sender.attempts.copy() if a.start <= dead_at]
        deadline = time.monotonic() + 5
        while any(a.end is None for a in overlapping) and time.monotonic() < deadline:
            time.sleep(0.001)
        died = {a.ts for a in overlapping if a.status == 0 and a.end is not None and a.end >= signal_at}
        self.stats.in_flight_kills += any(a.start <= signal_at for a in overlapping if a.ts in died)
        dead = Path(tempfile.mkdtemp(prefix="dead-", dir=self.workdir)) if died else None
        copy = copy_database(self.db, dead / "agent.db") if dead else None
        started_at = time.monotonic()
        self.agent.start().wait_healthy(self.agent_url, 60, interval=0.01)
        self.stats.agent_restarts.append((dead_at - sigkill_at) + (time.monotonic() - started_at))
        rss = rss_mb(self.agent)
        self.stats.agent_rss_after_restart.append(rss)
        self.stats.agent_rss_max = max(self.stats.agent_rss_max, rss)
        if copy is not None:
            self._count_committed(copy, died)
            shutil.rmtree(copy.parent)

    def _count_committed(self, db: Path, stamps: set[int]) -> None:
        for ts in stamps:
            found = samples_at(db, ts)
            if found % self.sender.series:  # a commit is one transaction: this would be a bug
                print(f"!! request {ts} was partly committed: {found} samples", flush=True)
                self.stats.partial_commits += 1
            if found:
                self.stats.committed_unanswered_kills += 1
                if ts in self._suspects:
                    # unanswered at two kills in a row: the copy found may be the earlier one
                    self.stats.undecided += self.sender.series
                else:
                    self._suspects.add(ts)
                    self.stats.committed_twice += found

    def kill_collector(self) -> None:
        self.collector.kill()
        time.sleep(self.rng.uniform(0.0, 2.0))
        self.start_collector()

    def start_collector(self) -> None:
        self.collector.start().wait_healthy(self.collector_url, 60, interval=0.01)
        self.stats.collector_restarts += 1

    def inject(self) -> None:
        if self.outage_until is not None and time.monotonic() >= self.outage_until:
            self.outage_until = None
            self.start_collector()
        faults = ["agent-kill"] * 5 + ["agent-term-kill"] * 2
        if self.outage_until is None:
            faults += ["collector-kill"] * 2 + ["collector-outage"]
        fault = self.rng.choice(faults)
        self.stats.cycles[fault] += 1
        if fault == "agent-kill":
            self.kill_agent(term_first=False)
        elif fault == "agent-term-kill":
            self.kill_agent(term_first=True)
        elif fault == "collector-kill":
            self.kill_collector()
        else:
            self.collector.stop()
            self.outage_until = time.monotonic() + self.rng.uniform(self.args.outage_max / 4, self.args.outage_max)

    # -- reporting -----------------------------------------------------------------------------------

    def _metric(self, key: str, url: str, name: str, labels: str = "") -> float:
        try:
            self._last[key] = metric_value(url, name, labels)
        except OSError:
            pass  # down right now: show the last value seen
        return self._last.get(key, 0.0)

    def status(self, started: float) -> None:
        elapsed = time.monotonic() - started
        n = self.sender.series
        delivered = self._metric(
            "delivered", self.collector_url, "backhaul_collector_device_received_samples_total", f'device="{DEVICE}"'
        )
        try:  # the agent's persistent counter (its /metrics counter restarts with the process)
            self._last["evicted"] = agent_loss_counters(self.db)["evicted"]
        except sqlite3.Error:
            pass
        evicted = self._last.get("evicted", 0)
        backlog = self._metric("backlog", self.agent_url, "backhaul_buffer_samples")
        rss = rss_mb(self.agent)
        self.stats.agent_rss_max = max(self.stats.agent_rss_max, rss)
        print(
            f"[{int(elapsed) // 3600:02d}:{int(elapsed) % 3600 // 60:02d}:{int(elapsed) % 60:02d}]"
            f" cycles {sum(self.stats.cycles.values()):5d}  acknowledged {len(self.sender.acked_stamps) * n:>10,}"
            f"  delivered {int(delivered):>10,}  backlog {int(backlog):>8,}  evicted {int(evicted):>8,}"
            f"  restarts {len(self.stats.agent_restarts):4d}  agent RSS {rss:5.1f} MB"
            + ("  (collector down)" if self.outage_until is not None else ""),
            flush=True,
        )

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> int:
        self.start_collector()
        self.stats.collector_restarts = 0
        self.agent.start().wait_healthy(self.agent_url, 60, interval=0.01)
        self.sender.start()
        started = time.monotonic()
        end = started + self.args.minutes * 60
        next_status = started + 10
        print(
            f"soak: seed {self.args.seed}, {self.args.minutes} min, budget {self.args.budget},"
            f" outages up to {self.args.outage_max:.0f} s, work directory {self.workdir}",
            flush=True,
        )
        try:
            while time.monotonic() < end:
                pause_until = time.monotonic() + self.rng.uniform(1.0, 4.0)
                while time.monotonic() < min(pause_until, end):
                    if time.monotonic() >= next_status:
                        self.status(started)
                        next_status += 10
                    time.sleep(0.05)
                if time.monotonic() < end:
                    self.inject()
        except KeyboardInterrupt:
            print("interrupted: settling the books (Ctrl-C again to abort)", flush=True)
        self.status(started)
        return self.settle()

    def settle(self) -> int:
        if self.outage_until is not None or self.collector.popen is None or self.collector.popen.poll() is not None:
            self.outage_until = None
            self.start_collector()
        if self.agent.popen is None or self.agent.popen.poll() is not None:  # interrupted mid-restart
            self.agent.start().wait_healthy(self.agent_url, 60, interval=0.01)
        time.sleep(1.0)
        self.sender.stop(120)
        n = self.sender.series
        print("faults stopped; draining the agent's buffer ...", flush=True)
        deadline = time.monotonic() + 1800
        while metric_value(self.agent_url, "backhaul_buffer_samples") > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the agent's buffer did not drain in 30 minutes")
            time.sleep(0.5)
        agent_losses = agent_loss_counters(self.db)
        deadline = time.monotonic() + 120
        while (reported := reported_losses(self.collector_url, DEVICE)) != agent_losses:
            if time.monotonic() > deadline:
                raise RuntimeError(f"collector reports losses {reported}, the agent's database says {agent_losses}")
            time.sleep(0.2)
        losses = agent_losses

        # sample by sample: the collector's contents against what was acknowledged
        acked, maybe = self.sender.acked_stamps, self.sender.unanswered_stamps
        distinct = missing_acked = invented = wrong = 0
        for i in range(n):
            got: dict[int, float] = {}
            for line in export(self.collector_url, f'{{job="sender",series="{i}"}}'):
                got.update(zip(line["timestamps"], (float(v) for v in line["values"]), strict=True))
            distinct += len(got)
            missing_acked += len(acked - got.keys())
            invented += len(got.keys() - acked - maybe)
            wrong += sum(1 for ts, v in got.items() if v != SoakSender.noisy_value(ts, i))
        stored = metric_value(
            self.collector_url, "backhaul_collector_device_received_samples_total", f'device="{DEVICE}"'
        )
        recognised = metric_value(
            self.collector_url, "backhaul_collector_device_duplicate_samples_total", f'device="{DEVICE}"'
        )
        maybe_arrived = distinct - (len(acked) * n - missing_acked)  # unanswered at the very end, yet stored
        acknowledged = len(acked) * n + maybe_arrived
        delivered = int(stored + recognised)
        lost = acknowledged + self.stats.committed_twice - delivered - sum(losses.values())
        duplicated = int(stored) - distinct

        s = self.stats
        restarts = s.agent_restarts or [0.0]
        after_restart = s.agent_rss_after_restart or [0.0]
        twice = f"{s.committed_twice:,}"
        if s.undecided:  # the same request unanswered at two kills in a row: its second copy is uncertain
            twice += f"  (+ 0 or up to {s.undecided:,} more: undecided; lost may be that much below 0)"
        if s.partial_commits:
            twice += f"  !! {s.partial_commits} requests found partly committed"
        rows = [
            ("cycles", f"{sum(s.cycles.values())}  (" + ", ".join(f"{k} {v}" for k, v in s.cycles.items()) + ")"),
            ("  agent kills with a request in flight", f"{s.in_flight_kills}"),
            ("  ... committed but unanswered", f"{s.committed_unanswered_kills}"),
            ("  agent kills mid-shutdown", f"{s.mid_shutdown_kills}"),
            ("samples acknowledged", f"{acknowledged:,}" + (f"  ({maybe_arrived} unanswered at stop)" * bool(maybe))),
            ("committed twice", twice),
            ("delivered", f"{delivered:,}  (stored {int(stored):,} + recognised duplicates {int(recognised):,})"),
            *((cause, f"{losses[cause]:,}") for cause in LOSS_CAUSES),
            ("lost", f"{lost:,}"),
            ("duplicated", f"{duplicated:,}"),
            ("acknowledged, missing", f"{missing_acked:,}  (at most evicted + expired)"),
            ("not acknowledged, stored", f"{invented:,}"),
            ("values changed", f"{wrong:,}"),
            (
                "agent restart (SIGKILL -> /healthz 200)",
                f"{len(s.agent_restarts)}: mean {statistics.mean(restarts):.2f} s, max {max(restarts):.2f} s",
            ),
            (
                "agent RSS",
                f"max {s.agent_rss_max:.1f} MB, after restart max {max(after_restart):.1f} MB",
            ),
            ("sender retries / refused", f"{self.sender.retries:,} / {len(self.sender.refused)}"),
        ]
        width = max(len(k) for k, _ in rows)
        print()
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        ok = (
            -s.undecided <= lost <= 0
            and s.partial_commits == 0
            and duplicated == 0
            and missing_acked <= losses["evicted"] + losses["expired"]
            and invented == 0
            and wrong == 0
            and not self.sender.refused
        )
        print("\nPASS" if ok else "\nFAIL", flush=True)
        return 0 if ok else 1

    def close(self) -> None:
        for proc in (self.agent, self.collector):
            if proc.popen is not None and proc.popen.poll() is None:
                try:
                    proc.stop()
                except ProcError:
                    pass  # it ignored SIGTERM and was killed: nothing left to stop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30, help="how long to inject faults (default 30)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1)")
    ap.add_argument(
        "--budget", default="64MiB", help='agent buffer.budget_bytes (default 64MiB; "1MiB" makes outages evict)'
    )
    ap.add_argument(
        "--outage-max",
        type=float,
        help="longest collector outage, s (default 20; with --budget, twice the time the sender needs to fill it)",
    )
    ap.add_argument("--series", type=int, default=200, help="series per scrape (default 200)")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between scrapes (default 0.1)")
    ap.add_argument("--workdir", type=Path, help="work directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory after a clean run")
    args = ap.parse_args(argv)
    if args.outage_max is None:
        budget = TypeAdapter(ByteSize).validate_python(args.budget)
        fill = budget / (BYTES_PER_SAMPLE * args.series / args.interval)  # s, collector down
        args.outage_max = 20.0 if args.budget == "64MiB" else max(20.0, round(2 * fill))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="backhaul-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, workdir)
    status = 1
    try:
        status = soak.run()
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        status = 130
    except ProcError as exc:
        print(f"soak failed: {exc.name} {exc.reason}; see {exc.log}", file=sys.stderr)
    finally:
        soak.close()
        if status == 0 and not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs and databases kept in {workdir}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
