"""Proxy overhead: the same requests to the demo inference server, direct and through the agent's proxy.

    python -m bench.proxy_overhead [--requests 2000] [--max-tokens 16]

Starts the real demo server (``python -m demo.inference_server --tokens-per-second 0``: it answers at
once, so what is measured is HTTP and proxy work, not the fake model) and the proxy
(``agent.proxy.InferenceProxy``, the agent's own code) in its own process, as in the agent. One
client sends N sequential requests over a keep-alive connection to each, interleaved (direct,
proxied, direct, ...) so drift on a shared machine hits both alike, after a warm-up. Two kinds:
a non-streaming chat completion (JSON answer with usage) and a streaming one (SSE, ``max_tokens``
chunks plus usage). Prints p50/p99 of each and the difference; target: under 1 ms at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ProcError, Process, free_port

ROOT = Path(__file__).resolve().parent.parent


def serve_proxy(port: int, upstream: str) -> None:
    """The proxy alone, in this process (``--serve-proxy``)."""
    from prometheus_client import CollectorRegistry

    from agent.config import ProxySettings
    from agent.proxy.server import InferenceProxy

    async def run() -> None:
        proxy = InferenceProxy(ProxySettings(enabled=True, port=port, upstream=upstream), CollectorRegistry())
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with proxy:
            await stop.wait()

    asyncio.run(run())


def timed(conn: http.client.HTTPConnection, body: bytes) -> float:
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    took = time.perf_counter() - started
    if resp.status != 200 or not data:
        raise SystemExit(f"HTTP {resp.status}: {data[:200]!r}")
    return took


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(direct_port: int, proxy_port: int, body: bytes, n: int, warmup: int) -> tuple[list[float], list[float]]:
    direct = http.client.HTTPConnection("127.0.0.1", direct_port)
    proxied = http.client.HTTPConnection("127.0.0.1", proxy_port)
    for _ in range(warmup):
        timed(direct, body)
        timed(proxied, body)
    a: list[float] = []
    b: list[float] = []
    for i in range(n):
        if i % 2:  # alternate which goes first
            a.append(timed(direct, body))
            b.append(timed(proxied, body))
        else:
            b.append(timed(proxied, body))
            a.append(timed(direct, body))
    direct.close()
    proxied.close()
    return a, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="requests of each kind, each way")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--serve-proxy", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_proxy:
        serve_proxy(int(args.serve_proxy[0]), args.serve_proxy[1])
        return 0

    server_port, proxy_port = free_port(), free_port()
    env = {"PYTHONPATH": str(ROOT)}  # python -m bench.proxy_overhead from anywhere
    logs = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    server_argv = [
        sys.executable,
        "-m",
        "demo.inference_server",
        "--port",
        str(server_port),
        "--tokens-per-second",
        "0",
    ]
    server = Process("demo server", server_argv, logs / "server.log", env)
    proxy_argv = [sys.executable, "-m", "bench.proxy_overhead", "--serve-proxy", str(proxy_port)]
    proxy = Process("proxy", [*proxy_argv, f"http://127.0.0.1:{server_port}"], logs / "proxy.log", env)
    try:
        for process, port in ((server.start(), server_port), (proxy.start(), proxy_port)):
            process.wait_ready(f"http://127.0.0.1:{port}/healthz")
        message = {"role": "user", "content": "how many tokens does the proxy add"}
        kinds = {
            "chat completion, JSON": {"messages": [message], "max_tokens": args.max_tokens},
            "chat completion, SSE stream": {
                "messages": [message],
                "max_tokens": args.max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        }
        print(
            f"proxy overhead: {args.requests} sequential requests of each kind, direct and through the proxy "
            f"(interleaved, keep-alive, after {args.warmup} warm-up); demo server answering at once; "
            f"{os.cpu_count()} CPUs"
        )
        print(f"{'request':<30} {'':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        worst = 0.0
        for name, body in kinds.items():
            direct, proxied = measure(server_port, proxy_port, json.dumps(body).encode(), args.requests, args.warmup)
            for label, values in (("direct", direct), ("proxied", proxied)):
                print(
                    f"{name:<30} {label:>8} {percentile(values, 0.5) * 1e3:8.3f} "
                    f"{percentile(values, 0.99) * 1e3:8.3f} {statistics.fmean(values) * 1e3:8.3f}"
                )
            d50 = (percentile(proxied, 0.5) - percentile(direct, 0.5)) * 1e3
            d99 = (percentile(proxied, 0.99) - percentile(direct, 0.99)) * 1e3
            worst = max(worst, d50)
            print(f"{name:<30} {'added':>8} {d50:8.3f} {d99:8.3f}")
        verdict = "meets" if worst < 1.0 else "MISSES"
        print(f"largest p50 overhead {worst:.3f} ms: {verdict} the < 1 ms target")
    except ProcError as exc:
        raise SystemExit(f"{exc.name} {exc.reason}; see {exc.log}") from None
    finally:
        for process in (proxy, server):
            if process.running:
                process.stop(10)
        shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
