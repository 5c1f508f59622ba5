"""Footprint benchmark: what the agent costs a small device next to vmagent and Prometheus in agent mode.

Run with ``make bench`` (its footprint section) or ``.venv/bin/python -m bench.footprint [--quick]``.
One real node_exporter is scraped every 5 s by three forwarders at once, each through its own
counting pass-through (so each is charged for the samples it was actually served):

- the agent (``backhaul-agent``, default buffer settings: ``synchronous = FULL``) uploading to a real
  collector, and a second one with ``buffer.source_commit_interval`` (``--source-commit-interval``,
  60 s) whose scrapes are committed together;
- vmagent 1.112 (``bench/fetch-vmagent``) remote-writing to a byte sink;
- Prometheus in agent mode (2.x ``--enable-feature=agent``, 3.x ``--agent``) remote-writing to the sink.

Each runs twice: first with nothing to scrape (idle: RSS after start, CPU and wake-ups with no
traffic), then scraping (load). The figures are read from ``/proc`` over a window that starts after a
warm-up, so start-up writes are not charged to the samples. Sync calls are counted by a second copy
of each forwarder running alongside under ``strace --seccomp-bpf`` (bench/procstat.py): tracing stops
a Go program at every signal its runtime sends itself, which multiplies its CPU and wake-ups, so the
traced copy gives only the sync-call counts. Samples = the sample lines of the pages
served (the series each forwarder adds itself, such as ``up``, are not counted for anyone).
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import procstat, report
from bench.servers import DEVICE, TOKEN, ByteSink, Server
from bench.table import Row, render
from harness import BIN, READ, Process, QuietHandler, free_port, write_toml

SCRAPE_SECONDS = 5
MB = 1024**2
Maker = Callable[[Path, str | None, str, int], Server]  # workdir, scrape target, remote, copy -> server


class CountingTarget:
    """A pass-through to node_exporter's /metrics that counts the samples it serves (one per sample line)."""

    def __init__(self, upstream: str) -> None:
        target = self
        self.samples = 0
        self.scrapes = 0

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                with urllib.request.urlopen(upstream, timeout=10) as reply:
                    body = reply.read()
                    content_type = reply.headers.get("Content-Type", "text/plain")
                target.samples += sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
                target.scrapes += 1
                self.answer(body, content_type)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="target", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Forwarder:
    """A forwarder as measured: its server, its pid, and (for the traced copy) its sync-call log."""

    server: Server
    synclog: Path | None = None
    pid: int = 0

    def start(self) -> None:
        self.server.start(timeout=60)
        self.pid = procstat.tracee(self.server.process.pid) if self.synclog else self.server.process.pid

    def stop(self) -> None:
        # SIGTERM to the program itself (not to strace), as systemd would send it.
        popen = self.server.process.popen
        if popen is None or popen.poll() is not None:
            return
        os.kill(self.pid, 15)
        try:
            popen.wait(60)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.server.name} ignored SIGTERM; killed it", file=sys.stderr)
            popen.kill()
            popen.wait()


def _under_strace(server: Server) -> Forwarder:
    synclog = server.workdir / f"{server.name}.sync.log"
    server.process.argv = procstat.traced(server.process.argv, synclog)
    return Forwarder(server, synclog)


def _scrape_yaml(target: str | None, remote_url: str) -> str:
    targets = f"\n    static_configs:\n      - targets: ['{target}']" if target else "\n    static_configs: []"
    return (
        f"global:\n  scrape_interval: {SCRAPE_SECONDS}s\n"
        f"scrape_configs:\n  - job_name: node{targets}\n"
        f"remote_write:\n  - url: {remote_url}/api/v1/write\n"
    )


def _device(copy: int) -> str:
    return DEVICE if copy == 0 else f"{DEVICE[:-1]}{copy + 1}"


def _token(copy: int) -> str:
    return f"{TOKEN}-{copy}"


