"""A deterministic, realistic scrape workload: node_exporter plus an inference server, every 5 s.

The node_exporter target replays a real recording (bench/fixtures: two scrapes of Debian's
node_exporter 1.5.0, 10 s apart): its series, labels and values are real, and each series moves the
way it moved between the two scrapes. The inference server is modelled (below) on the metric
families inference servers and DCGM export.

One *replica* is one edge host: a node_exporter target (``job="node"``) and an inference-server
target (``job="inference"``), about 1,000 series together, including the ``up``/``scrape_*`` series
Prometheus adds per target. More series means more replicas (``instance`` 127.0.0.2, .3, ...).

Dynamics follow what the real exporters produce, because that is what compression feeds on:
counters rise by varying increments (multiples of 0.01 s for CPU time, integers elsewhere), gauges
random-walk in their natural quantum (4 KiB pages, whole MiB ...), a good share never changes,
and a few series are pure noise (scrape durations). Timestamps are scrape start times:
a fixed per-target phase within the interval plus a few ms of jitter, now and then a GC-sized stall.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from prometheus_client.parser import text_string_to_metric_families

from backhaul.wire.chunk import decimal_scale
from backhaul.wire.series import Labels, SeriesMap

INTERVAL_MS = 5_000
SEED = 20240229

Step = Callable[[float, int], float]  # (previous value, timestamp ms) -> new value


@dataclass
class Series:
    labels: Labels
    value: float
    step: Step | None  # None: constant


@dataclass
class Target:
    """One scrape target: its series and the per-scrape hooks that keep families consistent."""

    job: str
    instance: str
    phase_ms: int
    series: list[Series] = field(default_factory=list)
    # Called once per scrape before the plain series step (histograms, correlated counters).
    hooks: list[Callable[[int], None]] = field(default_factory=list)


def _labels(name: str, target: tuple[str, str], /, **extra: str) -> Labels:
    # Prometheus drops empty-valued labels at scrape time, so they never reach remote write.
    pairs = [("__name__", name), ("job", target[0]), ("instance", target[1]), *extra.items()]
    return tuple(sorted((k, v) for k, v in pairs if v))


class _GpuLabels(TypedDict):
    """The DCGM exporter's labels on a GPU's series; a TypedDict so that ``**labels`` cannot fill ``walk``'s floats."""

    gpu: str
    UUID: str
    modelName: str


class _Builder:
    """Helpers that create series with a given kind of dynamics, all drawing from one RNG."""

    def __init__(self, rng: random.Random, target: Target) -> None:
        self.rng = rng
        self.t = target
        self.key = (target.job, target.instance)

    def add(self, name: str, value: float, step: Step | None = None, /, **labels: str) -> Series:
        s = Series(_labels(name, self.key, **labels), float(value), step)
        self.t.series.append(s)
        return s

    def const(self, name: str, value: float, /, **labels: str) -> Series:
        return self.add(name, value, None, **labels)

    def counter_f(self, name: str, per_s: float, quantum: float = 0.01, **labels: str) -> Series:
        """Float counter (seconds): increments vary around ``per_s`` and are rounded to ``quantum``."""
        rng = self.rng
        digits = _digits(quantum)

        def step(v: float, _ts: int) -> float:
            inc = max(0.0, rng.gauss(per_s * 5, per_s * 5 * 0.3))
            return round(v + round(inc / quantum) * quantum, digits)

        return self.add(name, round(rng.uniform(1e3, 1e6) * per_s, digits), step, **labels)

    def counter_i(self, name: str, per_s: float, **labels: str) -> Series:
        """Integer counter; low rates make it rise only now and then (errors, retransmits ...)."""
        rng = self.rng
        mean = per_s * 5

        def step(v: float, _ts: int) -> float:
            if mean < 1:
                return v + (1 if rng.random() < mean else 0)
            return v + max(0, round(rng.gauss(mean, math.sqrt(mean) + mean * 0.2)))

        return self.add(name, round(rng.uniform(1e4, 1e6) * per_s), step, **labels)

    def walk(
        self,
        name: str,
        value: float,
        sd: float,
        lo: float,
        hi: float,
        quantum: float = 1.0,
        p: float = 1.0,
        **labels: str,
    ) -> Series:
        """Gauge random walk in steps of ``quantum``, moving on a fraction ``p`` of scrapes."""
        rng = self.rng
        digits = _digits(quantum)

        def step(v: float, _ts: int) -> float:
            if p < 1 and rng.random() >= p:
                return v
            nv = min(hi, max(lo, v + rng.gauss(0, sd)))
            return round(round(nv / quantum) * quantum, digits)

        return self.add(name, round(round(value / quantum) * quantum, digits), step, **labels)

    def noise(self, name: str, mean: float, **labels: str) -> Series:
        """Pure noise around ``mean``: durations measured per scrape, in nanoseconds as Go measures them
        and printed as float64(ns) / 1e9, so a short decimal but with no pattern from one scrape to the next."""
        rng = self.rng
        return self.add(name, mean, lambda _v, _ts: round(mean * rng.lognormvariate(0, 0.35), 9), **labels)


