"""The agent as a process: it supervises the demo inference server, scrapes it and a real node_exporter,
proxies requests to it, samples the host, reports its model, and everything reaches the collector."""

from __future__ import annotations

import hashlib
import json
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Running
from tests.inference.conftest import FIXTURES, ROOT, demo_command, wait_http
from tests.support import READ_HEADERS, exported_samples, free_port, http, metric_value, wait_until

pytestmark = pytest.mark.integration


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)  # psutil is untyped: Any
    except psutil.NoSuchProcess:
        return True


def series_named(collector_url: str, selector: str) -> dict[tuple[tuple[str, str], ...], dict[int, float]]:
    return exported_samples(collector_url, selector)


def fake_nvidia_smi(tmp_path: Path) -> Path:
    """nvidia-smi cannot run here (no GPU): a stand-in that prints a recorded answer to the same query."""
    path = tmp_path / "nvidia-smi"
    fixture = FIXTURES / "nvidia-smi-query.csv"
    path.write_text(f'#!/bin/sh\ncase "$1" in --query-gpu=*) cat {fixture};; *) exit 2;; esac\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def chat(url: str, stream: bool, max_tokens: int = 8) -> bytes:
    body = {"messages": [{"role": "user", "content": "status report please"}], "max_tokens": max_tokens}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    status, answer, _ = http(
        "POST", f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, answer
    return answer


def test_everything_reaches_the_collector_and_sigterm_stops_the_child(
    tmp_path: Path,
    start_collector: Callable[..., Running],
    agent_with: Callable[..., Running],
    node_exporter: str,
) -> None:
    collector = start_collector()
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights" * 100_000)
    port, proxy_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{port}"
    agent = agent_with(
        collector.url,
        inference={
            "command": demo_command(port, "--tokens-per-second", "500"),
            "cwd": str(ROOT),
            "health_url": f"{upstream}/healthz",
            "health_interval": 0.3,
            "metrics_url": f"{upstream}/metrics",
            "model_name": "demo-llm-1b",
            "model_version": "2026.11",
            "model_path": str(model),
        },
        scrape={
            "interval": 0.5,
            "self_interval": 0.5,
            "targets": [{"job": "node", "url": node_exporter, "labels": {"rack": "r1"}}],
        },
        host={"enabled": True, "interval": 0.5, "nvidia_smi": str(fake_nvidia_smi(tmp_path)), "tegrastats": ""},
        proxy={"enabled": True, "port": proxy_port, "upstream": upstream},
    )
    proxy = f"http://127.0.0.1:{proxy_port}"
    wait_http(f"{proxy}/healthz")  # through the proxy, once the supervised server listens
    chat(proxy, stream=False, max_tokens=8)
    streamed = chat(proxy, stream=True, max_tokens=6)
    assert streamed.rstrip().endswith(b"data: [DONE]")

    def arrived(selector: str, check: Callable[[dict[str, str], float], bool] = lambda labels, v: True) -> bool:
        for labels, points in series_named(collector.url, selector).items():
            if points and check(dict(labels), points[max(points)]):
                return True
        return False

    expected_sha = hashlib.sha256(model.read_bytes()).hexdigest()
    checks: dict[str, Callable[[], bool]] = {
        "node_exporter up": lambda: arrived('up{job="node",rack="r1"}', lambda _, v: v == 1),
        "node_exporter samples": lambda: arrived('node_load1{job="node"}'),
        "inference server scraped": lambda: arrived('up{job="inference"}', lambda _, v: v == 1),
        "its token counter": lambda: arrived('inference_tokens_generated_total{job="inference"}', lambda _, v: v == 14),
        "proxy tokens": lambda: arrived(
            'backhaul_proxy_completion_tokens_total{job="backhaul-agent",route="/v1/chat/completions"}',
            lambda _, v: v == 14,
        ),
        "time to first token": lambda: arrived(
            'backhaul_proxy_time_to_first_token_seconds_count{job="backhaul-agent"}', lambda _, v: v == 1
        ),
        "supervised and healthy": lambda: arrived(
            'backhaul_inference_healthy{job="backhaul-agent"}', lambda _, v: v == 1
        ),
        "model info": lambda: arrived(f'backhaul_model_info{{sha256="{expected_sha}",version="2026.11"}}'),
        "host memory": lambda: arrived('backhaul_host_memory_total_bytes{job="host"}', lambda _, v: v > 0),
        "GPU": lambda: arrived('backhaul_gpu_utilization_ratio{gpu="0"}', lambda _, v: v == pytest.approx(0.87)),
        "scrape duration": lambda: arrived('scrape_duration_seconds{job="node"}', lambda _, v: 0 < v < 5),
    }
    for what, check in checks.items():
        wait_until(check, 30, what, interval=0.3)

    _, body, _ = http("GET", f"{agent.url}/healthz")
    child = json.loads(body)["inference"]["pid"]
    assert child and not gone(child)
    assert agent.proc.stop() == 0
    assert gone(child)
    log = agent.proc.log.read_text()
    assert "[stdout] demo inference server: stopped" in log  # it got SIGTERM and shut down cleanly


def test_a_killed_agent_takes_its_child_along(tmp_path: Path, agent_with: Callable[..., Running]) -> None:
    port = free_port()
    agent = agent_with(inference={"command": demo_command(port), "cwd": str(ROOT)})
    wait_http(f"http://127.0.0.1:{port}/healthz")
    _, body, _ = http("GET", f"{agent.url}/healthz")
    child = json.loads(body)["inference"]["pid"]
    agent.proc.kill()  # SIGKILL: no shutdown code runs; the kernel's parent-death signal does the job
    wait_until(lambda: gone(child), 10, "the orphaned inference server to die")


def test_a_hanging_target_never_holds_up_the_others(
    tmp_path: Path, start_collector: Callable[..., Running], agent_with: Callable[..., Running], node_exporter: str
) -> None:
    # Accepts connections (the kernel completes them) and never answers: a hung exporter.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}/metrics"
        collector = start_collector()
        agent = agent_with(
            collector.url,  # no [inference] command: scraping only
            scrape={
                "interval": 0.25,
                "targets": [
                    {"job": "hung", "url": hung_url, "interval": 1, "timeout": 1},
                    {"job": "node", "url": node_exporter},
                ],
            },
        )
        time.sleep(3)
        ok = metric_value(agent.url, "backhaul_scrapes_total", 'job="node",outcome="ok"')
        failed = metric_value(agent.url, "backhaul_scrapes_total", 'job="hung",outcome="failed"')
        assert ok >= 8, ok  # every 0.25 s, although the other target hangs for a second each time
        assert 1 <= failed <= 4, failed
        _, body, _ = http("GET", f"{agent.url}/healthz")
        assert "timed out" in json.loads(body)["scrape_errors"][hung_url]

        def hung_down() -> Any:
            return [v for v in series_named(collector.url, 'up{job="hung"}').values() if 0.0 in v.values()]

        wait_until(hung_down, 15, "up=0 of the hung target at the collector")
        assert agent.proc.stop() == 0


def test_a_crash_looping_server_shows_on_the_agents_metrics_and_health_and_alerts_the_collector(
    tmp_path: Path, agent_with: Callable[..., Running], start_collector: Callable[..., Running]
) -> None:
    port = free_port()
    collector = start_collector()
    agent = agent_with(
        collector.url,
        inference={
            "command": demo_command(port, "--exit-after", "0.3"),  # serves briefly, then exits with status 3
            "cwd": str(ROOT),
            "restart_backoff_min": 0.1,
            "restart_backoff_max": 0.5,
            "crash_loop_restarts": 3,
            "crash_loop_window": 60,
        },
    )
    wait_until(lambda: metric_value(agent.url, "backhaul_inference_crash_loop") == 1, 30, "the crash loop")
    assert metric_value(agent.url, "backhaul_inference_last_exit_code") == 3
    assert metric_value(agent.url, "backhaul_inference_restarts_total") >= 2
    _, body, _ = http("GET", f"{agent.url}/healthz")
    health = json.loads(body)
    assert health["inference"]["state"] == "crash_loop" and health["inference"]["last_exit"] == "exit code 3"
    log = agent.proc.log.read_text()
    assert "inference process in a crash loop: 3 exits" in log
    assert "--exit-after reached, exiting with status 3" in log  # the child's output, in the agent's log

    # The built-in InferenceCrashLoop alert goes through the alert lane to the collector.
    def firing() -> list[dict[str, Any]]:
        _, body, _ = http("GET", f"{collector.url}/api/v1/alerts?state=firing", headers=READ_HEADERS)
        return [a for a in json.loads(body)["alerts"] if a["rule"] == "InferenceCrashLoop"]

    (alert,) = wait_until(firing, 30, "the crash-loop alert at the collector")
    assert alert["device"] == "dev-1" and alert["severity"] == "critical"
    assert agent.proc.stop() == 0


def test_the_proxy_listener_closes_clients_that_never_finish_their_headers(agent_with: Callable[..., Running]) -> None:
    """The proxy listens under the same guard as the agent's API: a client that sends half a request
    line and stops is closed after ``proxy.header_timeout``, counted, and others are still served."""
    proxy_port = free_port()
    agent = agent_with(
        proxy={"enabled": True, "port": proxy_port, "upstream": "http://127.0.0.1:9", "header_timeout": 1}
    )
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        started = time.monotonic()
        while slow.recv(1024):  # until the proxy closes it (an error page may come first)
            pass
        waited = time.monotonic() - started
    assert waited < 8, f"the half-sent request was held {waited:.1f} s"
    closed = 'reason="header_timeout"'
    wait_until(lambda: metric_value(agent.url, "backhaul_proxy_http_connections_closed_total", closed) >= 1, 5, "count")
    # the proxy still answers (the upstream is down: a gateway error, not a hang)
    status, _, _ = http("GET", f"http://127.0.0.1:{proxy_port}/v1/models", timeout=10)
    assert status >= 500