def agent(source_commit_seconds: float = 0.0, first_copy: int = 0) -> Maker:
    """The agent with default settings but ``buffer.source_commit_interval``; copies from
    ``first_copy`` on get their own device ids and tokens."""

    def make(workdir: Path, target: str | None, collector_url: str, copy: int) -> Server:
        copy += first_copy
        port = free_port()
        scrape: dict[str, Any] = {"interval": f"PT{SCRAPE_SECONDS}S"}
        if target:
            scrape["targets"] = [{"job": "node", "url": f"http://{target}/metrics"}]
        config = {
            "device_id": _device(copy),
            "log_level": "WARNING",
            "listen": {"host": "127.0.0.1", "port": port},
            "buffer": {"path": workdir / "buffer.db", "source_commit_interval": f"PT{source_commit_seconds:g}S"},
            "scrape": scrape,
            "uplink": {"url": f"{collector_url}/api/v1/batches", "token": _token(copy)},
        }
        path = write_toml(workdir / "agent.toml", config)
        argv = [str(BIN / "backhaul-agent"), "run", "--config", str(path)]
        process = Process("agent", argv, workdir / "agent.log")
        return Server(process, f"http://127.0.0.1:{port}", "/healthz", workdir)

    return make


def vmagent(binary: str) -> Maker:
    def make(workdir: Path, target: str | None, sink_url: str, _copy: int) -> Server:
        port = free_port()
        config = workdir / "scrape.yml"
        config.write_text(_scrape_yaml(target, sink_url).split("remote_write:")[0])
        argv = [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-promscrape.config={config}",
            f"-remoteWrite.url={sink_url}/api/v1/write",
            f"-remoteWrite.tmpDataPath={workdir / 'vmagent-queue'}",
            "-loggerLevel=WARN",
        ]
        return Server(Process("vmagent", argv, workdir / "vmagent.log"), f"http://127.0.0.1:{port}", "/health", workdir)

    return make


def prometheus_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.split()[2] if out.startswith("prometheus, version") else "?"


def prometheus_agent(binary: str) -> Maker:
    agent_flag = "--agent" if prometheus_version(binary).startswith("3") else "--enable-feature=agent"

    def make(workdir: Path, target: str | None, sink_url: str, _copy: int) -> Server:
        port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(_scrape_yaml(target, sink_url))
        argv = [
            binary,
            agent_flag,
            f"--config.file={config}",
            f"--storage.agent.path={workdir / 'agent-wal'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        process = Process("prometheus", argv, workdir / "prometheus.log")
        return Server(process, f"http://127.0.0.1:{port}", "/-/ready", workdir)

    return make


@dataclass
class Figures:
    name: str
    samples: int = 0
    seconds: float = 0.0
    write_bytes: int = 0
    sync_calls: int = 0
    cpu_seconds: float = 0.0
    peak_rss: int = 0
    idle_rss: int = 0
    idle_seconds: float = 0.0
    idle_cpu_seconds: float = 0.0
    idle_wakeups: int = 0  # voluntary context switches, all threads
    idle_switches: int = 0  # voluntary and involuntary
    idle_sync_calls: int = 0
    idle_write_bytes: int = 0

    def per_sample(self, value: float) -> float | None:
        return value / self.samples if self.samples else None

    def per_hour(self, value: float) -> float:
        return value * 3600 / self.seconds if self.seconds else 0.0


Window = tuple[procstat.Reading, procstat.Reading, int, int]  # first and last reading, samples, sync calls


def _phase(
    makers: list[tuple[str, Maker, str]], upstream: str | None, warmup: float, seconds: float, root: Path
) -> dict[str, Window]:
    """Start two copies of every forwarder (the second under strace), each with its own counting target
    when ``upstream`` is given; wait out the warm-up, read each over ``seconds``, stop them."""
    runs: list[tuple[str, Forwarder, CountingTarget | None]] = []
    try:
        for name, make, remote in makers:
            for copy in (0, 1):
                counter = CountingTarget(upstream) if upstream else None
                workdir = root / f"{name}-{'load' if upstream else 'idle'}-{copy}"
                workdir.mkdir()
                server = make(workdir, counter.address if counter else None, remote, copy)
                forwarder = _under_strace(server) if copy else Forwarder(server)
                runs.append((name, forwarder, counter))
                forwarder.start()
        time.sleep(warmup)
        starts = [(procstat.read(f.pid, time.time()), c.samples if c else 0) for _, f, c in runs]
        time.sleep(seconds)
        ends = [procstat.read(f.pid, time.time()) for _, f, _ in runs]
    finally:
        for _, forwarder, counter in runs:
            forwarder.stop()
            if counter:
                counter.close()
    windows: dict[str, Window] = {}
    for (name, forwarder, counter), (start, served), end in zip(runs, starts, ends, strict=True):
        if forwarder.synclog is None:
            windows[name] = (start, end, counter.samples - served if counter else 0, 0)
        else:
            first, last, samples, _ = windows[name]
            windows[name] = (first, last, samples, procstat.sync_calls(forwarder.synclog, start.at, end.at))
    return windows


def collector(workdir: Path) -> Server:
    """A real collector (embedded SQLite store, synchronous = FULL) that knows every agent's devices."""
    port = free_port()
    config = {
        "log_level": "WARNING",
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"path": workdir / "collector.db"},
        "devices": [{"id": _device(copy), "token": _token(copy)} for copy in range(4)],
        "read": READ,
    }
    path = write_toml(workdir / "collector.toml", config)
    argv = [str(BIN / "backhaul-collector"), "run", "--config", str(path)]
    process = Process("collector", argv, workdir / "collector.log")
    return Server(process, f"http://127.0.0.1:{port}", "/healthz", workdir)


