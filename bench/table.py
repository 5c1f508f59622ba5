"""The foundation benchmark's table: each backhaul figure next to its references from the same run,
and the notes that explain them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.ingest import IngestResult
from bench.sizes import window_name
from bench.workload import INTERVAL_MS


@dataclass
class Row:
    figure: str
    backhaul: float | None
    references: list[tuple[str, float | None]]
    target: str
    fmt: str = "{:.2f}"
    ref_fmt: str | None = None  # when the references are in another unit than the figure

    def show(self, value: float | None, fmt: str | None = None) -> str:
        return "n/a" if value is None else (fmt or self.fmt).format(value)


def render(rows: list[Row]) -> str:
    cells = []
    for r in rows:
        refs = [f"{name}: {r.show(v, r.ref_fmt)}" for name, v in r.references] or ["-"]
        cells.append((r.figure, r.show(r.backhaul), refs, r.target))
    w0 = max(len("figure"), *(len(c[0]) for c in cells))
    w1 = max(len("backhaul"), *(len(c[1]) for c in cells))
    w2 = max(len("reference(s), same run"), *(len(x) for c in cells for x in c[2]))
    lines = [f"{'figure':<{w0}} | {'backhaul':>{w1}} | {'reference(s), same run':<{w2}} | target (DESIGN.md)"]
    lines.append("-" * len(lines[0]) + "-" * 10)
    for figure, value, refs, target in cells:
        lines.append(f"{figure:<{w0}} | {value:>{w1}} | {refs[0]:<{w2}} | {target}")
        for ref in refs[1:]:
            lines.append(f"{'':<{w0}} | {'':>{w1}} | {ref:<{w2}} |")
    return "\n".join(lines)


def build_rows(
    sizes: dict[str, Any], ingest: list[IngestResult], n_series: int, drain: dict[str, Any] | None = None
) -> list[Row]:
    refs = sizes["references"]
    n = refs["samples"]
    per_scrape = [
        ("Prometheus 2.42 RW (snappy, 500/req)", refs["snappy_500"] / n),
        ("Prometheus >=2.44 RW (snappy, 2000/req)", refs["snappy_2000"] / n),
        ("same protobuf + zstd-1 (vmagent-like)", refs["zstd1"] / n),
        ("same protobuf + zstd-3", refs["zstd3"] / n),
    ]
    targets = {10_000: "-", 60_000: "<= 2", 300_000: "<= 1 (a few minutes)", 3_600_000: "<= 1"}
    rows = []
    for i, win in enumerate(sizes["windows"]):
        wm = win["window_ms"]
        window_ref = (
            f"RW protobuf of the same {window_name(wm)}, one zstd-3 frame",
            refs["window_zstd3"][str(wm)] / n,
        )
        # The per-scrape references do not depend on the window: list them all once, then the headline ones.
        scrape_refs = (
            [*per_scrape, ("RW protobuf, uncompressed", refs["protobuf"] / n)]
            if i == 0
            else [
                per_scrape[0],
                per_scrape[2],
            ]
        )
        chunks = f", {win['chunks'] / win['batches']:.0f} chunks/batch" if win["chunks"] > win["batches"] else ""
        rows.append(
            Row(
                f"wire bytes/sample, {window_name(wm)} batches{chunks}",
                win["bytes"] / win["samples"],
                [*scrape_refs, window_ref],
                targets.get(wm, "-"),
            )
        )
        if wm <= 60_000:
            rows.append(
                Row(
                    f"  the same, series table by reference (a collector that keeps it), {window_name(wm)}",
                    win["bytes_by_reference"] / win["samples"],
                    [per_scrape[0]],
                    targets.get(wm, "-"),
                )
            )
    disk = sizes["disk"]
    dn = disk["samples"]
    agent = next((r for r in ingest if r.name == "agent"), None)
    prom = next((r for r in ingest if r.name == "prometheus"), None)
    prom_disk: list[tuple[str, float | None]] = (
        [("Prometheus 2.42 TSDB dir after its ingest run", prom.disk_bytes / prom.samples)]
        if prom and prom.samples
        else []
    )
    vm_queue = ("RW protobuf + zstd-3 per request (vmagent-style queue)", refs["zstd3"] / n)
    vmagent = next((r for r in ingest if r.name == "vmagent"), None)
    if vmagent and vmagent.samples and vmagent.server.get("forwarded_bytes"):
        real_vm = (
            "real vmagent 1.112, its zstd protocol, blocks of <=10k samples under load",
            vmagent.server["forwarded_bytes"] / vmagent.samples,
        )
        for row in rows:
            row.references.insert(0, real_vm)
    rows.append(Row("buffer bytes/sample, compacted chunks", disk["chunk_bytes"] / dn, [vm_queue, *prom_disk], "<= 2"))
    rows.append(
        Row(
            "buffer bytes/sample, db file + WAL",
            disk["file_bytes"] / dn,
            [
                ("same file after close (WAL checkpointed away)", disk["file_bytes_after_close"] / dn),
                *prom_disk,
            ],
            "<= 2",
        )
    )
    if agent and agent.samples:
        rows.append(
            Row(
                "buffer bytes/sample after the ingest run (db file)",
                agent.disk_bytes / agent.samples,
                prom_disk,
                "- (compaction runs every 30 s)",
            )
        )

    def ref(attr: str, scale: float = 1.0) -> list[tuple[str, float | None]]:
        out: list[tuple[str, float | None]] = []
        for name, r in (("Prometheus 2.42 remote-write receiver", prom), ("vmagent 1.112 (forwarding)", vmagent)):
            if r is not None:
                value = r.row()[attr] if attr in r.row() else getattr(r, attr)
                out.append((name, value * scale))
        return out or [("Prometheus 2.42 (not run)", None)]

    if agent:
        a = agent.row()
        label = f"{n_series:,} series"
        rows += [
            Row(f"durable ingest, samples/s (wall, {label})", a["samples_per_second"], ref("samples_per_second"),
                ">= 100,000 on one core", fmt="{:,.0f}"),
            Row("durable ingest, samples per CPU-second", a["samples_per_cpu_second"], ref("samples_per_cpu_second"),
                ">= 100,000", fmt="{:,.0f}"),
            Row("durable ingest, CPU seconds per million samples", a["cpu_seconds_per_million"],
                ref("cpu_seconds_per_million"), "<= 10 (same thing)", fmt="{:.1f}"),
            Row(f"resident memory, peak during ingest, MB ({label})", agent.peak_rss / 2**20, ref("peak_rss", 2**-20),
                "<= 60 MB at 10k series (vmagent ~25 MB)", fmt="{:.0f}"),
            Row("resident memory, idle after start-up, MB", agent.idle_rss / 2**20, ref("idle_rss", 2**-20), "-",
                fmt="{:.0f}"),
        ]  # fmt: skip
    if drain:
        produced = drain["series"] / (INTERVAL_MS / 1000)
        backlog = f"{drain['samples'] / produced / 3600:g} h backlog of {drain['series']:,} series"
        rows += [
            Row(f"backlog drain to a local collector, x real time ({backlog})", drain["real_time_multiple"],
                [(f"uploaded+stored, samples/s (in {drain['seconds']:.0f} s)", drain["samples_per_s"]),
                 ("the workload produces, samples/s", produced)], ">= 50x", fmt="{:.0f}x",
                ref_fmt="{:,.0f}"),
            Row("resident memory, peak during the drain, MB", drain["agent_peak_rss"] / 2**20, [], "<= 60 MB",
                fmt="{:.0f}"),
        ]  # fmt: skip
    return rows


def notes_for(sizes: dict[str, Any], ingest: list[IngestResult]) -> list[str]:
    notes = [
        "sizes exclude HTTP headers; a batch counts its envelope (header JSON + chunks). "
        "Prometheus fsyncs its WAL only per segment, the agent commits with synchronous=FULL.",
    ]
    for r in ingest:
        if r.refused:
            notes.append(f"{r.name} refused requests by status: {r.refused}")
        got = r.server.get("ingested_samples")
        if got is not None and int(got) != r.samples:
            notes.append(f"{r.name} counted {int(got):,} samples ingested, the sender {r.samples:,} acknowledged")
        for key in ("dropped_samples", "out_of_order_samples", "out_of_bound_samples"):
            if r.server.get(key):
                notes.append(f"{r.name}: {key} = {int(r.server[key]):,}")
        if r.server.get("compactions"):
            notes.append(
                f"{r.name} compacted its head into blocks {int(r.server['compactions'])} time(s): the replay pushes "
                f"{r.samples / r.plan_series * INTERVAL_MS / 3.6e6:.1f} h of data; its figures include that cost"
            )
        if r.seconds and r.client_cpu_seconds / r.seconds > 0.8:
            notes.append(
                f"the sender used {r.client_cpu_seconds / r.seconds:.0%} of a core pushing into {r.name}: "
                "its samples/s may be limited by the sender"
            )
    disk = sizes["disk"]
    notes.append(
        f"buffer after {disk['samples']:,} samples: {disk['chunks']} chunks = {disk['chunk_bytes'] / 2**20:.2f} MB; "
        f"on disk a {disk['db_bytes'] / 2**20:.2f} MB db file + {disk['wal_bytes'] / 2**20:.2f} MB WAL (pages not yet "
        f"checkpointed live in the WAL), {disk['freelist_bytes'] / 2**20:.2f} MB of pages free. The WAL stays a few MB "
        "(SQLite checkpoints every 1,000 pages), so it weighs less per sample in a bigger buffer"
    )
    return notes
