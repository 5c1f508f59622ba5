"""Hybrid inference under a mixed load while the local model is killed, slowed and overloaded in turn.

    python -m bench.hybrid [--phase-seconds 15] [--workers 3] [--overload-workers 12]

Real processes: a ``backhaul-agent`` supervising the local demo server (``demo.inference_server``,
200 tokens/s, ``--knobs``) with its proxy escalating to a second demo server playing the cloud
model (400 tokens/s), ``escalate_on`` all five triggers, ``ttft_deadline`` 0.3 s,
``max_local_in_flight`` 4, ``max_local_prompt_tokens`` 512. Workers send a mixed load through the
proxy: short prompts (6 in 8) and long ones (~750 estimated tokens, 2 in 8), half of each streamed,
16 tokens each. Phases: ``steady``; ``killed`` (the local server is SIGKILLed at the start; the
supervisor restarts it after 2 s); ``slowed`` (the local server waits 1 s before its first token);
``overloaded`` (more workers than ``max_local_in_flight``).

Per phase and route: success rate, p50/p99 latency and time to first token (streams), share
escalated and why, and the proxy's added latency: a probe sends a one-token request through the
proxy every 50 ms, then the same request straight to the server that answered it (the cloud
request with the mapped model name and token), and the difference of the p50s is the proxy's cost
on that route — including, when the local start is slow, the deadline it waits before escalating.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.proxy_overhead import percentile
from harness import free_port, http, wait_until

ROOT = Path(__file__).resolve().parent.parent


def wait_up(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Until ``port`` answers ``GET /healthz`` with 200; stops at once if ``proc`` exited."""

    def up() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            return http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    wait_until(up, timeout, f"port {port} to answer", interval=0.05)


LOCAL_MODEL, CLOUD_MODEL, TOKEN = "demo-llm-1b", "cloud-llm-70b", "bench-cloud-token"
SHORT = "how warm is the cold room on line four right now"
LONG = "the inspection log for the night shift lists the following readings " * 44  # ~3,000 chars


@dataclass
class Result:
    phase: str
    route: str  # local, cloud
    reason: str
    ok: bool
    latency: float
    ttft: float | None


@dataclass
class Probe:
    proxied: dict[str, list[float]] = field(default_factory=dict)
    direct: dict[str, list[float]] = field(default_factory=dict)


def agent_config(tmp: Path, agent_port: int, proxy_port: int, local_port: int, cloud_port: int) -> Path:
    local = f"http://127.0.0.1:{local_port}"
    command = [
        sys.executable,
        "-m",
        "demo.inference_server",
        "--port",
        str(local_port),
        "--model",
        LOCAL_MODEL,
        "--tokens-per-second",
        "200",
        "--knobs",
    ]
    text = f"""
device_id = "bench-hybrid"
log_level = "WARNING"
[listen]
port = {agent_port}
[buffer]
path = "{tmp / "buffer.db"}"
budget_bytes = "64MiB"
[inference]
command = {json.dumps(command)}
cwd = "{ROOT}"
health_url = "{local}/healthz"
health_interval = 0.2
restart_backoff_min = 2
[proxy]
enabled = true
port = {proxy_port}
upstream = "{local}"
[proxy.cloud]
url = "http://127.0.0.1:{cloud_port}"
model_map = {{ "{LOCAL_MODEL}" = "{CLOUD_MODEL}" }}
escalate_on = ["down", "overloaded", "slow_start", "too_long", "error"]
ttft_deadline = 0.3
max_local_in_flight = 4
max_local_prompt_tokens = 512
"""
    path = tmp / "agent.toml"
    path.write_text(text)
    return path


def body(prompt: str, stream: bool, max_tokens: int = 16, model: str = LOCAL_MODEL) -> dict[str, Any]:
    b: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    if stream:
        b |= {"stream": True, "stream_options": {"include_usage": True}}
    return b