def run(args: argparse.Namespace) -> list[Figures]:
    sink = ByteSink()
    node_port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-", dir=args.workdir) as tmp:
        root = Path(tmp)
        argv = [args.node_exporter, f"--web.listen-address=127.0.0.1:{node_port}"]
        node = Process("node_exporter", argv, root / "node_exporter.log")
        cloud = collector(root)
        try:
            node.start().wait_ready(f"http://127.0.0.1:{node_port}/metrics", 30)
            cloud.start()
            makers: list[tuple[str, Maker, str]] = [("agent", agent(), cloud.url)]
            if args.source_commit_interval:
                makers.append(("agent-deferred", agent(args.source_commit_interval, first_copy=2), cloud.url))
            if args.vmagent:
                makers.append(("vmagent", vmagent(args.vmagent), sink.url))
            if args.prometheus:
                makers.append(("prometheus", prometheus_agent(args.prometheus), sink.url))
            figures = {name: Figures(name) for name, _, _ in makers}
            print(f"idle: {args.idle_seconds:g} s after {args.warmup:g} s ...", file=sys.stderr)
            for name, (start, end, _, syncs) in _phase(makers, None, args.warmup, args.idle_seconds, root).items():
                f = figures[name]
                f.idle_seconds = end.at - start.at
                f.idle_rss = end.rss
                f.idle_cpu_seconds = end.cpu_seconds - start.cpu_seconds
                f.idle_wakeups = end.voluntary_switches - start.voluntary_switches
                f.idle_switches = end.switches - start.switches
                f.idle_sync_calls = syncs
                f.idle_write_bytes = end.write_bytes - start.write_bytes
            print(
                f"load: {args.seconds:g} s of {SCRAPE_SECONDS} s scrapes after {args.warmup:g} s ...", file=sys.stderr
            )
            upstream = f"http://127.0.0.1:{node_port}/metrics"
            for name, (start, end, samples, syncs) in _phase(makers, upstream, args.warmup, args.seconds, root).items():
                f = figures[name]
                f.samples = samples
                f.seconds = end.at - start.at
                f.write_bytes = end.write_bytes - start.write_bytes
                f.cpu_seconds = end.cpu_seconds - start.cpu_seconds
                f.peak_rss = end.peak_rss
                f.sync_calls = syncs
        finally:
            cloud.stop()
            node.stop()
            sink.close()
    return list(figures.values())


