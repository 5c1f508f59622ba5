"""The backhaul demo (`make demo`): a local Prometheus stand-in pushes to a real agent, which buffers
and uploads to a real collector, through a collector outage and an agent power cut; at the end every
sample the agent acknowledged must be in the collector's export. Meanwhile the agent supervises a real
(demo) inference server, scrapes its /metrics, measures the requests a client sends through the
agent's proxy, samples the host and reports the model; those must reach the collector too.

Runs in about a minute with no arguments. Everything lives in ./demo-data (wiped at start): configs
derived from examples/*.toml, the agent's buffer, the collector's store, and both processes' logs.
``--keep`` leaves agent and collector running after the verdict, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import sys
import threading
import time
import tomllib
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from backhaul.wire import remote_write as rw
from backhaul.wire.series import Labels, SeriesMap
from harness import (
    READ,
    READ_HEADERS,
    READ_TOKEN,
    RW_HEADERS,
    Proc,
    ProcError,
    export,
    free_port,
    get_json,
    http,
    read_metrics,
    write_toml,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "demo-data"
EXAMPLES = ROOT / "examples"
DEVICE = "edge-demo-1"
BATCH_INTERVAL = 2.0  # seconds; short so the demo shows several uploads
PUSH_INTERVAL = 1.0  # seconds between "scrapes" of the simulated inference server
INFERENCE_TPS = 40  # tokens per second of the supervised demo inference server
PUSHER_JOB = "inference-server"  # the pusher's samples; the agent's own sources use other jobs

OLDEST = "backhaul_buffer_oldest_unsent_sample_age_seconds"
Sample = tuple[Labels, int, float]  # (sorted label pairs incl. __name__, timestamp ms, value)


# -- terminal --------------------------------------------------------------------------------------


def _ansi(code: str) -> Callable[[str], str]:
    """A styling function for the SGR ``code``: only on a terminal, and never with NO_COLOR set."""
    on = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return lambda text: f"\033[{code}m{text}\033[0m" if on else text


class Style:
    """ANSI styling of the demo's output."""

    bold = staticmethod(_ansi("1"))
    dim = staticmethod(_ansi("2"))
    green = staticmethod(_ansi("32"))
    yellow = staticmethod(_ansi("33"))
    red = staticmethod(_ansi("31"))
    cyan = staticmethod(_ansi("36"))


def banner(step: str, title: str, *lines: str) -> None:
    head = f"── {step}  {title} " if title else f"── {step} "
    print()
    print(Style.cyan(Style.bold(head + "─" * max(3, 100 - len(head)))))
    for line in lines:
        print(f"   {line}")


