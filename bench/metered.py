"""A day on metered links, simulated: 24 hours of the bench workload (~1k series, 5 s scrapes) with an
injected clock, through the agent's own buffer (``BufferStore``) and its own link policy (``Link``,
``DrainPolicy``, :mod:`agent.uplink.policy`) — the decisions the real uploader takes, each step
taken at once on a simulated clock instead of waiting for it.

The day (UTC, from midnight):
- depot Wi-Fi, 22:00-23:59 (``windows = ["* 22-23 * * *"]``), 1 MB/s, unmetered;
- LTE the rest of the time, capped at 16 KiB/s, with a 10 MB daily budget;
- no link at all from 14:00 to 16:59 (an outage): attempts fail and back off;
- the Wi-Fi is used whenever its window is open (the first link that may carry data), else LTE.

Side by side, on the same samples:
- backhaul as configured for it (``drain_order = "fresh_first"``, ``when_short = "summarise"``),
- backhaul ``oldest_first`` / ``hold`` (the order and behaviour of a plain queue, under the budget),
- what vmagent would have sent: the same links and cap, no budget, oldest first, at vmagent's wire
  bytes per sample measured by ``make bench`` on the same workload (bench/results/foundation-*.json,
  or ``--vmagent-bytes-per-sample``).

A batch costs its body as the HTTP transport would send it (series tables by reference once the
collector keeps them) plus ``HTTP_OVERHEAD`` bytes of request and answer headers (measured on a real
agent and collector: about 490). Printed per variant: bytes per link vs the budget, freshness at the
collector (age of the newest sample it holds, sampled every minute: p50, p99, worst), the share of
samples delivered at full resolution by the end, samples sent as summaries, samples lost (evicted or
expired by the buffer's own limits: must be 0 here). Run: ``.venv/bin/python -m bench.metered``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.buffer.store import Batch, BufferStore
from agent.uplink.link import Link, choose
from agent.uplink.policy import RATE_WINDOW_MS, Backlog, DrainPolicy
from agent.uplink.settings import UplinkSettings
from agent.uplink.tables import TableRefs
from agent.uplink.transport import TABLE_REFS_MAX_BODY
from backhaul import __version__
from backhaul.retry import Backoff
from backhaul.wire import batch as batchfmt
from backhaul.wire.series import SeriesMap, merge_into, sample_count
from bench.buffer import open_store
from bench.progress import Progress
from bench.workload import INTERVAL_MS, WorkloadSpec

HERE = Path(__file__).resolve().parent
MIDNIGHT_MS = 1_796_083_200_000  # 2026-12-01T00:00:00Z
# The simulated day is one calendar day of the budget (UTC): the night window comes at its end.
DAY0_MS = MIDNIGHT_MS
HTTP_OVERHEAD = 490
RTT = 0.1
WIFI_RATE = 1_000_000.0
LTE_CAP = 16 * 1024
BUDGET = 10_000_000
OUTAGE = (14, 17)  # hours of the (UTC) day without any link
COMMIT_ROUNDS = 12
# Freshness is sampled from the end of the first minutes on: before the first batch, nothing is at the
# collector (a device that was just installed, not what a link costs).
WARM_UP = 300
# A minute in which the collector's newest sample is older than this counts as stale.
STALE_S = 600
# Freshness is also read this many seconds after the outage ends (what fresh first is for).
AFTER_OUTAGE = (30, 120, 600)
VMAGENT_DEFAULT_BPS = 5.45  # docs/benchmarks.md, ~1k series, when no foundation result is at hand


def hour_of(t: float) -> float:
    """The hour of the UTC day at ``t`` (epoch seconds)."""
    return (t - MIDNIGHT_MS / 1000) % 86400 / 3600


def link_settings(budget: bool, **policy: Any) -> list[UplinkSettings]:
    base = {"url": "http://collector.invalid/api/v1/batches", "token": "t", "batch_interval": 60, **policy}
    wifi = UplinkSettings.model_validate({**base, "windows": ["* 22-23 * * *"]})
    lte = UplinkSettings.model_validate(
        {**base, "max_bytes_per_second": LTE_CAP, **({"daily_bytes": BUDGET} if budget else {})}
    )
    return [wifi, lte]


@dataclass
class Variant:
    """One agent's day: its buffer, its links and what reached the collector."""

    name: str
    settings: list[UplinkSettings]
    store: BufferStore
    clock: list[float]
    links: list[Link] = field(default_factory=list)
    policies: list[DrainPolicy] = field(default_factory=list)
    tables: TableRefs = field(default_factory=TableRefs)
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 300.0, random.Random(1).random))
    next_at: float = 0.0
    last_sent: float = -1e9
    acks: list[tuple[float, int]] = field(default_factory=list)  # (when, newest sample ms) at the collector
    full_samples: int = 0
    summary_samples: int = 0
    sent_bytes: dict[str, int] = field(default_factory=dict)
    backlog: bool = True
    # (when, link, wire bytes, samples, summary) of every acknowledged batch, for --timeline.
    log: list[tuple[float, str, int, int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, s in zip(("wifi", "lte"), self.settings, strict=True):
            link = Link(s, name, clock=lambda: self.clock[0])
            self.links.append(link)
            self.policies.append(DrainPolicy(s, link))
            self.sent_bytes[name] = 0

    def cost(self, batch: Batch) -> tuple[int, list[str]]:
        """Wire bytes of ``batch`` as the HTTP transport would send it, and its tables' digests."""
        header = batchfmt.BatchHeader("edge-1", "b", batch.seq, batch.sealed_ms, batch.samples)
        frames, digests = batch.chunks, list[str]()
        if sum(map(len, frames)) <= TABLE_REFS_MAX_BODY:
            header, frames, digests = self.tables.rewrite(header, frames)
        return len(batchfmt.encode(header, frames)) + HTTP_OVERHEAD, digests

    def act(self, t: float, day_start: float) -> None:
        """Whatever the uploader does at ``t``; sets when it acts next."""
        self.clock[0] = t
        store = self.store
        now_ms = int(t * 1000)
        offline = OUTAGE[0] <= hour_of(t) < OUTAGE[1]
        unclaimed_bytes, unclaimed_samples, _ = store.unclaimed()
        recent, series = store.recent(now_ms - RATE_WINDOW_MS)
        backlog = Backlog(store.sealed_bytes(), unclaimed_bytes, unclaimed_samples, recent, series)
        need = backlog.sealed_bytes if backlog.sealed_bytes is not None else min(4096, unclaimed_bytes)
        link, _ = choose(self.links, need)
        if link is None:
            waits = [x.lifts_in(x.blocked(need) or "") for x in self.links]
            self.next_at = t + max(1.0, min(min(waits), 60.0))
            for p in self.policies:
                p.interrupted()
            return
        i = self.links.index(link)
        policy = self.policies[i]
        step = policy.next(t, backlog)
        if step.kind == "wait":
            self.next_at = t + max(1.0, min(step.seconds, 60.0))
            return
        if not self.backlog and t < self.last_sent + self.settings[i].batch_interval.total_seconds():
            self.next_at = self.last_sent + self.settings[i].batch_interval.total_seconds()
            return
        batch = None
        if step.summary:
            batch = store.summarise(int(self.settings[i].summary_interval.total_seconds() * 1000), now_ms)
        if batch is None and step.full:
            batch = store.claim(step.max_bytes, now_ms, False, step.newest_first, step.since_ms, step.strict)
            if batch is None and step.since_ms is not None:
                batch = store.claim(step.max_bytes, now_ms, False, step.newest_first, None, step.strict)
        if batch is None:
            self.backlog = False
            self.next_at = t + (60.0 if step.strict and unclaimed_bytes else INTERVAL_MS / 1000)
            return
        wire, digests = self.cost(batch)
        if offline:  # the sealed batch stays, and is tried again after a backoff
            policy.interrupted()
            self.next_at = t + self.backoff.next()
            return
        if link.blocked(wire - HTTP_OVERHEAD) is not None:  # the admission check of the HTTP helper
            self.next_at = t + 60.0
            return
        rate = link.cap.rate if link.cap is not None else WIFI_RATE
        done = t + wire / rate + RTT
        self.clock[0] = done
        link.count(wire)
        self.sent_bytes[link.name] += wire
        store.ack(batch.seq, 0)
        self.tables.acknowledged(digests)
        self.tables.supported = True
        policy.sent(batch.samples, wire, bool(batch.summary_ms), (batch.min_ts, batch.max_ts))
        self.backoff.reset()
        self.acks.append((done, batch.max_ts))
        self.log.append((done, link.name, wire, batch.samples, bool(batch.summary_ms)))
        if batch.summary_ms:
            self.summary_samples += batch.samples
        else:
            self.full_samples += batch.samples
        self.last_sent = done
        self.backlog = store.totals.bytes >= 64 * 1024 or batch.summary_ms > 0
        self.next_at = done

    def freshness(self, day_start: float, day_end: float) -> list[float]:
        return freshness(self.acks, day_start, day_end)


def freshness(acks: list[tuple[float, int]], day_start: float, day_end: float) -> list[float]:
    """Age of the newest sample at the collector, once a minute over the day from the end of the
    warm-up (inf before any); ``acks`` are (when, newest sample ms) of what it acknowledged."""
    ages: list[float] = []
    newest, j = 0, 0
    ordered = sorted(acks)
    for start in range(int(day_start) + WARM_UP, int(day_end) - 59, 60):
        minute = start + (start // 60 * 37) % 60  # a different second of each minute
        while j < len(ordered) and ordered[j][0] <= minute:
            newest = max(newest, ordered[j][1])
            j += 1
        ages.append(minute - newest / 1000 if newest else float("inf"))
    return ages


def age_at(acks: list[tuple[float, int]], t: float) -> float:
    """Age at ``t`` of the newest sample the collector acknowledged by then (inf before any)."""
    newest = max((ts for when, ts in acks if when <= t), default=0)
    return t - newest / 1000 if newest else float("inf")


def after_outage(acks: list[tuple[float, int]], day_start: float) -> dict[str, float]:
    back = day_start + OUTAGE[1] * 3600 - hour_of(day_start) * 3600
    return {f"{s}": age_at(acks, back + s) for s in AFTER_OUTAGE}


@dataclass
class Vmagent:
    """What vmagent would do on the same links: every sample, oldest first, as fast as the link (and
    the same cap) allows, at its measured wire bytes per sample; no budget, no windows of its own (it
    goes out on whichever link is up). Blocks of up to ``BLOCK`` samples, as vmagent sends them."""

    bps: float
    queue: list[tuple[int, int]] = field(default_factory=list)  # (samples, newest sample ms), oldest first
    next_at: float = 0.0
    acks: list[tuple[float, int]] = field(default_factory=list)
    sent_bytes: dict[str, int] = field(default_factory=lambda: {"wifi": 0, "lte": 0})
    sent_samples: int = 0
    name: str = "vmagent (same links and cap, no budget)"

    BLOCK = 10_000

    def add(self, samples: int, newest_ms: int) -> None:
        self.queue.append((samples, newest_ms))

    def act(self, t: float, day_start: float) -> None:
        if OUTAGE[0] <= hour_of(t) < OUTAGE[1] or not self.queue:
            self.next_at = t + (10.0 if self.queue else INTERVAL_MS / 1000)
            return
        wifi = 22 <= hour_of(t) < 24
        samples, newest = self.queue[0]
        n = min(samples, self.BLOCK)
        wire = int(n * self.bps) + HTTP_OVERHEAD
        done = t + wire / (WIFI_RATE if wifi else LTE_CAP) + RTT
        self.sent_bytes["wifi" if wifi else "lte"] += wire
        self.sent_samples += n
        if n == samples:
            self.queue.pop(0)
            self.acks.append((done, newest))
        else:
            self.queue[0] = (samples - n, newest)
        self.next_at = done


def timeline(v: Variant, day_start: float, hours: float) -> list[dict[str, Any]]:
    """Per simulated hour: bytes per link, full and summary samples acknowledged, and the age of the
    newest sample at the collector at the hour's end."""
    out = []
    ages = freshness(v.acks, day_start, day_start + hours * 3600)
    for h in range(int(hours)):
        lo, hi = day_start + h * 3600, day_start + (h + 1) * 3600
        rows = [r for r in v.log if lo <= r[0] < hi]
        minute = min(len(ages) - 1, max(0, (h + 1) * 60 - WARM_UP // 60 - 1))
        out.append(
            {
                "hour": int(hour_of(lo)),
                "lte": sum(r[2] for r in rows if r[1] == "lte"),
                "wifi": sum(r[2] for r in rows if r[1] == "wifi"),
                "full": sum(r[3] for r in rows if not r[4]),
                "summary": sum(r[3] for r in rows if r[4]),
                "age_s": ages[minute],
            }
        )
    return out


def render_timeline(results: dict[str, Any]) -> str:
    lines = []
    for name, r in results.items():
        if "timeline" not in r:
            continue
        lines.append(f"{name}: hour | LTE kB | Wi-Fi kB | full samples | summary samples | age at hour end")
        for t in r["timeline"]:
            age = "never" if t["age_s"] == float("inf") else f"{t['age_s']:.0f} s"
            lines.append(
                f"  {t['hour']:02d} | {t['lte'] / 1e3:8.0f} | {t['wifi'] / 1e3:8.0f} | {t['full']:10,} "
                f"| {t['summary']:9,} | {age}"
            )
    return "\n".join(lines)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def vmagent_bps(series: int) -> tuple[float, str]:
    """vmagent's wire bytes per sample from the newest foundation benchmark at this many series."""
    found = sorted((HERE / "results").glob("foundation-*.json"), reverse=True)
    for path in found:
        data = json.loads(path.read_text())
        if abs(data["workload"]["series"] - series) > series * 0.1:
            continue
        for row in data["rows"]:
            for name, value in row["references"]:
                if name.startswith("real vmagent") and value:
                    return float(value), f"measured by make bench ({path.name})"
    return VMAGENT_DEFAULT_BPS, "docs/benchmarks.md (no foundation result at this size in bench/results)"


def run(series: int, hours: float, vm_bps: float, progress: Progress) -> tuple[dict[str, Any], int]:
    spec = WorkloadSpec(series, hours * 60, DAY0_MS)
    w = spec.build()
    day_start, day_end = DAY0_MS / 1000, DAY0_MS / 1000 + hours * 3600
    done = 0
    progress.set("metered: simulating the day", lambda: f"{done:,}/{w.n_rounds:,} scrapes")
    with tempfile.TemporaryDirectory(prefix="bench-metered-") as tmp, contextlib.ExitStack() as stack:
        fresh_store = stack.enter_context(open_store(Path(tmp) / "fresh.db"))
        oldest_store = stack.enter_context(open_store(Path(tmp) / "oldest.db"))
        variants = [
            Variant("backhaul fresh_first, summarise", link_settings(True, when_short="summarise"), fresh_store, [0.0]),
            Variant(
                "backhaul oldest_first, hold", link_settings(True, drain_order="oldest_first"), oldest_store, [0.0]
            ),
        ]
        vm = Vmagent(vm_bps)
        for v in variants:
            v.next_at = day_start
        vm.next_at = day_start
        pending: SeriesMap = {}
        for _, samples in w.rounds():
            merge_into(pending, samples)
            done += 1
            if done % COMMIT_ROUNDS:
                continue
            # One chunk a minute: what the agent's compaction makes of its 5 s commits anyway (one
            # encode per scrape and variant would make the simulated day take an hour).
            t = day_start + done * INTERVAL_MS / 1000
            for v in variants:
                while v.next_at < t:  # what the uploader did up to now, on the data buffered so far
                    v.act(v.next_at, day_start)
                v.clock[0] = t
                v.store.append(pending, 0, int(t * 1000))
                v.store.compact(int(t * 1000))  # the agent's maintenance
                v.next_at = max(v.next_at, t)  # staging's commit wakes an idle uploader
            while vm.next_at < t:
                vm.act(vm.next_at, day_start)
            vm.add(sample_count(pending), max(ts[-1] for ts, _ in pending.values()))
            vm.next_at = max(vm.next_at, t)
            pending = {}
        results: dict[str, Any] = {}
        for v in variants:
            c = v.store.counters()
            results[v.name] = summary(
                freshness(v.acks, day_start, day_end),
                v.sent_bytes,
                v.full_samples / w.samples,
                v.summary_samples,
                c["evicted_samples"] + c["expired_samples"],
                v.store.totals.samples,
            )
            results[v.name]["timeline"] = timeline(v, day_start, hours)
            results[v.name]["after_outage_s"] = after_outage(v.acks, day_start)
        left = sum(n for n, _ in vm.queue)
        results[vm.name] = summary(
            freshness(vm.acks, day_start, day_end), vm.sent_bytes, vm.sent_samples / w.samples, 0, 0, left
        )
        results[vm.name]["after_outage_s"] = after_outage(vm.acks, day_start)
    return results, w.n_series


def summary(
    ages: list[float], sent: dict[str, int], full_share: float, summarised: int, lost: int, left: int
) -> dict[str, Any]:
    return {
        "bytes": dict(sent),
        "freshness_p50_s": quantile(ages, 0.5),
        "freshness_p99_s": quantile(ages, 0.99),
        "freshness_max_s": max(ages),
        "stale_minutes": sum(1 for a in ages if a > STALE_S),
        "full_share": full_share,
        "summary_samples": summarised,
        "lost": lost,
        "left_in_buffer": left,
    }


def render(results: dict[str, Any], n_series: int, hours: float, vm_source: str) -> str:
    names = list(results)
    rows: list[tuple[str, list[str]]] = []

    def mb(n: float) -> str:
        return f"{n / 1e6:.2f} MB"

    def age(s: float) -> str:
        return "never" if s == float("inf") else (f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min")

    rows.append(("LTE bytes sent (budget 10.00 MB)", [mb(r["bytes"]["lte"]) for r in results.values()]))
    rows.append(("Wi-Fi bytes sent (22:00-24:00, unmetered)", [mb(r["bytes"]["wifi"]) for r in results.values()]))
    rows.append(("freshness at the collector, p50", [age(r["freshness_p50_s"]) for r in results.values()]))
    rows.append(("freshness at the collector, p99", [age(r["freshness_p99_s"]) for r in results.values()]))
    rows.append(
        (
            f"minutes the newest sample was over {STALE_S // 60} min old",
            [f"{r['stale_minutes']:,}" for r in results.values()],
        )
    )
    rows.append(("freshness at the collector, worst", [age(r["freshness_max_s"]) for r in results.values()]))
    for after in AFTER_OUTAGE:
        rows.append(
            (
                f"freshness {after} s after the outage ends",
                [age(r["after_outage_s"][str(after)]) for r in results.values()],
            )
        )
    rows.append(("samples at full resolution by the end", [f"{r['full_share']:.1%}" for r in results.values()]))
    rows.append(("samples sent as summaries (60 s)", [f"{r['summary_samples']:,}" for r in results.values()]))
    rows.append(("samples still buffered at the end", [f"{r['left_in_buffer']:,}" for r in results.values()]))
    rows.append(("samples lost (evicted, expired)", [f"{r['lost']:,}" for r in results.values()]))
    w0 = max(len(r[0]) for r in rows)
    widths = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
    head = f"{'figure':<{w0}} | " + " | ".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
    lines = [
        f"backhaul {__version__} metered-link benchmark: {n_series:,} series, {hours:g} simulated hours of 5 s scrapes",
        head,
        "-" * len(head),
    ]
    for figure, cells in rows:
        lines.append(f"{figure:<{w0}} | " + " | ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    lines.append(f"note: vmagent's bytes per sample from {vm_source}; its row assumes the same cap, no budget")
    lines.append(f"note: freshness sampled once a minute from {WARM_UP // 60} min in (nothing is sent before)")
    lines.append("note: links: depot Wi-Fi 22:00-23:59 at 1 MB/s; LTE otherwise, capped at 16 KiB/s; none 14:00-16:59")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--vmagent-bytes-per-sample", type=float, default=None)
    ap.add_argument("--timeline", action="store_true", help="also print what each variant did, hour by hour")
    args = ap.parse_args(argv)
    started = time.monotonic()
    vm_bps, source = (
        (args.vmagent_bytes_per_sample, "the command line")
        if args.vmagent_bytes_per_sample
        else (vmagent_bps(args.series))
    )
    with Progress() as progress:
        results, n_series = run(args.series, args.hours, vm_bps, progress)
    table = render(results, n_series, args.hours, f"{source}: {vm_bps:.2f}")
    print(table)
    if args.timeline:
        print(render_timeline(results))
    print(f"took {time.monotonic() - started:.0f} s")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / ".gitignore").write_text("*\n")
    out = out_dir / f"metered-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps({"version": __version__, "args": vars(args), "results": results, "table": table}, indent=2)
    )
    print(f"results: {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