def rows(figures: list[Figures], args_interval: float = 0.0) -> list[Row]:
    """The table: the agent with default settings against its references (and against itself with
    ``buffer.source_commit_interval = args_interval`` when that ran)."""
    ours, refs = figures[0], figures[1:]

    def row(figure: str, value: Callable[[Figures], float | None], target: str, fmt: str = "{:.2f}") -> Row:
        return Row(figure, value(ours), [(label(f), value(f)) for f in refs], target, fmt)

    def label(f: Figures) -> str:
        names = {"vmagent": "vmagent 1.112", "prometheus": "Prometheus agent mode"}
        return names.get(f.name, f"backhaul, source_commit_interval {args_interval:g} s")

    vm_cpu = next((f.per_sample(f.cpu_seconds * 1e6) for f in refs if f.name == "vmagent"), None)
    per_million = [(label(f), f.per_sample(f.cpu_seconds * 1e6)) for f in refs]
    return [
        row("disk bytes written per sample (/proc/PID/io write_bytes)", lambda f: f.per_sample(f.write_bytes), "<= 12"),
        row("disk bytes written per hour, MB", lambda f: f.per_hour(f.write_bytes) / MB, "-"),
        row("sync calls per hour (fsync, fdatasync, ...; strace)", lambda f: f.per_hour(f.sync_calls), "-", "{:,.0f}"),
        row("peak RSS under load, MB (VmHWM)", lambda f: f.peak_rss / MB, "<= 50 (1k series)", "{:.1f}"),
        row("idle RSS after start, MB", lambda f: f.idle_rss / MB, "<= 40", "{:.1f}"),
        Row(
            "CPU seconds per million samples",
            ours.per_sample(ours.cpu_seconds * 1e6),
            per_million,
            f"<= {1.2 * vm_cpu:.2f} (1.2x vmagent)" if vm_cpu else "<= 1.2x vmagent",
        ),
        row("idle CPU, % of a core", lambda f: 100 * f.idle_cpu_seconds / f.idle_seconds, "< 0.2", "{:.3f}"),
        row("idle wake-ups per second (voluntary switches)", lambda f: f.idle_wakeups / f.idle_seconds, "< 5"),
        row("idle context switches per second (all)", lambda f: f.idle_switches / f.idle_seconds, "-"),
        row("idle sync calls per hour", lambda f: f.idle_sync_calls * 3600 / f.idle_seconds, "-", "{:,.0f}"),
        row(
            "idle disk bytes written per hour, KB", lambda f: f.idle_write_bytes * 3.6 / f.idle_seconds, "-", "{:,.0f}"
        ),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, help="load window after the warm-up (300; --quick: 60)")
    ap.add_argument("--idle-seconds", type=float, help="idle window after the warm-up (60; --quick: 20)")
    ap.add_argument("--warmup", type=float, help="seconds after start before a window opens (15; --quick: 10)")
    ap.add_argument("--quick", action="store_true", help="shorter windows, unless given")
    ap.add_argument("--vmagent", default=os.environ.get("BACKHAUL_BENCH_VMAGENT") or shutil.which("vmagent"))
    ap.add_argument("--prometheus", default=shutil.which("prometheus"), help="2.x or 3.x, run in agent mode")
    ap.add_argument(
        "--node-exporter", default=shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    )
    ap.add_argument(
        "--source-commit-interval",
        type=float,
        default=60.0,
        help="seconds; also run the agent with buffer.source_commit_interval set so (60; 0: not)",
    )
    ap.add_argument("--workdir", default=None, help="where the forwarders keep their files (a real disk, not tmpfs)")
    args = ap.parse_args(argv)
    # --quick changes the defaults only: a window given on the command line is kept
    defaults = (60, 20, 10) if args.quick else (300, 60, 15)
    for name, default in zip(("seconds", "idle_seconds", "warmup"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, float(default))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.node_exporter or not shutil.which("strace"):
        print("footprint: needs node_exporter (prometheus-node-exporter) and strace", file=sys.stderr)
        return 1
    figures = run(args)
    table = render(rows(figures, args.source_commit_interval))
    versions = f"Prometheus {prometheus_version(args.prometheus)}" if args.prometheus else "no Prometheus"
    print()
    print(
        f"footprint: one node_exporter every {SCRAPE_SECONDS} s, {args.seconds:g} s of load, "
        f"{args.idle_seconds:g} s idle ({versions}); samples served: "
        + ", ".join(f"{f.name} {f.samples:,}" for f in figures)
    )
    print(table)
    report.save("footprint", {"args": vars(args), "figures": [asdict(f) for f in figures], "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