def note(text: str) -> None:
    print(f"   {Style.dim('·')} {text}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# -- the processes and their configs --------------------------------------------------------------


def metrics_or_none(url: str) -> dict[str, float] | None:
    """A /metrics page as {'name{labels}': value}; None while the process does not answer."""
    try:
        return read_metrics(url, timeout=1)
    except OSError:
        return None


def derive_config(example: Path, overrides: dict[str, Any], target: Path) -> Path:
    """examples/<x>.toml with the demo's overrides applied: the demo proves the examples still load."""
    config = tomllib.loads(example.read_text())
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    header = f"# Written by scripts/demo.py from {example.relative_to(ROOT)} (see there for what each setting means).\n"
    return write_toml(target, config, header)


class Service(Proc):
    """A real backhaul process of the demo, in a session of its own (a Ctrl-C in the terminal reaches
    only the demo, which then stops its children in order), each of its starts marked in its log.

    Args:
        program: ``backhaul-agent`` or ``backhaul-collector``.
        name: its files in ./demo-data: ``<name>.toml`` and ``<name>.log``.
        port: where it listens.
    """

    def __init__(self, program: str, name: str, port: int) -> None:
        super().__init__(program, DATA / f"{name}.toml", DATA / f"{name}.log", detached=True)
        self.url = f"http://127.0.0.1:{port}"
        self.starts = 0

    def launch(self, timeout: float = 20) -> None:
        """Start it and wait until it is healthy (ProcError if it is not)."""
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== demo: start #{self.starts} at {time.strftime('%H:%M:%S')} =====\n".encode())
        self.start().wait_healthy(self.url, timeout)

    def terminate(self, timeout: float = 20) -> int | None:
        """SIGTERM, as systemd stops a service; SIGKILL if it does not exit in time."""
        if self.popen is None:
            return None
        try:
            return self.stop(timeout)
        except ProcError:  # killed after ignoring SIGTERM: its status says so
            return self.popen.returncode


# -- the simulated inference server and its Prometheus -----------------------------------------------


class InferenceServer:
    """Metrics an edge inference server would expose, evolving plausibly from one scrape to the next."""

    MODELS = (  # name, version, requests per second, median latency (s)
        ("llama-3.1-8b-instruct", "q4_k_m-2024.07", 3.0, 0.9),
        ("whisper-large-v3", "fp16-1.2.0", 1.5, 0.4),
        ("yolov8n", "int8-8.1.0", 25.0, 0.012),
    )
    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)
    STATUSES = ("ok", "error", "rejected")

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.base = (("instance", f"{DEVICE}:8080"), ("job", "inference-server"))
        self.requests = {(m[0], s): 0 for m in self.MODELS for s in self.STATUSES}
        self.buckets = {(m[0], le): 0 for m in self.MODELS for le in self.BUCKETS}
        self.latency_sum = {m[0]: 0.0 for m in self.MODELS}
        self.tokens = {"llama-3.1-8b-instruct": 0, "whisper-large-v3": 0}
        self.gpu = [0.55, 0.35]
        self.started = time.time()

    def labels(self, name: str, **extra: str) -> Labels:
        return tuple(sorted((("__name__", name), *self.base, *extra.items())))

    def scrape(self, now: float) -> SeriesMap:
        """Advance one scrape interval and return every series' sample at ``now``."""
        rng, ts = self.rng, int(now * 1000)
        out: SeriesMap = {}

        def put(labels: Labels, value: float) -> None:
            out[labels] = ([ts], [float(value)])

        for model, version, rate, median in self.MODELS:
            n = max(0, round(rng.gauss(rate * PUSH_INTERVAL, math.sqrt(rate))))
            for _ in range(n):
                status = rng.choices(self.STATUSES, weights=(0.97, 0.01, 0.02))[0]
                self.requests[model, status] += 1
                latency = rng.lognormvariate(math.log(median), 0.45)
                self.latency_sum[model] += latency
                for le in self.BUCKETS:
                    if latency <= le:
                        self.buckets[model, le] += 1
            for status in self.STATUSES:
                put(self.labels("inference_requests_total", model=model, status=status), self.requests[model, status])
            for le in self.BUCKETS:
                le_text = "+Inf" if le == math.inf else repr(le)
                put(
                    self.labels("inference_request_duration_seconds_bucket", model=model, le=le_text),
                    self.buckets[model, le],
                )
            put(self.labels("inference_request_duration_seconds_sum", model=model), round(self.latency_sum[model], 6))
            put(self.labels("inference_request_duration_seconds_count", model=model), self.buckets[model, math.inf])
            put(self.labels("inference_queue_depth", model=model), max(0, round(rng.gauss(rate / 3, 1))))
            put(self.labels("model_loaded", model=model, version=version), 1)
            if model in self.tokens:
                self.tokens[model] += sum(rng.randint(40, 400) for _ in range(n))
                put(self.labels("inference_tokens_generated_total", model=model), self.tokens[model])
        for gpu, util in enumerate(self.gpu):
            util = min(1.0, max(0.0, util + rng.gauss(0, 0.04)))
            self.gpu[gpu] = util
            put(self.labels("gpu_utilization_ratio", gpu=str(gpu)), round(util, 4))
            put(self.labels("gpu_memory_used_bytes", gpu=str(gpu)), int(9.5e9 + util * 4e9 + rng.randint(0, 2**20)))
            put(self.labels("gpu_temperature_celsius", gpu=str(gpu)), round(48 + 30 * util + rng.gauss(0, 0.5), 1))
            put(self.labels("gpu_power_watts", gpu=str(gpu)), round(35 + 110 * util + rng.gauss(0, 2), 1))
        put(self.labels("process_resident_memory_bytes"), 2_147_483_648 + rng.randint(0, 50_000_000))
        put(self.labels("process_start_time_seconds"), round(self.started, 3))
        put(self.labels("up"), 1)
        put(self.labels("scrape_duration_seconds"), round(rng.uniform(0.002, 0.009), 6))
        return out


@dataclass
class Request:
    body: bytes
    samples: list[Sample]
    failures: int = 0


