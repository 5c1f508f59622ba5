"""Durable ingest (figure 3 of the foundation benchmark): the same recorded remote-write bodies pushed
through several connections into a real agent, a real Prometheus and a real vmagent."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import psutil

from bench import rwbodies
from bench.progress import Progress
from bench.servers import ByteSink, Server
from bench.workload import INTERVAL_MS, Workload
from harness import RW_HEADERS, metric_sum, read_metrics

HEADERS = {**RW_HEADERS, "User-Agent": "Prometheus/2.42.0"}


@dataclass
class IngestPlan:
    """Which bodies go where: shards of series, replayed in waves that keep all shards close in time."""

    plan: rwbodies.Plan
    wave_rounds: int
    start_shift_ms: int  # moves the recorded rounds to the start of the ingest timeline
    max_loops: int

    @property
    def waves_per_loop(self) -> int:
        return self.plan.n_rounds // self.wave_rounds

    def bodies(self, shard: int, wave: int) -> Iterator[tuple[int, bytes]]:
        loop, index = divmod(wave, self.waves_per_loop)
        first = index * self.wave_rounds
        shift = self.start_shift_ms + loop * rwbodies.loop_shift_ms(self.plan)
        return rwbodies.shard_bodies(self.plan, shard, first, first + self.wave_rounds, shift, 2000)

    @property
    def max_waves(self) -> int:
        return self.max_loops * self.waves_per_loop


def make_ingest_plan(series: int, shards: int, now_ms: int) -> IngestPlan:
    """Record about a million samples of the workload to replay, timestamps moved as far back as allowed.

    The agent refuses samples older than 7 days or more than 10 min ahead; starting 3 days back
    leaves room for dozens of replays. Prometheus refuses samples behind its head by more than an
    hour, so a shard may run at most one wave (at most 10 min of data) ahead of the slowest.
    """
    w = Workload(series, 1, now_ms)  # series labels only; the rounds are recorded below
    wave_rounds = max(1, min(120, round(6 * 16 * 2000 / w.n_series)))
    waves = max(2, math.ceil(1_000_000 / (wave_rounds * w.n_series)))
    rounds = wave_rounds * waves
    w = Workload(series, rounds * INTERVAL_MS / 60_000, now_ms)
    p = rwbodies.plan(w, rounds, shards)
    rwbodies.check_against_protobuf(p, w.labels)
    start = now_ms - 3 * 86_400_000
    start -= start % INTERVAL_MS
    span = rwbodies.loop_shift_ms(p)
    max_loops = max(1, (now_ms - start) // span - 1)
    return IngestPlan(p, wave_rounds, start - w.start_ms, max_loops)


@dataclass
class IngestResult:
    name: str
    samples: int = 0  # acknowledged with a 2xx
    requests: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # status -> requests
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0  # this process: encoding and sending
    idle_rss: int = 0
    peak_rss: int = 0
    server: dict[str, float] = field(default_factory=dict)  # the server's own counters
    disk_bytes: int = 0
    plan_series: int = 1

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples_per_second"] = self.samples / self.seconds if self.seconds else 0.0
        d["samples_per_cpu_second"] = self.samples / self.cpu_seconds if self.cpu_seconds else 0.0
        d["cpu_seconds_per_million"] = self.cpu_seconds / self.samples * 1e6 if self.samples else 0.0
        return d


async def replay(
    server: Server, proc: psutil.Process, ip: IngestPlan, seconds: float, result: IngestResult, progress: Progress
) -> None:
    """Push the plan's bodies through ``shards`` connections until ``seconds`` pass or the plan ends."""
    shards = len(ip.plan.shards)
    done = [0] * shards  # waves each shard has finished
    moved = asyncio.Condition()
    peak = [proc.memory_info().rss]
    stop = asyncio.Event()

    async def sample_rss() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            await asyncio.sleep(0.1)

    async def shard_worker(session: aiohttp.ClientSession, shard: int) -> None:
        for wave in range(ip.max_waves):

            def caught_up(w: int = wave) -> bool:
                return min(done) >= w - 1 or stop.is_set()

            async with moved:  # stay at most one wave ahead of the slowest shard
                await moved.wait_for(caught_up)
            for n, body in ip.bodies(shard, wave):
                if stop.is_set():
                    return
                await post(session, n, body)
            async with moved:
                done[shard] = wave + 1
                moved.notify_all()

    async def post(session: aiohttp.ClientSession, n: int, body: bytes) -> None:
        for attempt in range(20):
            try:
                async with session.post(server.url + "/api/v1/write", data=body, headers=HEADERS) as resp:
                    await resp.read()
                    status = str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            result.requests += 1
            if status.startswith("2"):
                result.samples += n
                return
            result.refused[status] = result.refused.get(status, 0) + 1
            if status.startswith("4"):
                return  # 4xx: the sender drops the request (Prometheus does the same)
            # 5xx or no answer: retry the same body after a pause, as Prometheus would.
            await asyncio.sleep(min(1.0, 0.05 * 2**attempt))

    progress.set(
        f"ingest into {server.name}:",
        lambda: f"{result.samples:,} samples acknowledged, peak RSS {peak[0] / 2**20:.0f} MB",
    )
    me = psutil.Process()
    cpu0, client0 = sum(proc.cpu_times()[:2]), sum(me.cpu_times()[:2])
    result.idle_rss = proc.memory_info().rss
    watcher = asyncio.create_task(sample_rss())
    connector = aiohttp.TCPConnector(limit=shards)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        workers = [asyncio.create_task(shard_worker(session, k)) for k in range(shards)]
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*workers)), timeout=seconds)
        except TimeoutError:
            stop.set()  # workers finish the request they are in, then stop
            async with moved:
                moved.notify_all()
            await asyncio.gather(*workers)
        result.seconds = time.perf_counter() - started
    result.cpu_seconds = sum(proc.cpu_times()[:2]) - cpu0
    result.client_cpu_seconds = sum(me.cpu_times()[:2]) - client0
    stop.set()
    await watcher
    result.peak_rss = peak[0]