async def one(session: aiohttp.ClientSession, url: str, payload: dict[str, Any], phase: str) -> Result:
    started = time.perf_counter()
    ttft: float | None = None
    try:
        async with session.post(url, json=payload) as resp:
            routed = resp.headers.get("X-Backhaul-Routed", "?")
            ok = resp.status == 200
            if payload.get("stream"):
                done = False
                async for line in resp.content:
                    if ttft is None and line.startswith(b"data: {") and b'"content"' in line:
                        ttft = time.perf_counter() - started
                    done = done or line.strip() == b"data: [DONE]"
                ok = ok and done
            else:
                ok = ok and bool((await resp.json()).get("choices"))
    except (aiohttp.ClientError, TimeoutError, ValueError):
        routed, ok = "?", False
    route, _, reason = routed.partition("; reason=")
    return Result(phase, route, reason or "none", ok, time.perf_counter() - started, ttft)


async def worker(
    session: aiohttp.ClientSession, url: str, phase: list[str], stop: asyncio.Event, out: list[Result], offset: int
) -> None:
    kinds = [
        (SHORT, False),
        (SHORT, True),
        (SHORT, False),
        (LONG, True),
        (SHORT, True),
        (SHORT, False),
        (LONG, False),
        (SHORT, True),
    ]
    for prompt, stream in itertools.islice(itertools.cycle(kinds), offset, None):
        if stop.is_set():
            return
        out.append(await one(session, url, body(prompt, stream), phase[0]))


async def probe(
    session: aiohttp.ClientSession,
    proxy: str,
    local: str,
    cloud: str,
    phase: list[str],
    stop: asyncio.Event,
    probes: dict[str, Probe],
) -> None:
    """Alternately through the proxy and straight to the server that answered, one token each."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while not stop.is_set():
        p = probes.setdefault(phase[0], Probe())
        started = time.perf_counter()
        try:
            async with session.post(proxy, json=body(SHORT, False, 1)) as resp:
                await resp.read()
                routed = resp.headers.get("X-Backhaul-Routed", "?").partition(";")[0]
                ok = resp.status == 200
            proxied = time.perf_counter() - started
            if ok and routed in ("local", "cloud"):
                direct_url, model = (local, LOCAL_MODEL) if routed == "local" else (cloud, CLOUD_MODEL)
                started = time.perf_counter()
                async with session.post(direct_url, json=body(SHORT, False, 1, model), headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        p.proxied.setdefault(routed, []).append(proxied)
                        p.direct.setdefault(routed, []).append(time.perf_counter() - started)
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.05)


async def knobs(local: str, **values: float) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{local}/demo/knobs", json=values) as resp:
        resp.raise_for_status()


def child_pid(agent: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{agent}/healthz", timeout=5) as resp:
        return int(json.load(resp)["inference"]["pid"])


async def run(args: argparse.Namespace, agent: str, proxy: str, local: str, cloud: str) -> None:
    results: list[Result] = []
    probes: dict[str, Probe] = {}
    phase = ["steady"]
    url = f"{proxy}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await until_local(session, url)
        for name in ("steady", "killed", "slowed", "overloaded"):
            phase[0] = name
            if name == "killed":
                os.kill(child_pid(agent), signal.SIGKILL)
            elif name == "slowed":
                await wait_healthy_local(local)
                await knobs(local, first_token_delay=1.0)
            elif name == "overloaded":
                await knobs(local, first_token_delay=0.0)
            stop = asyncio.Event()
            n = args.overload_workers if name == "overloaded" else args.workers
            tasks = [asyncio.create_task(worker(session, url, phase, stop, results, i * 3)) for i in range(n)]
            tasks.append(
                asyncio.create_task(
                    probe(
                        session,
                        url,
                        f"{local}/v1/chat/completions",
                        f"{cloud}/v1/chat/completions",
                        phase,
                        stop,
                        probes,
                    )
                )
            )
            await asyncio.sleep(args.phase_seconds)
            stop.set()
            await asyncio.gather(*tasks)
    report(results, probes, args)


async def until_local(session: aiohttp.ClientSession, url: str, seconds: float = 30) -> None:
    """Until the proxy routes to the local server (its supervisor saw it healthy), then a warm-up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (await one(session, url, body(SHORT, False, 1), "warm-up")).route == "local":
            for _ in range(50):
                await one(session, url, body(SHORT, False, 1), "warm-up")
            return
        await asyncio.sleep(0.1)
    raise SystemExit("the proxy never routed to the local server")