class Pusher:
    """Plays the local Prometheus: scrapes on schedule whatever happens downstream, queues the
    samples, and sends them in order, retrying 5xx, 429 and connection errors with backoff (so
    nothing is lost while the agent is down) and dropping other 4xx, as Prometheus' remote write does."""

    def __init__(self, url: str, source: InferenceServer) -> None:
        self.url = url
        self.source = source
        self.queue: deque[Request] = deque()
        self.acked: set[Sample] = set()
        self.acked_requests = 0
        self.acked_wire_bytes = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.crashed: BaseException | None = None  # a bug here must fail the demo, not thin its evidence
        self._stopping = threading.Event()
        self._flush_deadline = math.inf
        self._thread = threading.Thread(target=self._run, name="pusher", daemon=True)

    @property
    def retrying_samples(self) -> int:
        """Samples held back because the oldest request has failed (0 while deliveries succeed)."""
        queue = list(self.queue)
        return sum(len(r.samples) for r in queue) if queue and queue[0].failures else 0

    def start(self) -> None:
        self._thread.start()

    def finish(self, flush_timeout: float = 10) -> None:
        """Stop scraping, deliver what is queued (for up to ``flush_timeout``), and stop."""
        self._flush_deadline = time.monotonic() + flush_timeout
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(flush_timeout + 6)

    def abort(self) -> None:
        self._flush_deadline = 0
        self._stopping.set()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.crashed = exc
            raise

    def _loop(self) -> None:
        next_scrape = time.monotonic()
        retry_at = 0.0
        backoff = 0.0
        while True:
            now = time.monotonic()
            stopping = self._stopping.is_set()
            if stopping:
                if not self.queue or now > self._flush_deadline:
                    return
            elif now >= next_scrape:
                self.queue.append(self._request(self.source.scrape(time.time())))
                # On schedule, whatever happens downstream; after a stall, skip rather than burst.
                next_scrape = max(next_scrape + PUSH_INTERVAL, now)
                continue
            if self.queue and now >= retry_at:
                if self._send(self.queue[0]):
                    self.queue.popleft()
                    backoff = 0.0
                else:
                    self.queue[0].failures += 1
                    # Prometheus' defaults are 30 ms doubling to 5 s; capped at 1 s so the demo moves on.
                    backoff = min(1.0, max(0.03, backoff * 2))
                    retry_at = time.monotonic() + backoff
                continue
            wake = math.inf if stopping else next_scrape
            if self.queue:
                wake = min(wake, retry_at)
            time.sleep(min(0.1, max(0.0, wake - time.monotonic())))

    @staticmethod
    def _request(series: SeriesMap) -> Request:
        (body,) = rw.encode(series)
        samples = [(labels, t, v) for labels, (ts, vs) in series.items() for t, v in zip(ts, vs, strict=True)]
        return Request(body, samples)

    def _send(self, req: Request) -> bool:
        """True when the request is done with (acknowledged, or refused for good)."""
        headers = {**RW_HEADERS, "User-Agent": "backhaul-demo-pusher"}
        try:
            status, body, _ = http("POST", f"{self.url}/api/v1/write", req.body, headers, timeout=5)
        except (OSError, HTTPException) as exc:  # refused, reset, cut off: the agent is away
            self.last_error = type(exc).__name__ if not str(exc) else str(getattr(exc, "reason", exc))
            return False
        if 200 <= status < 300:
            self.acked.update(req.samples)
            self.acked_requests += 1
            self.acked_wire_bytes += len(req.body)
            self.last_error = None
            return True
        self.last_error = f"HTTP {status}: {body.decode(errors='replace').strip()[:60]}"
        if status == 429 or status >= 500:
            return False
        self.dropped += len(req.samples)  # any other 4xx: the data is bad, retrying cannot help
        return True


class Client(threading.Thread):
    """An application using the inference server through the agent's proxy: a chat completion every
    0.4 s, every other one streamed. Failures are expected while the agent is down."""

    def __init__(self, url: str) -> None:
        super().__init__(name="client", daemon=True)
        self.url = url
        self.ok = 0
        self.failed = 0
        self.tokens = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._stop_event.wait(0.4):
            n += 1
            body: dict[str, Any] = {
                "model": "demo-llm-1b",
                "messages": [{"role": "user", "content": f"status of line {n % 5}"}],
                "max_tokens": 12,
            }
            if n % 2:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            try:
                status, answer, _ = http(
                    "POST",
                    f"{self.url}/v1/chat/completions",
                    json.dumps(body).encode(),
                    {"Content-Type": "application/json"},
                    timeout=5,
                )
            except (OSError, HTTPException):
                self.failed += 1
                continue
            if status != 200:
                self.failed += 1
                continue
            self.ok += 1
            last = answer.rstrip().splitlines()[-3] if n % 2 else answer  # streamed: the usage chunk
            try:
                self.tokens += int(json.loads(last.removeprefix(b"data: "))["usage"]["completion_tokens"])
            except (ValueError, KeyError, TypeError, IndexError):
                pass

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(10)


# -- watching --------------------------------------------------------------------------------------


class Lifetimes:
    """A counter summed over process lifetimes (each new process starts counting at 0 again)."""

    def __init__(self) -> None:
        self.finished = 0.0
        self.current = 0.0

    def update(self, value: float | None) -> None:
        if value is not None:
            self.current = value

    def new_process(self) -> None:
        self.finished += self.current
        self.current = 0.0

    @property
    def total(self) -> float:
        return self.finished + self.current


@dataclass
class Snapshot:
    agent: dict[str, float] | None
    health: dict[str, Any] | None
    collector: dict[str, float] | None

    @property
    def backlog_samples(self) -> int | None:
        return None if self.agent is None else int(self.agent.get("backhaul_buffer_samples", 0))

    @property
    def stored(self) -> int | None:
        if self.collector is None:
            return None
        return int(self.collector.get(f'backhaul_collector_device_received_samples_total{{device="{DEVICE}"}}', 0))


COLUMNS = (
    ("time", 7),
    ("acked", 8),
    ("retrying", 9),
    ("stored", 8),
    ("backlog", 8),
    ("buffer", 10),
    ("oldest", 7),
    ("server", 7),
    ("tokens", 6),
)


LEGEND = (
    ("acked", "samples the agent answered 2xx to: from now on they are its responsibility"),
    ("retrying", "samples the pusher holds because the agent did not answer (Prometheus would do the same)"),
    ("stored", f"samples the collector stored for {DEVICE} (its /metrics): the pusher's and the agent's own"),
    ("backlog", "samples in the agent's disk buffer not yet stored by the collector; buffer = compressed size"),
    ("oldest", "age of the oldest of them"),
    ("server", "the supervised inference server's state (the agent's /healthz)"),
    ("tokens", "completion tokens the agent's proxy counted (since the agent started)"),
    ("uplink", "the agent's upload state (its /healthz and /metrics)"),
)