def run_ingest(
    server: Server, ip: IngestPlan, seconds: float, progress: Progress, sink: ByteSink | None = None
) -> IngestResult:
    result = IngestResult(server.name, plan_series=ip.plan.n_series)
    progress.set(f"starting {server.name} ...")
    proc = server.start()
    try:
        time.sleep(1.0)  # let start-up work (imports, first expiry, WAL replay) settle before measuring
        asyncio.run(replay(server, proc, ip, seconds, result, progress))
        page = read_metrics(server.url)
        if server.name == "agent":
            result.server = {
                "ingested_samples": metric_sum(page, "backhaul_ingest_samples_total"),
                "dropped_samples": metric_sum(page, "backhaul_ingest_dropped_samples_total"),
                "commits": metric_sum(page, "backhaul_buffer_commits_total"),
            }
        elif server.name == "vmagent" and sink is not None:
            progress.set("waiting for vmagent to forward everything ...")
            result.server = {
                "ingested_samples": metric_sum(page, "vmagent_rows_inserted_total"),
                "forwarded_bytes": sink.settled(),
                "forwarded_requests": sink.requests,
            }
            if sink.encodings != {"zstd"}:
                print(f"warning: vmagent sent Content-Encoding {sink.encodings}, not zstd", file=sys.stderr)
        else:
            result.server = {
                "ingested_samples": metric_sum(page, "prometheus_tsdb_head_samples_appended_total"),
                "out_of_order_samples": metric_sum(page, "prometheus_tsdb_out_of_order_samples_total"),
                "out_of_bound_samples": metric_sum(page, "prometheus_tsdb_out_of_bound_samples_total"),
                "compactions": metric_sum(page, "prometheus_tsdb_compactions_total"),
            }
    finally:
        progress.set(f"stopping {server.name} ...")
        code = server.stop()
        if code not in (0, None):
            print(f"warning: {server.name} exited with status {code}; log: {server.log}", file=sys.stderr)
    # What the server stored: everything in its directory but our config and log files.
    result.disk_bytes = sum(
        p.stat().st_size for p in server.workdir.rglob("*") if p.is_file() and p.suffix not in (".log", ".toml", ".yml")
    )
    return result
