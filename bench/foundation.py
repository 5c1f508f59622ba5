"""Foundation benchmark: backhaul's wire size, buffer size and durable ingest, each next to a reference.

Run with ``make bench`` (or ``.venv/bin/python bench/foundation.py --quick`` for a smoke run).
Every figure is measured in this run on the same deterministic workload (bench/workload.py):

1. wire bytes per sample for batch windows of 10 s, 1 min, 5 min (and 1 h): the batches the agent
   would send, built with the agent's own BufferStore (one append per scrape, claim per window),
   against Prometheus remote write (snappy protobuf, 500 and 2,000 samples per request) and the
   same protobuf compressed with zstd (levels 1 and 3, as vmagent's protocol does);
2. bytes per sample in the buffer after compaction (chunk bytes, and the database file with WAL);
3. durable ingest through a real agent process over HTTP against a real Prometheus 2.42 receiving
   the same remote-write bodies: samples/s, CPU seconds, peak RSS.

The table goes to stdout and, as JSON, to bench/results/foundation-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cramjam
import psutil
import rwbodies
import zstandard
from workload import INTERVAL_MS, Workload

from agent.buffer.store import BufferStore
from agent.uplink.tables import TableRefs
from agent.uplink.transport import TABLE_REFS_MAX_BODY
from backhaul import __version__
from backhaul.wire import batch as batchfmt
from backhaul.wire import remote_write as rw

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEVICE = "bench-edge-0001"
AGENT_DEFAULT_TARGET_SAMPLES = 100_000  # agent.config.BufferSettings.compact_target_samples
COMPACT_INTERVAL_MS = 30_000  # agent.config.BufferSettings.maintenance_interval
MAX_MERGE_SAMPLES = 4_000_000  # caps one merged chunk's memory (a 1 h window at 10k series is 7.2M)
RW_HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "Prometheus/2.42.0",
}


# -- progress ------------------------------------------------------------------------------------


class Progress:
    """One status line on stderr every ``every`` seconds, fed by whatever phase is running."""

    def __init__(self, every: float = 2.0) -> None:
        self.started = time.monotonic()
        self.phase = "starting"
        self.detail: Callable[[], str] = lambda: ""
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def set(self, phase: str, detail: Callable[[], str] = lambda: "") -> None:
        self.phase, self.detail = phase, detail
        self.line()

    def line(self) -> None:
        try:
            detail = self.detail()
        except Exception as exc:  # a progress line must never take the benchmark down
            detail = f"({exc})"
        print(f"[{time.monotonic() - self.started:6.1f} s] {self.phase} {detail}".rstrip(), file=sys.stderr, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.line()


# -- 1-3: wire and disk, as jobs on a process pool ------------------------------------------------------

_counters: Any = None  # multiprocessing.Array of rounds done per job, inherited by the workers


def _init_worker(counters: Any) -> None:
    global _counters
    _counters = counters
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _tick(job: int, done: int) -> None:
    if _counters is not None:
        _counters[job] = done


@dataclass
class WorkloadSpec:
    """What a worker needs to rebuild the identical workload (cheaper than pickling an hour of samples)."""

    series: int
    minutes: float
    start_ms: int

    def build(self) -> Workload:
        return Workload(self.series, self.minutes, self.start_ms)


def _rounds_with_progress(w: Workload, job: int) -> Iterator[tuple[int, Any]]:
    for i, item in enumerate(w.rounds()):
        yield item
        if i % 10 == 0:
            _tick(job, i)
    _tick(job, w.n_rounds)


def job_references(spec: WorkloadSpec, windows_ms: list[int], job: int) -> dict[str, Any]:
    """Prometheus-style remote write of each scrape as it arrives, and zstd variants of it."""
    w = spec.build()
    z1 = zstandard.ZstdCompressor(level=1)
    z3 = zstandard.ZstdCompressor(level=3)
    out = {"snappy_500": 0, "requests_500": 0, "snappy_2000": 0, "requests_2000": 0}
    out |= {"protobuf": 0, "zstd1": 0, "zstd3": 0}
    # Per window: the raw protobuf of all its requests, compressed as one zstd-3 frame.
    per_window = {wm: {"bytes": 0, "open": None, "rounds": 0} for wm in windows_ms}
    samples = 0
    for _base, series in _rounds_with_progress(w, job):
        samples += sum(len(ts) for ts, _ in series.values())
        bodies500 = rw.encode(series, 500)
        out["snappy_500"] += sum(map(len, bodies500))
        out["requests_500"] += len(bodies500)
        bodies = rw.encode(series, 2000)
        out["snappy_2000"] += sum(map(len, bodies))
        out["requests_2000"] += len(bodies)
        for body in bodies:
            raw = bytes(cramjam.snappy.decompress_raw(body))
            out["protobuf"] += len(raw)
            out["zstd1"] += len(z1.compress(raw))
            out["zstd3"] += len(z3.compress(raw))
            for state in per_window.values():
                if state["open"] is None:
                    state["open"] = zstandard.ZstdCompressor(level=3).compressobj()
                state["bytes"] += len(state["open"].compress(raw))
        for wm, state in per_window.items():
            state["rounds"] += 1
            if state["rounds"] * INTERVAL_MS >= wm:
                state["bytes"] += len(state["open"].flush())
                state["open"], state["rounds"] = None, 0
    for state in per_window.values():
        if state["open"] is not None:
            state["bytes"] += len(state["open"].flush())
    out["window_zstd3"] = {str(wm): s["bytes"] for wm, s in per_window.items()}
    out["samples"] = samples
    return out


def _store(path: Path, target: int) -> BufferStore:
    # synchronous=OFF: durability does not change sizes, and it keeps this phase fast.
    store = BufferStore(path, budget_bytes=1 << 40, synchronous="OFF", zstd_level=3, target_samples=target)
    store.open()
    return store


def job_window(spec: WorkloadSpec, window_ms: int, tmp: str, job: int) -> dict[str, Any]:
    """Batches as the agent seals them: one append per scrape, one claim per window."""
    w = spec.build()
    per_window = w.n_series * max(1, window_ms // INTERVAL_MS)
    target = min(MAX_MERGE_SAMPLES, max(AGENT_DEFAULT_TARGET_SAMPLES, per_window))
    store = _store(Path(tmp) / f"window-{window_ms}.db", target)
    batches = wire = samples = chunks = 0
    # What the agent's transport sends to a collector that keeps series tables: the first batch
    # carries them, later chunks with a known table go without it.
    tables = TableRefs()
    tables.supported = True
    by_reference = 0
    pending = 0
    last = 0

    def seal(now_ms: int) -> None:
        nonlocal batches, wire, samples, chunks, by_reference
        batch = store.claim(1 << 40, now_ms, report_losses=False)
        assert batch is not None
        header = batchfmt.BatchHeader(
            device=DEVICE,
            buffer_id=store.buffer_id,
            seq=batch.seq,
            sent_at_ms=now_ms,
            samples=batch.samples,
            agent_version=__version__,
        )
        body = batchfmt.encode(header, batch.chunks)
        wire += len(body)
        if len(body) <= TABLE_REFS_MAX_BODY:  # as the agent's transport does
            sent, digests = tables.rewrite(body)
            tables.acknowledged(digests)
            by_reference += len(sent)
        else:
            by_reference += len(body)
        samples += batch.samples
        chunks += len(batch.chunks)
        batches += 1
        store.ack(batch.seq, 0)

    try:
        for base, series in _rounds_with_progress(w, job):
            store.append(series, 0, base)
            pending += 1
            last = base
            if pending * INTERVAL_MS >= window_ms:
                seal(base + INTERVAL_MS)
                pending = 0
        if pending:
            seal(last + INTERVAL_MS)  # the tail the agent would send at the next tick
    finally:
        store.close()
        store.worker.shutdown()
    return {
        "window_ms": window_ms,
        "target_samples": target,
        "batches": batches,
        "chunks": chunks,
        "bytes": wire,
        "bytes_by_reference": by_reference,
        "samples": samples,
    }


def job_disk(spec: WorkloadSpec, tmp: str, job: int) -> dict[str, Any]:
    """The buffer during an outage: one chunk per scrape, compacted on the agent's 30 s timer."""
    w = spec.build()
    path = Path(tmp) / "disk.db"
    store = _store(path, AGENT_DEFAULT_TARGET_SAMPLES)
    every = max(1, COMPACT_INTERVAL_MS // INTERVAL_MS)
    try:
        last = 0
        for i, (base, series) in enumerate(_rounds_with_progress(w, job)):
            store.append(series, 0, base)
            last = base
            if (i + 1) % every == 0:
                store.compact(base + INTERVAL_MS)
        while store.compact(last + INTERVAL_MS):  # at most 2,000 chunks per call
            pass
        (page_size,) = store.conn.execute("PRAGMA page_size").fetchone()
        (free_pages,) = store.conn.execute("PRAGMA freelist_count").fetchone()
        wal = Path(f"{path}-wal")
        result = {
            "samples": store.totals.samples,
            "chunks": store.totals.chunks,
            "chunk_bytes": store.totals.bytes,
            "file_bytes": _db_bytes(path),
            "db_bytes": path.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "freelist_bytes": page_size * free_pages,
        }
    finally:
        store.close()
        store.worker.shutdown()
    result["file_bytes_after_close"] = _db_bytes(path)
    return result


def _db_bytes(path: Path) -> int:
    """The database file plus its WAL (the -shm index holds no data)."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def run_size_jobs(spec: WorkloadSpec, windows_ms: list[int], progress: Progress) -> dict[str, Any]:
    """Run the reference, per-window and disk jobs in parallel, one process per core."""
    names = ["references", *(f"window {_window_name(wm)}" for wm in windows_ms), "disk"]
    counters = mp.get_context("fork").Array("i", len(names), lock=False)
    n_rounds = Workload(spec.series, spec.minutes, spec.start_ms).n_rounds
    total = n_rounds * len(names)
    progress.set(
        "wire & disk sizes:",
        lambda: (
            f"{sum(counters)}/{total} scrape rounds replayed across {len(names)} jobs "
            f"({', '.join(n for i, n in enumerate(names) if 0 < counters[i] < n_rounds) or 'starting'})"
        ),
    )
    with tempfile.TemporaryDirectory(prefix="bench-sizes-") as tmp:
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(
            os.cpu_count() or 2, mp_context=ctx, initializer=_init_worker, initargs=(counters,)
        ) as pool:
            # Longest jobs first, so the pool does not end on one long job.
            refs = pool.submit(job_references, spec, windows_ms, 0)
            wins = {
                wm: pool.submit(job_window, spec, wm, tmp, i + 1) for i, wm in reversed(list(enumerate(windows_ms)))
            }
            disk = pool.submit(job_disk, spec, tmp, len(names) - 1)
            return {
                "references": refs.result(),
                "windows": [wins[wm].result() for wm in windows_ms],
                "disk": disk.result(),
            }


def _window_name(ms: int) -> str:
    return f"{ms // 3_600_000} h" if ms >= 3_600_000 else f"{ms // 60_000} min" if ms >= 60_000 else f"{ms // 1000} s"


# -- 4: durable ingest through real processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def metric_sum(page: str, name: str) -> float:
    """Sum of every sample of ``name`` (any labels) on a /metrics page."""
    total = 0.0
    for line in page.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[-1])
    return total


@dataclass
class Server:
    """A process under test: how to start it, where it answers, and how to stop it."""

    name: str
    argv: list[str]
    url: str
    ready_path: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 30) -> psutil.Process:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env or None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log.read_text()[-3000:]}")
            if http_status(self.url + self.ready_path) == 200:
                return psutil.Process(self.popen.pid)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"warning: {self.name} ignored SIGTERM for {timeout} s; killing it", file=sys.stderr)
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def agent_server(workdir: Path) -> Server:
    port = free_port()
    config = workdir / "agent.toml"
    # No [uplink]: the agent only buffers. Buffer settings stay at their defaults (synchronous FULL,
    # 2 ms group commit); the budget is raised so that nothing is evicted during the run.
    config.write_text(
        f'device_id = "{DEVICE}"\nlog_level = "WARNING"\n\n'
        f'[listen]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[buffer]\npath = "{workdir / "buffer.db"}"\nbudget_bytes = {8 * 1024**3}\n'
    )
    script = Path(sys.executable).parent / "backhaul-agent"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]
    # BACKHAUL_* variables in our environment would override the config file: leave them out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKHAUL_")}
    return Server(
        "agent", [*argv, "run", "--config", str(config)], f"http://127.0.0.1:{port}", "/healthz", workdir, env
    )


def prometheus_server(workdir: Path, binary: str) -> Server:
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-remote-write-receiver",
        "--log.level=warn",
    ]
    return Server("prometheus", argv, f"http://127.0.0.1:{port}", "/-/ready", workdir)


class ByteSink:
    """An HTTP endpoint that takes anything and counts body bytes: where vmagent forwards to."""

    def __init__(self) -> None:
        sink = self
        self.bytes = 0
        self.requests = 0
        self.encodings: set[str] = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                sink.bytes += n
                sink.requests += 1
                sink.encodings.add(self.headers.get("Content-Encoding") or "none")
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="sink", daemon=True)
        self._thread.start()

    def settled(self, quiet: float = 3.0, timeout: float = 60.0) -> int:
        """Wait until no bytes arrive for ``quiet`` seconds; return the byte count."""
        deadline = time.monotonic() + timeout
        last, since = self.bytes, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < quiet:
            time.sleep(0.2)
            if self.bytes != last:
                last, since = self.bytes, time.monotonic()
        return self.bytes

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def vmagent_server_flags(binary: str) -> str:
    done = subprocess.run([binary, "-help"], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def vmagent_speaks_zstd(binary: str) -> bool:
    """Whether this vmagent has the VictoriaMetrics remote-write protocol (zstd), added in 1.88."""
    try:
        return "remoteWrite.forceVMProto" in vmagent_server_flags(binary)
    except (OSError, subprocess.SubprocessError):
        return False


def vmagent_server(workdir: Path, binary: str, sink: ByteSink) -> Server:
    port = free_port()
    argv = [
        binary,
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-remoteWrite.url={sink.url}/api/v1/write",
        f"-remoteWrite.tmpDataPath={workdir / 'vmagent-queue'}",
        "-remoteWrite.forceVMProto",  # the zstd protocol, without probing the sink for it
        "-loggerLevel=WARN",
    ]
    return Server("vmagent", argv, f"http://127.0.0.1:{port}", "/health", workdir)


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


async def push(
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
            async with moved:  # stay at most one wave ahead of the slowest shard
                await moved.wait_for(lambda w=wave: min(done) >= w - 1 or stop.is_set())
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
                async with session.post(server.url + "/api/v1/write", data=body, headers=RW_HEADERS) as resp:
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
        asyncio.run(push(server, proc, ip, seconds, result, progress))
        page = http_text(server.url + "/metrics")
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


# -- 5: the table --------------------------------------------------------------------------------------------


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
            f"RW protobuf of the same {_window_name(wm)}, one zstd-3 frame",
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
                f"wire bytes/sample, {_window_name(wm)} batches{chunks}",
                win["bytes"] / win["samples"],
                [*scrape_refs, window_ref],
                targets.get(wm, "-"),
            )
        )
        if wm <= 60_000:
            rows.append(
                Row(
                    f"  the same, series table by reference (a collector that keeps it), {_window_name(wm)}",
                    win["bytes_by_reference"] / win["samples"],
                    [per_scrape[0]],
                    targets.get(wm, "-"),
                )
            )
    disk = sizes["disk"]
    dn = disk["samples"]
    agent = next((r for r in ingest if r.name == "agent"), None)
    prom = next((r for r in ingest if r.name == "prometheus"), None)
    prom_disk = (
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


# -- main ------------------------------------------------------------------------------------------------


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
            targets.append(lambda d, b=prometheus: prometheus_server(d, b))
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
            from drain import run_drain  # drain.py builds on this module's helpers

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

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ".gitignore").write_text("*\n")
    out = RESULTS / f"foundation-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
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
            indent=2,
        )
    )
    print(f"results: {out.relative_to(HERE.parent)}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