class Demo:
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.token = secrets.token_urlsafe(24)  # fresh per run: only this run's agent can upload
        cport, aport = free_port(), free_port()
        self.collector = Service("backhaul-collector", "collector", cport)
        self.agent = Service("backhaul-agent", "agent", aport)
        self.ports = (aport, cport)
        self.inference_port, self.proxy_port = free_port(), free_port()
        self.client = Client(f"http://127.0.0.1:{self.proxy_port}")
        self.model_file = DATA / "model.bin"
        self.orphan_check: str | None = None  # what happened to the server when the agent was killed
        self.scrape_size = 0
        self.pusher = Pusher(self.agent.url, InferenceServer())
        self.t0 = time.monotonic()
        self.uplink_bytes = Lifetimes()
        self.uplink_samples = Lifetimes()
        self.collector_dupes = Lifetimes()

    # -- status --

    def snapshot(self) -> Snapshot:
        agent, collector = metrics_or_none(self.agent.url), metrics_or_none(self.collector.url)
        snap = Snapshot(agent, get_json(f"{self.agent.url}/healthz"), collector)
        if snap.agent is not None:
            self.uplink_bytes.update(snap.agent.get("backhaul_uplink_bytes_total"))
            self.uplink_samples.update(snap.agent.get("backhaul_uplink_samples_total"))
        if snap.collector is not None:
            self.collector_dupes.update(snap.collector.get("backhaul_collector_duplicate_samples_total"))
        return snap

    def header(self) -> None:
        cells = [f"{name:>{width}}" for name, width in COLUMNS]
        print(Style.dim("   " + "  ".join(cells) + "  uplink"))

    def status(self, snap: Snapshot) -> None:
        dash = Style.dim("—")
        retrying = self.pusher.retrying_samples
        cells = [
            f"{time.monotonic() - self.t0:>6.1f}s",
            f"{len(self.pusher.acked):>8,}",
            Style.yellow(f"{retrying:>9,}") if retrying else f"{'0':>9}",
            f"{snap.stored:>8,}" if snap.stored is not None else " " * 7 + dash,
        ]
        if snap.agent is not None:
            a = snap.agent
            cells += [
                f"{snap.backlog_samples:>8,}",
                f"{human_bytes(a.get('backhaul_buffer_bytes', 0)):>10}",
                f"{a.get(OLDEST, 0):>6.1f}s",
            ]
        else:
            cells += [" " * 7 + dash, " " * 9 + dash, " " * 6 + dash]
        state = ((snap.health or {}).get("inference") or {}).get("state")
        if state is None:
            cells.append(" " * 6 + dash)
        else:
            shown = "up" if state == "running" else state[:7]
            cells.append((Style.green if state == "running" else Style.yellow)(f"{shown:>7}"))
        tokens = sum(v for k, v in (snap.agent or {}).items() if k.startswith("backhaul_proxy_completion_tokens_total"))
        cells.append(f"{int(tokens):>6}" if snap.agent is not None else " " * 5 + dash)
        print("   " + "  ".join(cells) + "  " + self.uplink_state(snap), flush=True)

    def uplink_state(self, snap: Snapshot) -> str:
        if snap.agent is None or snap.health is None:
            why = (self.pusher.last_error or "").removeprefix("[Errno 111] ")
            return Style.red("agent down") + Style.dim(f"  pusher: {why[:30]}" if why else "")
        error = (snap.health.get("uplink") or {}).get("last_error")
        if error:
            failed = int(snap.agent.get('backhaul_uplink_batches_total{outcome="failed"}', 0))
            if "Cannot connect" in error or "Connect call failed" in error:
                error = "collector unreachable"
            return Style.yellow("retrying") + Style.dim(f"  {error[:40]}, {failed} failed")
        last = snap.agent.get("backhaul_uplink_last_success_timestamp_seconds", 0)
        if not last:
            return Style.green("ok") + Style.dim("  no batch sent yet")
        return Style.green("ok") + Style.dim(f"  last batch stored {max(0.0, time.time() - last):.1f}s ago")

    def watch(self, seconds: float, until: Callable[[Snapshot], bool] | None = None, at_least: float = 0) -> Snapshot:
        """Print a status line every second for ``seconds`` (or until ``until`` holds, after ``at_least``)."""
        start = time.monotonic()
        tick = start
        while True:
            if self.pusher.crashed is not None:
                raise RuntimeError(f"the pusher failed: {self.pusher.crashed!r}")
            snap = self.snapshot()
            self.status(snap)
            elapsed = time.monotonic() - start
            if until is not None and elapsed >= at_least and until(snap):
                return snap
            tick += 1.0
            if tick - start > seconds:
                return snap
            time.sleep(max(0.0, tick - time.monotonic()))

    # -- the story --

    def run(self) -> int:
        self.setup()
        self.normal()
        self.uplink_down()
        self.uplink_back()
        self.power_cut()
        return self.verify()

    def setup(self) -> None:
        print(Style.bold("backhaul demo") + Style.dim("  —  Prometheus → agent (durable buffer) → collector"))
        shutil.rmtree(DATA, ignore_errors=True)
        DATA.mkdir(parents=True)
        aport, cport = self.ports
        derive_config(
            EXAMPLES / "collector.toml",
            {
                "listen": {"host": "127.0.0.1", "port": cport},
                "store": {"path": str(DATA / "collector" / "collector.db")},
                "devices": [{"id": DEVICE, "token": self.token}],
                "read": READ,  # the operator's credential: the read endpoints need one
            },
            self.collector.config,
        )
        derive_config(
            EXAMPLES / "agent.toml",
            {
                "device_id": DEVICE,
                "shutdown_grace": 10,
                "listen": {"host": "127.0.0.1", "port": aport},
                "buffer": {"path": str(DATA / "agent" / "buffer.db"), "budget_bytes": "64MiB"},
                "uplink": {
                    "url": f"{self.collector.url}/api/v1/batches",
                    "token": self.token,
                    "batch_interval": BATCH_INTERVAL,
                    "backoff_min": 0.5,
                    "backoff_max": 3,
                    "timeout": 5,
                },
                **self.inference_config(),
            },
            self.agent.config,
        )
        banner(
            "0/5",
            "Setup",
            f"working folder   {self.rel(DATA)}/  (configs, agent buffer, collector store, logs)",
            f"configs          {self.rel(self.agent.config)}, {self.rel(self.collector.config)}"
            + Style.dim("  (from examples/*.toml)"),
        )
        self.collector.launch()
        note(f"collector  {self.collector.url:<24} pid {self.collector.pid:<8} log {self.rel(self.collector.log)}")
        self.agent.launch()
        note(f"agent      {self.agent.url:<24} pid {self.agent.pid:<8} log {self.rel(self.agent.log)}")
        server = self.wait_inference()
        note(
            f"inference  http://127.0.0.1:{self.inference_port:<8} pid {server:<8} "
            f"python -m demo.inference_server, supervised by the agent ({INFERENCE_TPS} tokens/s)"
        )
        note(
            f"proxy      {self.client.url:<24} the agent's; a client sends a chat completion every 0.4 s "
            "through it (every other one streamed)"
        )
        note("the agent scrapes the server's /metrics every 1 s, samples the host every 2 s, and its own metrics")
        self.scrape_size = len(InferenceServer().scrape(time.time()))  # a throwaway one: the pusher's is its own
        note(
            f"pusher     plays the device's Prometheus: {self.scrape_size} inference-server series every "
            f"{PUSH_INTERVAL:.0f} s, remote write to the agent"
        )
        note(
            f"the agent uploads a zstd batch every {BATCH_INTERVAL:.0f} s; "
            "when the collector is away it retries after 0.5 s … 3 s"
        )
        print("   look around while it runs:")
        print(f"     agent       {self.agent.url}/metrics   {self.agent.url}/healthz")
        print(f"     collector   {self.collector.url}/metrics   {self.collector.url}/healthz")
        print(f"     fleet page  {self.collector.url}/fleet   alerts: {self.collector.url}/api/v1/alerts")
        print(f'     export      {self.collector.url}/api/v1/export?match[]={{__name__=~".+"}}')
        print(f"     read token  {READ_TOKEN}  (bearer, or the password of the page's login; any user name)")
        print("   columns:")
        for name, meaning in LEGEND:
            print(f"     {name:<9} {Style.dim(meaning)}")
        self.pusher.start()
        self.client.start()
        self.t0 = time.monotonic()

    def normal(self) -> None:
        banner("1/5", "Normal operation", "Samples flow through; the buffer holds at most a batch interval's worth.")
        self.header()
        self.watch(12)

    def uplink_down(self) -> None:
        banner(
            "2/5",
            "Uplink down: the collector stops (SIGTERM)",
            "The agent keeps acknowledging remote write: samples go to its disk buffer, and the backlog grows.",
        )
        self.snapshot()  # last look at the collector's counters before its process ends
        code = self.collector.terminate()
        self.collector_dupes.new_process()
        note(f"collector exited with status {code}")
        self.header()
        self.watch(12)

    def uplink_back(self) -> None:
        banner(
            "3/5",
            "Uplink back: the collector restarts on the same port and database",
            "The agent retries with backoff, then sends its backlog batch after batch.",
        )
        self.collector.launch()
        back = time.monotonic()
        note(f"collector up again, pid {self.collector.pid}")
        self.header()
        # Drained: what is left is no older than one batch interval plus a scrape.
        drained = self.watch(
            20,
            until=lambda s: s.agent is not None and s.agent.get(OLDEST, 99) <= BATCH_INTERVAL + 1.5,
            at_least=4,
        )
        if drained.agent is not None and drained.agent.get(OLDEST, 99) <= BATCH_INTERVAL + 1.5:
            note(
                Style.green(f"backlog drained {time.monotonic() - back:.0f} s after the collector came back")
                + "; what is left is the current batch window"
            )
        else:
            note(Style.yellow("backlog not drained yet; moving on"))

    def power_cut(self) -> None:
        banner(
            "4/5",
            "Power cut: the agent is SIGKILLed mid-stream",
            "No shutdown code runs. What the agent acknowledged is on disk (synchronous = FULL);",
            "the pusher retries meanwhile, and the restarted agent resumes uploading its buffer.",
        )
        self.header()
        self.watch(2)
        # Cut the power while acknowledged samples wait in the buffer for their upload, so there is
        # something to survive. The last look also saves the agent's upload counters before they die.
        deadline = time.monotonic() + 5
        before = self.snapshot()
        while (before.backlog_samples or 0) < self.scrape_size and time.monotonic() < deadline:
            time.sleep(0.05)
            before = self.snapshot()
        child = ((before.health or {}).get("inference") or {}).get("pid")
        self.agent.kill()
        self.uplink_bytes.new_process()
        self.uplink_samples.new_process()
        note(
            Style.red("agent killed (SIGKILL)")
            + f" with {before.backlog_samples or 0:,} acknowledged samples in its buffer, not yet uploaded"
        )
        self.watch(2.5)
        if child:
            self.orphan_check = None if process_gone(child) else f"inference server pid {child} outlived the agent"
            note(
                f"inference server pid {child}: "
                + (Style.green("ended with the agent") if not self.orphan_check else Style.red("still running"))
                + Style.dim(" (the kernel's parent-death signal: no orphan holds its port)")
            )
        self.agent.launch()
        note(Style.green("agent restarted") + f", pid {self.agent.pid}: {self.reopened()}")
        note(f"inference server started again by the new agent: pid {self.wait_inference()}")
        self.header()
        self.watch(8)

    def reopened(self) -> str:
        """What the restarted agent found in its buffer, from its log (it may upload it at once)."""
        lines = [line for line in self.agent.log.read_text().splitlines() if "opened:" in line]
        if not lines:
            return "buffer reopened"
        found = lines[-1].split("opened:", 1)[1].split("(")[0].strip().rstrip(",")
        return f"buffer reopened with {found}" + ("" if " 0 samples" in found else "; uploading them")

    def verify(self) -> int:
        banner(
            "5/5", "Drain and verify", "The pusher stops (after delivering its queue); the agent empties its buffer."
        )
        self.pusher.finish()
        self.client.stop()
        acked = self.pusher.acked
        self.header()
        # The agent's own sources keep adding samples, so the buffer never stays empty: wait until
        # everything older than one batch window (and so everything the pusher sent) was uploaded.
        finished = time.monotonic()

        def drained(s: Snapshot) -> bool:
            return (
                s.agent is not None
                and s.agent.get(OLDEST, 99) <= BATCH_INTERVAL + 1.5
                and time.monotonic() - finished > BATCH_INTERVAL + 1.5
                and (s.stored or 0) >= len(acked)
            )

        final = self.watch(30, until=drained, at_least=0)
        if not drained(final):
            note(Style.yellow(f"backlog not drained after 30 s: {final.backlog_samples} samples left"))

        exported, dupes, foreign, lines = self.export()
        for _ in range(20):  # a batch may still be on its way
            if not acked - exported:
                break
            time.sleep(0.5)
            exported, dupes, foreign, lines = self.export()
        inference_problems = self.inference_checks()
        missing = acked - exported
        extra = exported - acked
        bytes_per_sample = self.uplink_bytes.total / self.uplink_samples.total if self.uplink_samples.total else 0
        rw_per_sample = self.pusher.acked_wire_bytes / len(acked) if acked else 0
        series = {labels for labels, _, _ in acked}

        banner("Result", "")
        rows = [
            (
                "acknowledged by the agent",
                f"{len(acked):,} samples",
                f"{self.pusher.acked_requests} requests, {len(series)} series",
            ),
            (
                "stored at the collector",
                f"{final.stored or 0:,} samples",
                f"the pusher's and the agent's own; {lines} lines",
            ),
            ("missing", f"{len(missing):,}", "acknowledged, not in the export"),
            ("duplicates", f"{dupes:,}", "same series and timestamp exported more than once"),
            (
                "re-sent, stored once",
                f"{int(self.collector_dupes.total):,}",
                "samples the collector recognised as already stored",
            ),
            ("stored, never acknowledged", f"{len(extra):,}", "committed, but the answer was lost (harmless)"),
            ("refused by the agent", f"{self.pusher.dropped:,}", "4xx answers to the pusher"),
            (
                "uplink wire size",
                f"{bytes_per_sample:.2f} B/sample",
                f"{human_bytes(self.uplink_bytes.total)} of zstd batches (small: {BATCH_INTERVAL:.0f} s each)",
            ),
            ("remote write in, for scale", f"{rw_per_sample:.2f} B/sample", "snappy protobuf from the pusher"),
        ]
        if foreign:
            rows.append(("foreign device label", f"{foreign:,}", f'series without device_id="{DEVICE}"'))
        for label, value, detail in rows:
            colour = Style.red if (label in ("missing", "duplicates") and value != "0") else (lambda t: t)
            print(f"   {label:<27} {colour(f'{value:>16}')}   {Style.dim(detail)}")

        example = self.example_line(max((ts for _, ts, _ in acked), default=0))
        if example:
            print()
            print(
                f"   one export line {Style.dim('(gpu_utilization_ratio, last 3 s; the collector added device_id=)')}:"
            )
            print(f"   {example}")
        print()
        later = (
            "they keep running until Ctrl-C" if self.keep else "they stop with the demo; scripts/demo --keep keeps them"
        )
        print(f"   {Style.dim(f'to look at ({later}):')}")
        print(f"     agent       {self.agent.url}/metrics   {self.agent.url}/healthz")
        print(f"     collector   {self.collector.url}/metrics   {self.collector.url}/healthz")
        print(f"     fleet page  {self.collector.url}/fleet   alerts: {self.collector.url}/api/v1/alerts")
        selector = '{__name__=~".+"}'
        auth = f"-H 'Authorization: Bearer {READ_TOKEN}'"
        print(
            f"     export      curl -sG {auth} {self.collector.url}/api/v1/export --data-urlencode 'match[]={selector}'"
        )
        print(f"     read token  {READ_TOKEN}  (bearer, or the fleet page's login password with any user name)")
        print(f"     logs        {self.rel(self.agent.log)}   {self.rel(self.collector.log)}")
        print()
        if dupes or foreign:  # cannot happen with a correct collector; shown, but the verdict is about loss
            print("   " + Style.yellow(f"WARNING  {dupes:,} duplicate samples, {foreign:,} series with a wrong device"))
        if not missing and not inference_problems:
            once = "exactly once" if not dupes else "(some more than once)"
            print(
                "   "
                + Style.green(Style.bold("PASS"))
                + f"  all {len(acked):,} acknowledged samples reached the collector {once}, "
                "through a collector outage and an agent power cut;"
            )
            print("         the supervised inference server's metrics, the proxy's and the model info reached it too.")
        elif not missing:
            print("   " + Style.red(Style.bold("FAIL")) + "  inference process: " + "; ".join(inference_problems))
        else:
            print(
                "   "
                + Style.red(Style.bold("FAIL"))
                + f"  {len(missing):,} of {len(acked):,} acknowledged samples are not in the collector's export."
            )
            for labels, ts, val in sorted(missing)[:5]:
                print(Style.dim(f"     missing: {dict(labels)} @ {ts} = {val}"))
        code = 1 if missing or inference_problems else 0
        if self.keep:
            print()
            note("--keep: agent and collector keep running; Ctrl-C stops them.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print()
        return code

    def export(self) -> tuple[set[Sample], int, int, int]:
        """The collector's whole export: (samples without the device label, duplicates, foreign series, lines)."""
        samples: set[Sample] = set()
        points: set[tuple[Labels, int]] = set()
        dupes = foreign = lines = 0
        for line in export(self.collector.url, timeout=30):
            lines += 1
            metric = dict(line["metric"])
            if metric.pop("device_id", None) != DEVICE:
                foreign += 1
            if metric.get("job") != PUSHER_JOB:
                continue  # the agent's own sources: checked by inference_checks()
            labels = tuple(sorted(metric.items()))
            for ts, value in zip(line["timestamps"], line["values"], strict=True):
                if (labels, ts) in points:  # within a line or across two lines of the same series
                    dupes += 1
                points.add((labels, ts))
                samples.add((labels, ts, float(value)))
        return samples, dupes, foreign, lines

    def example_line(self, last_ms: int) -> str | None:
        """A verbatim export line, kept short by asking only for the last 3 s before ``last_ms``."""
        selector = 'gpu_utilization_ratio{gpu="0"}'
        query = urllib.parse.urlencode({"match[]": selector, "start": f"{last_ms / 1000 - 2.5:.3f}"})
        try:
            status, body, _ = http(
                "GET", f"{self.collector.url}/api/v1/export?{query}", headers=READ_HEADERS, timeout=2
            )
        except OSError:
            return None
        lines = body.decode().splitlines()
        return lines[0] if status == 200 and lines else None

    # -- the inference process --

    def inference_config(self) -> dict[str, Any]:
        """The agent's [inference], [scrape], [host] and [proxy] sections for the demo."""
        upstream = f"http://127.0.0.1:{self.inference_port}"
        self.model_file.write_bytes(b"".join(i.to_bytes(4, "big") for i in range(256 * 1024)))  # 1 MiB "weights"
        command = [sys.executable, "-m", "demo.inference_server", "--port", str(self.inference_port)]
        return {
            "inference": {
                "command": [*command, "--tokens-per-second", str(INFERENCE_TPS)],
                "env": {"PYTHONPATH": str(ROOT)},
                "cwd": str(ROOT),
                "health_url": f"{upstream}/healthz",
                "health_interval": 1,
                "metrics_url": f"{upstream}/metrics",
                "restart_backoff_min": 0.5,
                "restart_backoff_max": 5,
                "stop_grace": 5,
                "model_name": "demo-llm-1b",
                "model_version": "2026.11-demo",
                "model_path": str(self.model_file),
            },
            "scrape": {"interval": 1, "timeout": 1, "self_interval": 2, "targets": []},
            "host": {"enabled": True, "interval": 2},
            "proxy": {"enabled": True, "port": self.proxy_port, "upstream": upstream},
        }

    def wait_inference(self, timeout: float = 15) -> int:
        """The supervised server's pid, once it answers through the proxy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = (get_json(f"{self.agent.url}/healthz") or {}).get("inference") or {}
            if info.get("pid") and (get_json(f"{self.client.url}/healthz") or {}).get("status") == "ok":
                return int(info["pid"])
            time.sleep(0.1)
        raise RuntimeError(f"the supervised inference server did not come up in {timeout:.0f} s; see {self.agent.log}")

    def inference_checks(self) -> list[str]:
        """Print what the agent's own sources delivered; the problems found (none for a PASS)."""

        def latest(selector: str) -> dict[str, float]:
            try:
                lines = export(self.collector.url, selector)
            except (OSError, AssertionError):  # not answering, or not with 200
                return {}
            out: dict[str, float] = {}
            for line in lines:
                metric = ",".join(f"{k}={v}" for k, v in sorted(line["metric"].items()) if k != "device_id")
                out[metric] = float(line["values"][-1])
            return out

        snap = self.snapshot()
        agent = snap.agent or {}
        info = (snap.health or {}).get("inference") or {}
        ttft_n = agent.get('backhaul_proxy_time_to_first_token_seconds_count{route="/v1/chat/completions"}', 0)
        ttft = agent.get('backhaul_proxy_time_to_first_token_seconds_sum{route="/v1/chat/completions"}', 0)
        rate_n = agent.get('backhaul_proxy_tokens_per_second_count{route="/v1/chat/completions"}', 0)
        rate = agent.get('backhaul_proxy_tokens_per_second_sum{route="/v1/chat/completions"}', 0)
        scraped_up = latest('up{job="inference"}')
        proxied = latest("backhaul_proxy_completion_tokens_total")
        model = latest("backhaul_model_info")
        host = latest('backhaul_host_memory_total_bytes{job="host"}')
        sha = hashlib.sha256(self.model_file.read_bytes()).hexdigest()
        banner("Inference process", "")
        rows = [
            (
                "supervised server",
                f"{info.get('state', '?')}, pid {info.get('pid')}",
                "restarted by the new agent after the power cut",
            ),
            (
                "client via the proxy",
                f"{self.client.ok:,} ok / {self.client.failed:,} failed",
                f"{self.client.tokens:,} tokens received; failures while the agent was down",
            ),
            (
                "measured by the proxy",
                f"TTFT {ttft / ttft_n * 1000:.0f} ms" if ttft_n else "TTFT —",
                (f"{rate / rate_n:.0f} tokens/s decode" if rate_n else "") + " (mean since the agent restarted)",
            ),
            (
                "at the collector",
                f"up{{job=inference}} = {max(scraped_up.values(), default=0):.0f}",
                "the server's /metrics, scraped",
            ),
            ("", f"{len(proxied)} proxy token series", "backhaul_proxy_completion_tokens_total (self-scrape)"),
            ("", f"{len(host)} host series", "backhaul_host_memory_total_bytes (psutil)"),
        ]
        for label, value, detail in rows:
            print(f"   {label:<27} {value:>22}   {Style.dim(detail)}")
        for metric in model:
            print(f"   {'model info':<27} {Style.dim(metric)}")
        problems = []
        if self.orphan_check:
            problems.append(self.orphan_check)
        if info.get("state") != "running":
            problems.append(f"supervised server is {info.get('state')}")
        if max(scraped_up.values(), default=0) != 1:
            problems.append("no up=1 for the scraped inference server at the collector")
        if not proxied or max(proxied.values()) <= 0:
            problems.append("no proxy token counts at the collector")
        if not any(f"sha256={sha}" in m for m in model):
            problems.append("no backhaul_model_info with the model file's SHA-256 at the collector")
        if not host:
            problems.append("no host metrics at the collector")
        if self.client.ok == 0:
            problems.append("no request went through the proxy")
        return problems

    # -- helpers --

    @staticmethod
    def rel(path: Path) -> str:
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    def shutdown(self) -> None:
        """Stop everything this demo started, whatever happened before."""
        # A second Ctrl-C must not leave orphans behind: each stop below is bounded anyway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.pusher.abort()
        self.client.stop()  # the agent stops the inference server it supervises
        for service in (self.agent, self.collector):
            if service.running:
                code = service.terminate(timeout=15)
                note(f"{service.program} stopped (exit status {code})")


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (an exited orphan may linger as a zombie until its new parent reaps it)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="leave agent and collector running after the verdict")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # status lines through pipes too

    # SIGTERM (e.g. from a CI runner) takes the same path as Ctrl-C: children are stopped in finally.
    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    demo = Demo(keep=args.keep)
    try:
        return demo.run()
    except KeyboardInterrupt:
        print()
        note(Style.yellow("interrupted"))
        return 130
    except ProcError as exc:
        print()
        print(Style.red(f"demo failed: {exc.name} {exc.reason}; see {Demo.rel(exc.log)}"), file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print()
        print(Style.red(f"demo failed: {exc}"), file=sys.stderr)
        return 1
    finally:
        demo.shutdown()


if __name__ == "__main__":
    sys.exit(main())
