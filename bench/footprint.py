"""Footprint benchmark: what the agent costs a small device next to vmagent and Prometheus in agent mode.

Run with ``make bench`` (its footprint section) or ``.venv/bin/python -m bench.footprint [--quick]``.
Every forwarder scrapes the same page every 5 s, each through its own counting pass-through (so each
is charged for the samples it was actually served; bench/pages.py). The page is one real
node_exporter's, or with ``--series N`` the bench workload's N series as text (bench/workload.py),
optionally churning (``--churn``, the share of series renamed at every scrape). The forwarders
(bench/forwarders.py):

- the agent (``backhaul-agent``, default buffer settings: ``synchronous = FULL``) uploading to a real
  collector, and a second one with ``buffer.source_commit_interval`` (``--source-commit-interval``,
  60 s) whose scrapes are committed together;
- vmagent 1.112 (``bench/fetch-vmagent``) remote-writing to a byte sink;
- Prometheus in agent mode (2.x ``--enable-feature=agent``, 3.x ``--agent``) remote-writing to the sink.

Each runs twice: first with nothing to scrape (idle: RSS after start, CPU and wake-ups with no
traffic), then scraping (load). The figures are read from ``/proc`` over a window that starts after a
warm-up, so start-up writes are not charged to the samples, and again every ``--span`` seconds within
it (the RSS timeline, which shows a plateau under churn or its absence). With ``--outage-seconds``
the load window is an outage (the collector stopped, the sink answering 503) followed by a drain of
``--drain-seconds`` (both up again), each reported on its own. Sync calls are counted by a second
copy of each forwarder running alongside under ``strace --seccomp-bpf`` (bench/procstat.py): tracing
stops a Go program at every signal its runtime sends itself, which multiplies its CPU and wake-ups,
so the traced copy gives only the sync-call counts. Samples = the sample lines of the pages served
(the series each forwarder adds itself, such as ``up``, are not counted for anyone).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import procstat, report
from bench.forwarders import (
    SCRAPE_SECONDS,
    Forwarder,
    Maker,
    agent,
    collector,
    prometheus_agent,
    prometheus_version,
    under_strace,
    vmagent,
)
from bench.pages import CountingTarget, Pages, SyntheticPages, Upstream
from bench.servers import ByteSink, Server
from bench.table import Row, render
from harness import Process, free_port, http

MB = 1024**2
DRAINED_AGE = 30.0  # s: the oldest unsent sample is younger than this once a backlog has gone


@dataclass
class Span:
    """One stretch of a load window, as read from /proc at its two ends (and the traced copy's log)."""

    stage: str  # "load", "outage" or "drain"
    seconds: float
    samples: int
    write_bytes: int
    sync_calls: int
    cpu_seconds: float
    rss: int  # at its end
    peak_rss: int  # VmHWM at its end


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
    spans: list[Span] = field(default_factory=list)
    drained_after: float | None = None  # agents: seconds into the drain until the backlog had gone
    backlog_bytes: float | None = None  # agents: backhaul_buffer_bytes when the outage ended

    def per_sample(self, value: float) -> float | None:
        return value / self.samples if self.samples else None

    def per_hour(self, value: float) -> float:
        return value * 3600 / self.seconds if self.seconds else 0.0

    def stage(self, stage: str) -> Span | None:
        """The spans of one stage added up (rss and peak: the last and the highest)."""
        spans = [s for s in self.spans if s.stage == stage]
        if not spans:
            return None
        return Span(
            stage,
            sum(s.seconds for s in spans),
            sum(s.samples for s in spans),
            sum(s.write_bytes for s in spans),
            sum(s.sync_calls for s in spans),
            sum(s.cpu_seconds for s in spans),
            spans[-1].rss,
            max(s.peak_rss for s in spans),
        )


@dataclass
class Stage:
    """What happens in a load window: ``seconds`` of ``stage``, read every ``span`` seconds; ``begin``
    runs when it starts (after the reading that opens it), ``watch`` once a second during it."""

    stage: str
    seconds: float
    span: float
    begin: Callable[[dict[str, Server]], None] | None = None  # given the measured (untraced) copies
    watch: Callable[[float, dict[str, Server]], None] | None = None  # and seconds since the stage began


def agent_gauge(server: Server, name: str) -> float | None:
    """One unlabelled gauge from an agent's /metrics (None if it does not answer)."""
    try:
        status, body, _ = http("GET", server.url + "/metrics", timeout=5)
    except OSError:
        return None
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@dataclass
class Marks:
    """A measured forwarder's readings at every span boundary, with the samples served by then and the
    traced copy's sync calls within each span."""

    readings: list[procstat.Reading] = field(default_factory=list)
    served: list[int] = field(default_factory=list)
    syncs: list[int] = field(default_factory=list)

    def spans(self, stages: list[str]) -> list[Span]:
        r, n = self.readings, self.served
        return [
            Span(
                stage,
                r[k + 1].at - r[k].at,
                n[k + 1] - n[k],
                r[k + 1].write_bytes - r[k].write_bytes,
                self.syncs[k],
                r[k + 1].cpu_seconds - r[k].cpu_seconds,
                r[k + 1].rss,
                r[k + 1].peak_rss,
            )
            for k, stage in enumerate(stages)
        ]


def _phase(
    makers: list[tuple[str, Maker, str]], pages: Pages | None, warmup: float, stages: list[Stage], root: Path
) -> tuple[dict[str, Marks], list[str]]:
    """Start two copies of every forwarder (the second under strace), each with its own counting target
    when ``pages`` is given; wait out the warm-up, go through ``stages`` reading each copy at every span
    boundary, stop them. Returns the measured copies' marks and the stage of each span."""
    runs: list[tuple[str, Forwarder, CountingTarget | None]] = []
    boundaries: list[list[tuple[procstat.Reading, int]]] = []
    span_stages: list[str] = []

    def mark() -> None:
        for (_, forwarder, counter), marks in zip(runs, boundaries, strict=True):
            marks.append((procstat.read(forwarder.pid, time.time()), counter.samples if counter else 0))

    try:
        for name, make, remote in makers:
            for copy in (0, 1):
                counter = CountingTarget(pages) if pages else None
                workdir = root / f"{name}-{'load' if pages else 'idle'}-{copy}"
                workdir.mkdir()
                server = make(workdir, counter.address if counter else None, remote, copy)
                forwarder = under_strace(server) if copy else Forwarder(server)
                runs.append((name, forwarder, counter))
                boundaries.append([])
                forwarder.start()
        measured = {name: f.server for name, f, _ in runs if f.synclog is None}
        time.sleep(warmup)
        mark()
        for stage in stages:
            if stage.begin:
                stage.begin(measured)
            began = time.monotonic()
            ends = [began + k * stage.span for k in range(1, int(stage.seconds / stage.span + 0.5))]
            for end in [*ends, began + stage.seconds]:
                while (left := end - time.monotonic()) > 0:
                    if stage.watch:
                        stage.watch(time.monotonic() - began, measured)
                    time.sleep(min(1.0, left))
                mark()
                span_stages.append(stage.stage)
    finally:
        for _, forwarder, counter in runs:
            forwarder.stop()
            if counter:
                counter.close()
    out: dict[str, Marks] = {}
    for (name, forwarder, _), marks in zip(runs, boundaries, strict=True):
        if forwarder.synclog is None:
            out[name] = Marks([r for r, _ in marks], [n for _, n in marks])
        else:
            synclog, times = forwarder.synclog, [r.at for r, _ in marks]
            out[name].syncs = [procstat.sync_calls(synclog, a, b) for a, b in itertools.pairwise(times)]
    return out, span_stages


def _stages(args: argparse.Namespace, figures: dict[str, Figures], cloud: Server, sink: ByteSink) -> list[Stage]:
    """The load window: steady load, or an outage and its drain (the collector and the sink down, then up)."""
    if not args.outage_seconds:
        return [Stage("load", args.seconds, args.span)]

    def go_down(_: dict[str, Server]) -> None:
        cloud.stop()
        sink.down = True

    def come_back(agents: dict[str, Server]) -> None:
        for name, server in agents.items():
            if name.startswith("agent"):
                figures[name].backlog_bytes = agent_gauge(server, "backhaul_buffer_bytes")
        cloud.start()
        sink.down = False

    def drained(since: float, agents: dict[str, Server]) -> None:
        for name, server in agents.items():
            f = figures[name]
            if name.startswith("agent") and f.drained_after is None:
                age = agent_gauge(server, "backhaul_buffer_oldest_unsent_sample_age_seconds")
                if age is not None and age < DRAINED_AGE:
                    f.drained_after = since

    return [
        Stage("outage", args.outage_seconds, args.span, go_down),
        Stage("drain", args.drain_seconds, args.span, come_back, drained),
    ]


def run(args: argparse.Namespace) -> list[Figures]:
    sink = ByteSink()
    node_port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-", dir=args.workdir) as tmp:
        root = Path(tmp)
        node = None
        cloud = collector(root)
        try:
            if args.series:
                pages: Pages = SyntheticPages(args.series, args.churn)
            else:
                argv = [args.node_exporter, f"--web.listen-address=127.0.0.1:{node_port}"]
                node = Process("node_exporter", argv, root / "node_exporter.log")
                node.start().wait_ready(f"http://127.0.0.1:{node_port}/metrics", 30)
                pages = Upstream(f"http://127.0.0.1:{node_port}/metrics")
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
            idle = [Stage("idle", args.idle_seconds, args.idle_seconds)]
            for name, marks in _phase(makers, None, args.warmup, idle, root)[0].items():
                f, (start, end) = figures[name], marks.readings
                f.idle_seconds = end.at - start.at
                f.idle_rss = end.rss
                f.idle_cpu_seconds = end.cpu_seconds - start.cpu_seconds
                f.idle_wakeups = end.voluntary_switches - start.voluntary_switches
                f.idle_switches = end.switches - start.switches
                f.idle_sync_calls = marks.syncs[0]
                f.idle_write_bytes = end.write_bytes - start.write_bytes
            stages = _stages(args, figures, cloud, sink)
            plan = ", then ".join(f"{s.seconds:g} s of {s.stage}" for s in stages)
            print(f"load: {plan} ({SCRAPE_SECONDS} s scrapes) after {args.warmup:g} s ...", file=sys.stderr)
            marks_by_name, span_stages = _phase(makers, pages, args.warmup, stages, root)
            for name, marks in marks_by_name.items():
                f = figures[name]
                f.spans = marks.spans(span_stages)
                f.samples = sum(s.samples for s in f.spans)
                f.seconds = sum(s.seconds for s in f.spans)
                f.write_bytes = sum(s.write_bytes for s in f.spans)
                f.cpu_seconds = sum(s.cpu_seconds for s in f.spans)
                f.peak_rss = max(s.peak_rss for s in f.spans)
                f.sync_calls = sum(s.sync_calls for s in f.spans)
        finally:
            cloud.stop()
            if node:
                node.stop()
            sink.close()
    return list(figures.values())


def _label(f: Figures, interval: float) -> str:
    names = {"vmagent": "vmagent 1.112", "prometheus": "Prometheus agent mode"}
    return names.get(f.name, f"backhaul, source_commit_interval {interval:g} s")


def rows(figures: list[Figures], args_interval: float = 0.0, series: str = "1k series") -> list[Row]:
    """The table: the agent with default settings against its references (and against itself with
    ``buffer.source_commit_interval = args_interval`` when that ran)."""
    ours, refs = figures[0], figures[1:]

    def row(figure: str, value: Callable[[Figures], float | None], target: str, fmt: str = "{:.2f}") -> Row:
        return Row(figure, value(ours), [(_label(f, args_interval), value(f)) for f in refs], target, fmt)

    vm_cpu = next((f.per_sample(f.cpu_seconds * 1e6) for f in refs if f.name == "vmagent"), None)
    per_million = [(_label(f, args_interval), f.per_sample(f.cpu_seconds * 1e6)) for f in refs]
    peak_target = "<= 60 (10k series)" if series == "10k series" else "<= 50 (1k series)"
    return [
        row("disk bytes written per sample (/proc/PID/io write_bytes)", lambda f: f.per_sample(f.write_bytes), "<= 12"),
        row("disk bytes written per hour, MB", lambda f: f.per_hour(f.write_bytes) / MB, "-"),
        row("sync calls per hour (fsync, fdatasync, ...; strace)", lambda f: f.per_hour(f.sync_calls), "-", "{:,.0f}"),
        row("peak RSS under load, MB (VmHWM)", lambda f: f.peak_rss / MB, peak_target, "{:.1f}"),
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


def outage_rows(figures: list[Figures], args_interval: float = 0.0) -> list[Row]:
    """The outage and its drain, each on its own."""
    ours, refs = figures[0], figures[1:]

    def row(figure: str, stage: str, value: Callable[[Span], float], fmt: str = "{:.2f}") -> Row:
        def of(f: Figures) -> float | None:
            span = f.stage(stage)
            return value(span) if span and span.seconds else None

        return Row(figure, of(ours), [(_label(f, args_interval), of(f)) for f in refs], "-", fmt)

    def agents(figure: str, value: Callable[[Figures], float | None], fmt: str) -> Row:
        refs_ = [(_label(f, args_interval), value(f)) for f in refs if f.name.startswith("agent")]
        return Row(figure, value(ours), refs_, "-", fmt)

    hourly = 3600.0
    return [
        row("outage: disk bytes written per hour, MB", "outage", lambda s: s.write_bytes * hourly / s.seconds / MB),
        row("outage: sync calls per hour", "outage", lambda s: s.sync_calls * hourly / s.seconds, "{:,.0f}"),
        row("outage: disk bytes written per sample", "outage", lambda s: s.write_bytes / max(1, s.samples)),
        row("outage: RSS at its end, MB", "outage", lambda s: s.rss / MB, "{:.1f}"),
        agents("outage: buffer bytes at its end, MB", lambda f: (f.backlog_bytes or 0) / MB, "{:.2f}"),
        agents("drain: seconds until the backlog had gone", lambda f: f.drained_after, "{:.0f}"),
        row("drain: disk bytes written, MB", "drain", lambda s: s.write_bytes / MB),
        row("drain: sync calls", "drain", lambda s: s.sync_calls, "{:,.0f}"),
        row("drain: CPU seconds", "drain", lambda s: s.cpu_seconds),
        row("drain: peak RSS, MB", "drain", lambda s: s.peak_rss / MB, "{:.1f}"),
    ]


def timeline(figures: list[Figures], most: int = 12) -> str:
    """RSS at the end of each span (at most ``most`` of them, evenly picked), one column per forwarder."""
    spans = len(figures[0].spans)
    picked = range(spans) if spans <= most else sorted({round(k * (spans - 1) / (most - 1)) for k in range(most)})
    head = f"{'s into load':>12} {'stage':>7} " + " ".join(f"{f.name:>15}" for f in figures)
    lines = [head, "-" * len(head)]
    for k in picked:
        at = sum(s.seconds for s in figures[0].spans[: k + 1])
        cells = " ".join(f"{f.spans[k].rss / MB:>12.1f} MB" for f in figures)
        lines.append(f"{at:>12.0f} {figures[0].spans[k].stage:>7} {cells}")
    return "\n".join(lines)


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
        "--series", type=int, default=0, help="scrape the bench workload's ~N series instead of node_exporter"
    )
    ap.add_argument("--churn", type=float, default=0.0, help="with --series: share of series renamed per scrape")
    ap.add_argument("--span", type=float, default=60.0, help="seconds between readings within a window (60)")
    ap.add_argument(
        "--outage-seconds", type=float, default=0.0, help="load as an outage of this long, then a drain (0: no)"
    )
    ap.add_argument(
        "--drain-seconds",
        type=float,
        default=420.0,
        help="after an outage: the drain window (420: the agent's retries back off to 5 min)",
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


def _workload(args: argparse.Namespace, figures: list[Figures]) -> str:
    if not args.series:
        return f"one node_exporter every {SCRAPE_SECONDS} s"
    pages = SyntheticPages(args.series, args.churn)
    text = f"{pages.series:,} series of the bench workload every {SCRAPE_SECONDS} s"
    if args.churn:
        scrapes = round(figures[0].seconds / SCRAPE_SECONDS)
        text += f", {args.churn:g} of them renamed per scrape (~{pages.unique_series(scrapes):,} unique in the window)"
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.node_exporter or args.series) or not shutil.which("strace"):
        print("footprint: needs node_exporter (prometheus-node-exporter) or --series, and strace", file=sys.stderr)
        return 1
    figures = run(args)
    size = "10k series" if args.series >= 5000 else "1k series"
    table = render(rows(figures, args.source_commit_interval, size))
    window = (
        f"{args.outage_seconds:g} s of outage and {args.drain_seconds:g} s of drain"
        if args.outage_seconds
        else f"{args.seconds:g} s of load"
    )
    versions = f"Prometheus {prometheus_version(args.prometheus)}" if args.prometheus else "no Prometheus"
    print()
    print(
        f"footprint: {_workload(args, figures)}, {window}, {args.idle_seconds:g} s idle ({versions}); "
        "samples served: " + ", ".join(f"{f.name} {f.samples:,}" for f in figures)
    )
    print(table)
    saved = {"args": vars(args), "figures": [asdict(f) for f in figures], "table": table}
    if args.outage_seconds:
        saved["outage"] = render(outage_rows(figures, args.source_commit_interval))
        print()
        print(saved["outage"])
    saved["timeline"] = timeline(figures)
    print()
    print("RSS over the load window:")
    print(saved["timeline"])
    report.save("footprint", saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