async def wait_healthy_local(local: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(f"{local}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the local server did not come back")


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:8.1f}" if values else f"{'-':>8}"


def report(results: list[Result], probes: dict[str, Probe], args: argparse.Namespace) -> None:
    print(
        f"hybrid inference: {args.phase_seconds:g} s per phase, {args.workers} workers "
        f"({args.overload_workers} when overloaded), {os.cpu_count()} CPUs; latency and TTFT in ms"
    )
    header = (
        f"{'phase':<11} {'requests':>8} {'success':>8} {'escalated':>9}  {'route':<6} {'n':>5} "
        f"{'p50':>8} {'p99':>8} {'TTFT p50':>8} {'TTFT p99':>8} {'added p50':>9}  reasons"
    )
    print(header)
    for name in ("steady", "killed", "slowed", "overloaded"):
        rows = [r for r in results if r.phase == name]
        if not rows:
            continue
        ok = sum(r.ok for r in rows) / len(rows)
        cloud = [r for r in rows if r.route == "cloud"]
        reasons = Counter(r.reason for r in cloud)
        why = ", ".join(f"{k} {v / len(rows):.1%}" for k, v in reasons.most_common())
        first = True
        for route in ("local", "cloud"):
            these = [r for r in rows if r.route == route]
            if not these:
                continue
            lat = [r.latency for r in these if r.ok]
            ttft = [r.ttft for r in these if r.ok and r.ttft is not None]
            p = probes.get(name, Probe())
            proxied, direct = p.proxied.get(route, []), p.direct.get(route, [])
            added = f"{(percentile(proxied, 0.5) - percentile(direct, 0.5)) * 1e3:9.2f}" if proxied and direct else "-"
            lead = (
                f"{name:<11} {len(rows):>8} {ok:>8.1%} {len(cloud) / len(rows):>9.1%}"
                if first
                else f"{'':<11} {'':>8} {'':>8} {'':>9}"
            )
            print(
                f"{lead}  {route:<6} {len(these):>5} {ms(lat, 0.5)} {ms(lat, 0.99)} {ms(ttft, 0.5)} {ms(ttft, 0.99)} "
                f"{added:>9}  {why if first else ''}"
            )
            first = False
        lost = [r for r in rows if r.route not in ("local", "cloud")]
        if lost:
            print(f"{'':<11} {len(lost)} requests got no answer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--phase-seconds", type=float, default=15)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--overload-workers", type=int, default=12)
    args = parser.parse_args(argv)
    agent_port, proxy_port, local_port, cloud_port = (free_port() for _ in range(4))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BACKHAUL_PROXY__CLOUD__TOKEN": TOKEN}
    with tempfile.TemporaryDirectory(prefix="bench-hybrid-") as tmpdir:
        tmp = Path(tmpdir)
        config = agent_config(tmp, agent_port, proxy_port, local_port, cloud_port)
        quiet = subprocess.DEVNULL
        cloud = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "demo.inference_server",
                "--port",
                str(cloud_port),
                "--model",
                CLOUD_MODEL,
                "--tokens-per-second",
                "400",
                "--api-key",
                TOKEN,
            ],
            cwd=ROOT,
            env=env,
            stdout=quiet,
        )
        agent_bin = Path(sys.executable).parent / "backhaul-agent"
        with (tmp / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                [str(agent_bin), "run", "--config", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_up(cloud_port, cloud)
            wait_up(agent_port, agent)
            wait_up(local_port, agent)
            wait_up(proxy_port, agent)
            base = "http://127.0.0.1:"
            asyncio.run(
                run(args, f"{base}{agent_port}", f"{base}{proxy_port}", f"{base}{local_port}", f"{base}{cloud_port}")
            )
        finally:
            for proc in (agent, cloud):
                proc.terminate()
                proc.wait(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
