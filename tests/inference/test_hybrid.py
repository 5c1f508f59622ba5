"""Hybrid inference with real processes: the agent supervises a local demo server and escalates to a second
demo server playing the cloud model; clients are the real ``openai`` package and ``curl``."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import trustme
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Running
from tests.inference.conftest import ROOT, Demo, demo_command, wait_http
from tests.support import READ_HEADERS, TlsFront, free_port, http, metric_value, require_program, wait_until

pytestmark = pytest.mark.integration

LOCAL_MODEL = "demo-llm-1b"
CLOUD_MODEL = "cloud-llm-70b"
CLOUD_TOKEN = "cloud-secret-token"
SHORT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "is the conveyor running"}]


@dataclass
class Hybrid:
    agent: Running
    proxy: str
    local: Demo  # supervised by the agent: its log only
    cloud: Demo

    def client(self, **options: Any) -> openai.OpenAI:
        # max_retries=0: the test sees each answer as it was, not a retry's.
        return openai.OpenAI(base_url=f"{self.proxy}/v1", api_key="local-key", max_retries=0, timeout=20, **options)

    def child_pid(self) -> int:
        _, body, _ = http("GET", f"{self.agent.url}/healthz")
        pid = json.loads(body)["inference"]["pid"]
        assert pid, body
        return int(pid)

    def metric(self, name: str, labels: str = "") -> float:
        return metric_value(self.agent.url, name, labels)


@pytest.fixture
def hybrid(
    tmp_path: Path, agent_with: Callable[..., Running], demo_server: Callable[..., Demo]
) -> Callable[..., Hybrid]:
    def start(
        local_args: tuple[str, ...] = (),
        cloud_args: tuple[str, ...] = (),
        collector_url: str | None = None,
        inference: dict[str, Any] | None = None,
        scrape: dict[str, Any] | None = None,
        cloud_url: Callable[[Demo], str] | None = None,
        **cloud_settings: Any,
    ) -> Hybrid:
        cloud = demo_server("cloud", "--model", CLOUD_MODEL, "--tokens-per-second", "0", "--api-key", CLOUD_TOKEN,
                            *cloud_args)  # fmt: skip
        port, proxy_port = free_port(), free_port()
        local = Demo(f"http://127.0.0.1:{port}", tmp_path / "local.requests.jsonl")
        command = demo_command(port, "--model", LOCAL_MODEL, "--request-log", str(local.request_log), *local_args)
        agent = agent_with(
            collector_url,
            env={"BACKHAUL_PROXY__CLOUD__TOKEN": CLOUD_TOKEN},
            scrape=scrape or {},
            inference={
                "command": command,
                "cwd": str(ROOT),
                "health_url": f"{local.url}/healthz",
                "health_interval": 0.2,
                "restart_backoff_min": 1,
                **(inference or {}),
            },
            proxy={
                "enabled": True,
                "port": proxy_port,
                "upstream": local.url,
                "cloud": {
                    "url": cloud_url(cloud) if cloud_url else cloud.url,
                    "model_map": {LOCAL_MODEL: CLOUD_MODEL},
                    **cloud_settings,
                },
            },
        )
        h = Hybrid(agent, f"http://127.0.0.1:{proxy_port}", local, cloud)
        wait_http(f"{local.url}/healthz")
        wait_until(lambda: h.metric("backhaul_inference_healthy") == 1, 10, "the local server healthy")
        return h

    return start


def ask(client: openai.OpenAI, messages: list[ChatCompletionMessageParam] = SHORT, **extra: Any) -> tuple[str, str]:
    """One chat completion: (X-Backhaul-Routed, the answering model)."""
    raw = client.chat.completions.with_raw_response.create(
        model=LOCAL_MODEL,
        messages=messages,
        max_tokens=extra.pop("max_tokens", 6),
        **extra,
    )
    return raw.headers["x-backhaul-routed"], raw.parse().model


def test_a_killed_local_server_is_replaced_by_the_cloud_until_it_is_healthy_again(
    hybrid: Callable[..., Hybrid], start_collector: Callable[..., Running]
) -> None:
    collector = start_collector()
    h = hybrid(collector_url=collector.url, scrape={"self_interval": 0.3})
    client = h.client()
    assert ask(client) == ("local", LOCAL_MODEL)
    first = h.child_pid()
    os.kill(first, signal.SIGKILL)
    routes: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        routed, model = ask(client)  # every request succeeds, whoever answers it
        routes.append(routed)
        assert model == (LOCAL_MODEL if routed == "local" else CLOUD_MODEL), (routed, model)
        if routed == "local":
            break
        time.sleep(0.05)
    assert routes[-1] == "local", routes
    escalated = routes[:-1]
    # The very first may find the connection refused before the supervisor noticed the exit.
    assert set(escalated) <= {"cloud; reason=down", "cloud; reason=error"}, escalated
    assert escalated.count("cloud; reason=down") >= 3, escalated
    assert h.child_pid() != first  # back on a new local process, once it was healthy
    assert h.metric("backhaul_proxy_routed_requests_total", 'reason="down",route="cloud"') >= 3
    # The cloud got the mapped model name and its own token, never the client's key.
    received = h.cloud.events("received")
    assert len(received) == len(escalated)
    assert {e["model"] for e in received} == {CLOUD_MODEL}
    assert {e["authorization"] for e in received} == {f"Bearer {CLOUD_TOKEN}"}

    # The fleet page shows the share escalated and the main reason (through the agent's self-scrape).
    def fleet_row() -> dict[str, Any] | None:
        _, body, _ = http("GET", f"{collector.url}/api/v1/fleet", headers=READ_HEADERS)
        (row,) = [d for d in json.loads(body)["devices"] if d["device"] == "dev-1"]
        return row if row["escalation_reason"] == "down" else None

    row = wait_until(fleet_row, 20, "the escalation share on the fleet page")
    assert row is not None and 0 < row["escalated_share"] < 1


def test_a_slow_local_start_goes_to_the_cloud_within_the_deadline_and_the_local_request_is_cancelled(
    hybrid: Callable[..., Hybrid],
) -> None:
    deadline, cloud_latency = 0.5, 0.2
    h = hybrid(
        local_args=("--first-token-delay", "5"),
        cloud_args=("--first-token-delay", str(cloud_latency)),
        escalate_on=["slow_start"],
        ttft_deadline=deadline,
    )
    client = h.client()
    # Streaming: the local server sends its headers at once, but no token within the deadline.
    started = time.perf_counter()
    stream = client.chat.completions.with_streaming_response.create
    with stream(model=LOCAL_MODEL, messages=SHORT, max_tokens=5, stream=True) as resp:
        assert resp.headers["x-backhaul-routed"] == "cloud; reason=slow_start"
        first = 0.0
        text = ""
        for chunk in resp.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - started
                text += chunk.choices[0].delta.content
    assert deadline <= first < deadline + cloud_latency + 0.6, first
    assert len(text.split()) == 5
    # JSON: no response headers within the deadline.
    started = time.perf_counter()
    routed, model = ask(client)
    took = time.perf_counter() - started
    assert (routed, model) == ("cloud; reason=slow_start", CLOUD_MODEL)
    assert deadline <= took < deadline + cloud_latency + 0.6, took
    # Both local requests were cancelled: the local server saw the client go.
    wait_until(lambda: len(h.local.events("disconnected")) == 2, 5, "the local server to see two disconnects")
    assert h.local.events("done") == []


def test_overloaded_with_concurrent_clients_and_too_long_with_a_long_prompt(hybrid: Callable[..., Hybrid]) -> None:
    h = hybrid(
        local_args=("--tokens-per-second", "20"),  # 20 tokens: a second per request
        escalate_on=["overloaded", "too_long"],
        max_local_in_flight=2,
        max_local_prompt_tokens=50,
    )
    client = h.client()
    barrier = threading.Barrier(6)
    results: list[tuple[str, str]] = []

    def one() -> None:
        barrier.wait()
        results.append(ask(client, max_tokens=20))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted([("local", LOCAL_MODEL)] * 2 + [("cloud; reason=overloaded", CLOUD_MODEL)] * 4)
    assert h.metric("backhaul_proxy_routed_requests_total", 'reason="overloaded",route="cloud"') == 4

    # 1,080 characters: ~270 tokens
    long_prompt: list[ChatCompletionMessageParam] = [{"role": "user", "content": "describe the line " * 60}]
    assert ask(client, long_prompt) == ("cloud; reason=too_long", CLOUD_MODEL)
    assert ask(client) == ("local", LOCAL_MODEL)
    assert h.metric("backhaul_proxy_routed_requests_total", 'reason="too_long",route="cloud"') == 1


def test_the_cloud_is_reached_over_tls_with_a_private_ca_and_the_name_it_is_known_by(
    hybrid: Callable[..., Hybrid], tmp_path: Path
) -> None:
    """``proxy.cloud`` TLS settings as the uplink's: ``ca_file`` (a private CA) and ``server_name`` (the
    certificate's name differs from the URL's host); a cloud whose CA is not trusted gets no request."""
    ca, stranger = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "cloud-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    contexts = []
    for issuer in (ca, stranger):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        issuer.issue_cert("inference.cloud.example").configure_cert(context)
        contexts.append(context)
    fronts: list[TlsFront] = []

    def behind_tls(context: ssl.SSLContext) -> Callable[[Demo], str]:
        def url(cloud: Demo) -> str:
            front = TlsFront(int(cloud.url.rsplit(":", 1)[1]), context).__enter__()
            fronts.append(front)
            return front.url

        return url

    try:
        tls = {"ca_file": str(ca_file), "server_name": "inference.cloud.example"}
        limits = {"max_local_prompt_tokens": 1}  # every prompt is "too long": each request escalates
        trusted = hybrid(cloud_url=behind_tls(contexts[0]), escalate_on=["too_long"], **limits, **tls)
        assert ask(trusted.client()) == ("cloud; reason=too_long", CLOUD_MODEL)
        assert [e["model"] for e in trusted.cloud.events("received")] == [CLOUD_MODEL]
        trusted.agent.proc.stop()

        # The same again (both clouds log to one file) with a certificate from a CA the agent was not given.
        untrusted = hybrid(cloud_url=behind_tls(contexts[1]), escalate_on=["too_long"], **limits, **tls)
        with pytest.raises(openai.APIStatusError) as refused:
            ask(untrusted.client())
        assert refused.value.status_code >= 500
        assert len(untrusted.cloud.events("received")) == 1  # the handshake failed: nothing reached it
        assert fronts[0].connections >= 1 and fronts[1].connections == 0  # handshakes: one side only
    finally:
        for front in fronts:
            front.__exit__()


def test_private_requests_while_the_local_server_is_down_get_503_and_the_cloud_receives_nothing(
    hybrid: Callable[..., Hybrid],
) -> None:
    h = hybrid(inference={"restart_backoff_min": 30}, private_routes=["/v1/completions"])
    os.kill(h.child_pid(), signal.SIGKILL)
    wait_until(lambda: h.metric("backhaul_inference_up") == 0, 10, "the supervisor to see the exit")
    client = h.client()
    with pytest.raises(openai.APIStatusError) as refused:
        ask(client, extra_headers={"X-Backhaul-Route": "local-only"})
    assert refused.value.status_code == 503
    assert refused.value.response.headers["x-backhaul-routed"] == "local"
    assert "not escalated to the cloud: the request is local-only" in refused.value.message
    with pytest.raises(openai.APIStatusError) as private_route:
        client.completions.create(model=LOCAL_MODEL, prompt="patient 4711: summarise the chart", max_tokens=4)
    assert private_route.value.status_code == 503
    assert h.cloud.events() == []  # the cloud server's own log: nothing arrived
    assert h.metric("backhaul_proxy_escalations_refused_total", 'reason="private",trigger="down"') == 2

    # Opting in per request, and a request that is not private, go to the cloud.
    raw = client.completions.with_raw_response.create(
        model=LOCAL_MODEL, prompt="shift report", max_tokens=4, extra_headers={"X-Backhaul-Route": "allow-cloud"}
    )
    assert raw.headers["x-backhaul-routed"] == "cloud; reason=down"
    assert ask(client) == ("cloud; reason=down", CLOUD_MODEL)
    assert [e["path"] for e in h.cloud.events("received")] == ["/v1/completions", "/v1/chat/completions"]


def curl_stream(url: str, headers: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """POST a streaming chat completion with curl -N; the response headers and the SSE data events."""
    curl = require_program("curl")
    body = {"model": LOCAL_MODEL, "messages": SHORT, "max_tokens": 7, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    dump = tmp_path / f"headers-{time.monotonic_ns()}"
    args = [curl, "-sS", "-N", "--fail-with-body", "-D", str(dump), "-H", "Content-Type: application/json"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, "-d", json.dumps(body), url], capture_output=True, timeout=20, check=True).stdout
    lines = out.decode().splitlines()
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]", lines[-3:]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    parsed = {}
    for line in dump.read_text().splitlines()[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            parsed[name.strip().lower()] = value.strip()
    return parsed, events


def test_streams_through_both_routes_are_measured_per_route(hybrid: Callable[..., Hybrid], tmp_path: Path) -> None:
    h = hybrid(local_args=("--tokens-per-second", "200"), cloud_args=("--tokens-per-second", "200"))
    url = f"{h.proxy}/v1/chat/completions"
    local_headers, local_events = curl_stream(url, {}, tmp_path)
    cloud_headers, cloud_events = curl_stream(url, {"X-Backhaul-Route": "cloud"}, tmp_path)
    assert local_headers["content-type"].startswith("text/event-stream")
    assert local_headers["x-backhaul-routed"] == "local"
    assert cloud_headers["x-backhaul-routed"] == "cloud; reason=requested"
    for events, model in ((local_events, LOCAL_MODEL), (cloud_events, CLOUD_MODEL)):
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
        assert len(text.split()) == 7 and {e["model"] for e in events} == {model}
        assert events[-1]["usage"]["completion_tokens"] == 7

    def tokens(upstream: str, model: str) -> float:
        labels = f'model="{model}",route="/v1/chat/completions",upstream="{upstream}"'
        return h.metric("backhaul_proxy_completion_tokens_total", labels)

    assert tokens("local", LOCAL_MODEL) == 7 and tokens("cloud", CLOUD_MODEL) == 7
    for upstream in ("local", "cloud"):
        labels = f'route="/v1/chat/completions",upstream="{upstream}"'
        assert h.metric("backhaul_proxy_time_to_first_token_seconds_count", labels) == 1
        assert h.metric("backhaul_proxy_tokens_per_second_count", labels) == 1
    assert h.metric("backhaul_proxy_routed_requests_total", 'reason="requested",route="cloud"') == 1
    assert h.metric("backhaul_proxy_routed_requests_total", 'reason="none",route="local"') == 1
    sent = h.metric("backhaul_proxy_cloud_bytes_total", 'direction="sent"')
    received = h.metric("backhaul_proxy_cloud_bytes_total", 'direction="received"')
    assert sent > 100 and received > sum(len(json.dumps(e)) for e in cloud_events)
    assert h.metric("backhaul_proxy_link_bytes_total") == sent + received