def _digits(quantum: float) -> int:
    """Fractional digits of a quantum: the exporter prints such values as short decimals."""
    return max(0, -math.floor(math.log10(quantum)))


def _scrape_meta(b: _Builder, scraped: int) -> None:
    """The series Prometheus itself adds for every target, and sends over remote write."""
    b.const("up", 1)
    b.noise("scrape_duration_seconds", 0.031 if b.t.job == "node" else 0.009)
    b.const("scrape_samples_scraped", scraped)
    b.const("scrape_samples_post_metric_relabeling", scraped)
    b.const("scrape_series_added", 0)


_BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf")


def _histogram(b: _Builder, name: str, rate: Callable[[], float], median_s: float, **labels: str) -> None:
    """A cumulative histogram fed by ``rate()`` events per second with log-normal durations."""
    rng = b.rng
    bounds = [float(le) for le in _BUCKETS]
    # The server has been up for a while: start from a plausible history, not from zero.
    past = round(rng.uniform(1e4, 1e6) * rate())
    history = [median_s * rng.lognormvariate(0, 0.6) for _ in range(200)]
    buckets = [
        b.const(f"{name}_bucket", round(past * sum(1 for d in history if d <= bound) / 200), le=le, **labels)
        for le, bound in zip(_BUCKETS, bounds, strict=True)
    ]
    total = b.const(f"{name}_sum", past * sum(history) / 200, **labels)
    count = b.const(f"{name}_count", buckets[-1].value, **labels)

    def hook(_ts: int) -> None:
        n = _poisson(rng, rate() * 5)
        if not n:
            return
        durations = [median_s * rng.lognormvariate(0, 0.6) for _ in range(min(n, 64))]
        scale = n / len(durations)  # sample at most 64 events per scrape; scale the rest in
        for i, bound in enumerate(bounds):
            buckets[i].value += round(sum(1 for d in durations if d <= bound) * scale)
        total.value += sum(durations) * scale
        count.value = buckets[-1].value

    b.t.hooks.append(hook)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _inference_server(rng: random.Random, instance: str) -> Target:
    t = Target("inference", instance, rng.randrange(INTERVAL_MS))
    b = _Builder(rng, t)
    models = {  # name: (requests/s, median latency s, tokens per request or 0)
        "yolov8n-int8": (24.0, 0.012, 0),
        "resnet50-fp16": (6.0, 0.021, 0),
        "whisper-small": (0.4, 0.9, 0),
        "llama-3.2-3b-q4": (0.25, 3.5, 180),
        "bge-small-en": (1.5, 0.03, 0),
        "paddleocr-v4": (2.0, 0.045, 0),
    }
    load = {"factor": 1.0}

    def drift(_ts: int) -> None:
        # Shared load level: all request rates follow it, so the counters move together.
        load["factor"] = min(2.0, max(0.2, load["factor"] + rng.gauss(0, 0.05)))

    t.hooks.append(drift)
    for model, (rps, median, tokens) in models.items():
        version = "1"
        ok = b.const("inference_requests_total", round(rng.uniform(1e4, 1e6) * rps), model=model, status="success")
        err = b.const("inference_requests_total", round(rng.uniform(0, 50)), model=model, status="error")
        b.const("inference_requests_total", 0, model=model, status="timeout")
        b.const("inference_model_info", 1, model=model, version=version, backend="tensorrt", precision="fp16")
        b.const("inference_model_load_timestamp_seconds", 1708123999.0 + len(model), model=model, version=version)
        b.const("inference_model_ready", 1, model=model, version=version)
        b.walk("inference_queue_size", 0, 1.2, 0, 32, model=model)
        b.walk("inference_batch_size", 4 if rps > 1 else 1, 0.8, 1, 8, p=0.3, model=model)

        def rate(r: float = rps) -> float:
            return r * load["factor"]

        _histogram(b, "inference_request_duration_seconds", rate, median, model=model)
        _histogram(b, "inference_queue_duration_seconds", rate, median / 8, model=model)
        prompt = gen = None
        if tokens:
            prompt = b.const("inference_prompt_tokens_total", round(rng.uniform(1e6, 1e8)), model=model)
            gen = b.const("inference_generation_tokens_total", round(rng.uniform(1e6, 1e8)), model=model)
            b.walk("inference_kv_cache_usage_ratio", 0.3, 0.05, 0, 1, quantum=1e-4, model=model)
            b.walk("inference_tokens_per_second", 28, 2.5, 5, 45, quantum=0.01, model=model)

        def count(
            _ts: int,
            r: float = rps,
            ok: Series = ok,
            err: Series = err,
            prompt: Series | None = prompt,
            gen: Series | None = gen,
        ) -> None:
            n = _poisson(rng, r * load["factor"] * 5)
            failed = 1 if rng.random() < 0.002 * n else 0
            ok.value += n - failed
            err.value += failed
            if prompt is not None and gen is not None and n:
                prompt.value += sum(rng.randrange(40, 900) for _ in range(n))
                gen.value += sum(rng.randrange(20, 400) for _ in range(n))

        t.hooks.append(count)

    for gpu in ("0",):
        g: _GpuLabels = {"gpu": gpu, "UUID": "GPU-5f3c1a2e-8d41-4b7e-9c0a-1f2e3d4c5b6a", "modelName": "Orin (nvgpu)"}
        b.walk("DCGM_FI_DEV_GPU_UTIL", 55, 12, 0, 100, **g)
        b.walk("DCGM_FI_DEV_MEM_COPY_UTIL", 18, 5, 0, 100, **g)
        b.walk("DCGM_FI_DEV_FB_USED", 11800, 60, 4000, 30000, **g)  # MiB, as DCGM reports
        b.walk("DCGM_FI_DEV_FB_FREE", 18500, 60, 1000, 30000, **g)
        b.const("DCGM_FI_DEV_FB_TOTAL", 30592, **g)
        b.walk("DCGM_FI_DEV_GPU_TEMP", 52, 0.8, 30, 90, **g)
        b.walk("DCGM_FI_DEV_MEMORY_TEMP", 49, 0.6, 30, 90, **g)
        b.walk("DCGM_FI_DEV_POWER_USAGE", 21.5, 2.2, 5, 60, quantum=0.001, **g)
        b.counter_i("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 21500, **g)  # mJ
        b.walk("DCGM_FI_DEV_SM_CLOCK", 1100, 90, 300, 1300, **g)
        b.walk("DCGM_FI_DEV_MEM_CLOCK", 3199, 0, 3199, 3199, **g)
        b.const("DCGM_FI_DEV_XID_ERRORS", 0, **g)
        b.const("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", 0, **g)
        b.walk("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.55, 0.08, 0, 1, quantum=1e-6, **g)
        b.walk("DCGM_FI_PROF_DRAM_ACTIVE", 0.21, 0.04, 0, 1, quantum=1e-6, **g)
        b.walk("inference_gpu_utilization_ratio", 0.55, 0.1, 0, 1, quantum=0.01, gpu=gpu)
        b.walk("inference_gpu_memory_used_bytes", 1.24e10, 5e7, 4e9, 3e10, quantum=1024**2, gpu=gpu)
        b.const("inference_gpu_memory_total_bytes", 3.2e10, gpu=gpu)
    # The server is a Python process: prometheus_client's default collectors.
    for gen_ in ("0", "1", "2"):
        b.counter_i("python_gc_objects_collected_total", [40, 4, 0.2][int(gen_)], generation=gen_)
        b.const("python_gc_objects_uncollectable_total", 0, generation=gen_)
        b.counter_i("python_gc_collections_total", [3, 0.3, 0.01][int(gen_)], generation=gen_)
    b.const("python_info", 1, implementation="CPython", major="3", minor="10", patchlevel="12", version="3.10.12")
    b.counter_f("process_cpu_seconds_total", 1.3, quantum=0.01)
    b.walk("process_resident_memory_bytes", 2.1e9, 2e6, 1.9e9, 2.6e9, quantum=4096)
    b.walk("process_virtual_memory_bytes", 2.4e10, 2e6, 2.3e10, 2.5e10, quantum=4096, p=0.1)
    b.walk("process_open_fds", 41, 1.5, 30, 80)
    b.const("process_max_fds", 1048576)
    b.const("process_start_time_seconds", 1708123999.12)
    _scrape_meta(b, len(t.series))
    return t


# Two real scrapes of Debian's prometheus-node-exporter 1.5.0, 10 s apart, on a 2-core VM.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORDED_NODE = ("node_exporter-1.5.0.a.prom", "node_exporter-1.5.0.b.prom")
RECORDED_GAP_S = 10.0
_COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


@functools.cache
def _recorded(names: tuple[str, str]) -> list[tuple[str, Labels, float, float, bool]]:
    """(name, labels, first value, second value, is a counter) for every series of the recording."""
    scrapes = []
    for name in names:
        text = (FIXTURES / name).read_text()
        found = {}
        for family in text_string_to_metric_families(text):
            counter = family.type in ("counter", "histogram", "summary")
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                found[key] = (sample.value, counter or sample.name.endswith(_COUNTER_SUFFIXES))
        scrapes.append(found)
    first, second = scrapes
    return [(n, labels, v, second[(n, labels)][0], c) for (n, labels), (v, c) in first.items() if (n, labels) in second]


def _recorded_node_exporter(rng: random.Random, instance: str) -> Target:
    """node_exporter replayed from a real recording: its series, label sets and values are real.

    What each series does per 5 s scrape follows what it did between the two recorded scrapes: a
    counter keeps its observed rate (increments vary by 30 %), a gauge that moved random-walks by the
    observed step, anything that did not move stays constant. Values keep the decimals the exporter
    printed (whole bytes, CPU seconds in hundredths, ...), as the real exporter would go on printing them.
    """
    t = Target("node", instance, rng.randrange(INTERVAL_MS))
    b = _Builder(rng, t)
    for name, labels, a, z, counter in _recorded(RECORDED_NODE):
        extra = {k: v for k, v in labels if k not in ("job", "instance")}
        if a == z or math.isnan(a) or math.isnan(z):
            b.const(name, z, **extra)
            continue
        digits = decimal_scale([a, z])
        per_scrape = (z - a) * INTERVAL_MS / 1000 / RECORDED_GAP_S
        if name.endswith("time_seconds") and abs(per_scrape * 1000 / INTERVAL_MS - 1) < 0.1:

            def clock(_v: float, ts: int, d: int | None = digits) -> float:
                return ts / 1000 if d is None else round(ts / 1000, d)

            b.add(name, z, clock, **extra)
        elif counter:
            b.add(name, z, _counter_step(rng, per_scrape, digits), **extra)
        else:
            b.add(name, z, _walk_step(rng, abs(per_scrape), digits, nonnegative=min(a, z) >= 0), **extra)
    _scrape_meta(b, len(t.series))
    return t


def _counter_step(rng: random.Random, mean: float, digits: int | None) -> Step:
    def step(v: float, _ts: int) -> float:
        nv = v + max(0.0, rng.gauss(mean, abs(mean) * 0.3))
        return nv if digits is None else round(nv, digits)

    return step


def _walk_step(rng: random.Random, sd: float, digits: int | None, nonnegative: bool) -> Step:
    def step(v: float, _ts: int) -> float:
        nv = v + rng.gauss(0, sd)
        if nonnegative:
            nv = abs(nv)
        return nv if digits is None else round(nv, digits)

    return step


def replica_targets(rng: random.Random, replica: int) -> list[Target]:
    host = f"127.0.0.{replica + 1}"
    return [_recorded_node_exporter(rng, f"{host}:9100"), _inference_server(rng, f"{host}:8002")]


class Workload:
    """The scrapes of ``replicas`` hosts from ``start_ms`` on, one :class:`SeriesMap` per 5 s round.

    Every call of :meth:`rounds` replays the same samples (the RNG is re-seeded), so each
    measurement can stream the workload instead of holding an hour of 10k series in memory.
    """

    def __init__(self, series: int, minutes: float, start_ms: int, seed: int = SEED) -> None:
        self.seed = seed
        self.start_ms = start_ms - start_ms % INTERVAL_MS
        self.n_rounds = max(1, int(minutes * 60_000 // INTERVAL_MS))
        per_replica = len(self._targets(random.Random(seed), 1)[0].series) + len(
            self._targets(random.Random(seed), 1)[1].series
        )
        self.replicas = max(1, round(series / per_replica))
        self.labels = [s.labels for t in self._targets(random.Random(seed), self.replicas) for s in t.series]
        self.n_series = len(self.labels)
        if len(set(self.labels)) != self.n_series:
            raise AssertionError("workload has duplicate series")

    @staticmethod
    def _targets(rng: random.Random, replicas: int) -> list[Target]:
        return [t for r in range(replicas) for t in replica_targets(rng, r)]

    @property
    def samples(self) -> int:
        return self.n_series * self.n_rounds

    def rounds(self, limit: int | None = None) -> Iterator[tuple[int, SeriesMap]]:
        """Yield ``(round_start_ms, samples)`` for each scrape round, oldest first."""
        rng = random.Random(self.seed)
        targets = self._targets(rng, self.replicas)
        dyn = random.Random(self.seed + 1)  # jitter draws from its own stream
        for r in range(self.n_rounds if limit is None else min(limit, self.n_rounds)):
            base = self.start_ms + r * INTERVAL_MS
            out: SeriesMap = {}
            for t in targets:
                jitter = min(3, abs(round(dyn.gauss(0, 1.2))))
                if dyn.random() < 0.01:
                    jitter += dyn.randrange(5, 40)  # a GC pause or a slow target now and then
                ts = base + t.phase_ms + jitter
                for hook in t.hooks:
                    hook(ts)
                for s in t.series:
                    if s.step is not None:
                        s.value = s.step(s.value, ts)
                    out[s.labels] = ([ts], [s.value])
            yield base, out


@dataclass
class WorkloadSpec:
    """What a worker process needs to rebuild the identical workload (cheaper than pickling an hour of samples)."""

    series: int
    minutes: float
    start_ms: int

    def build(self) -> Workload:
        return Workload(self.series, self.minutes, self.start_ms)
