"""The measuring proxy in front of the (real, in-process) demo inference server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.config import ProxySettings
from agent.proxy.server import InferenceProxy
from demo.inference_server import FakeModel, Server
from tests.support import free_port

Start = Callable[..., Any]


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[float], Any]]:
    runners: list[web.AppRunner] = []

    async def start(tokens_per_second: float = 0) -> str:
        runner = web.AppRunner(Server(FakeModel("demo-llm-1b", tokens_per_second)).app(), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[[str], Any]]:
    proxies: list[InferenceProxy] = []

    async def start(upstream_url: str) -> tuple[InferenceProxy, str, CollectorRegistry]:
        registry = CollectorRegistry()
        p = InferenceProxy(ProxySettings(enabled=True, port=0, upstream=upstream_url), registry)
        await p.start()
        proxies.append(p)
        return p, f"http://127.0.0.1:{p.port}", registry

    yield start
    for p in proxies:
        await p.stop()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (e.g. over every upstream)."""
    return sum(
        s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


CHAT = {"model": "demo-llm-1b", "messages": [{"role": "user", "content": "how is the link today"}], "max_tokens": 12}


async def test_json_answers_pass_unchanged_and_their_usage_is_counted(upstream: Start, proxy: Start) -> None:
    url = await upstream()
    _, purl, registry = await proxy(url)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/chat/completions", json=CHAT) as resp:
            direct = await resp.json()
        async with session.post(f"{purl}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            via = await resp.json()
    assert via["choices"] == direct["choices"] and via["usage"] == direct["usage"]
    route = "/v1/chat/completions"
    assert sample(registry, "backhaul_proxy_prompt_tokens_total", route=route, model="demo-llm-1b") == 5
    assert sample(registry, "backhaul_proxy_completion_tokens_total", route=route, model="demo-llm-1b") == 12
    assert sample(registry, "backhaul_proxy_request_duration_seconds_count", route=route, code="200") == 1
    assert sample(registry, "backhaul_proxy_time_to_first_token_seconds_count", route=route) == 0


async def read_events(resp: aiohttp.ClientResponse) -> tuple[list[dict[str, Any]], float]:
    """The SSE data events, and when the first one arrived (perf_counter)."""
    events: list[dict[str, Any]] = []
    first = 0.0
    async for line in resp.content:
        if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
            first = first or time.perf_counter()
            events.append(json.loads(line[6:]))
    return events, first


async def test_a_stream_is_relayed_as_it_is_produced_and_measured(upstream: Start, proxy: Start) -> None:
    url = await upstream(tokens_per_second=20)
    _, purl, registry = await proxy(url)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.post(f"{purl}/v1/chat/completions", json=body) as resp:
        assert resp.content_type == "text/event-stream"
        events, first = await read_events(resp)
    total = time.perf_counter() - started
    # 12 tokens at 20/s take 0.6 s; the first must reach the client long before the last is made
    assert first - started < 0.3 and total >= 0.55
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert len(text.split()) == 12
    assert events[-1]["usage"]["completion_tokens"] == 12
    route = "/v1/chat/completions"
    assert sample(registry, "backhaul_proxy_completion_tokens_total", route=route, model="demo-llm-1b") == 12
    assert sample(registry, "backhaul_proxy_prompt_tokens_total", route=route, model="demo-llm-1b") == 5
    assert sample(registry, "backhaul_proxy_time_to_first_token_seconds_count", route=route) == 1
    ttft = sample(registry, "backhaul_proxy_time_to_first_token_seconds_sum", route=route)
    assert 0.04 < ttft < 0.3
    rate = sample(registry, "backhaul_proxy_tokens_per_second_sum", route=route)
    assert 10 < rate < 25, rate


async def test_a_stream_without_usage_is_counted_chunk_by_chunk(upstream: Start, proxy: Start) -> None:
    url = await upstream()
    _, purl, registry = await proxy(url)
    body = {"model": "demo-llm-1b", "prompt": "one two three", "max_tokens": 7, "stream": True}
    async with aiohttp.ClientSession() as session, session.post(f"{purl}/v1/completions", json=body) as resp:
        events, _ = await read_events(resp)
    assert "usage" not in events[-1]
    route = "/v1/completions"
    assert sample(registry, "backhaul_proxy_completion_tokens_total", route=route, model="demo-llm-1b") == 7
    assert sample(registry, "backhaul_proxy_prompt_tokens_total", route=route, model="demo-llm-1b") == 0


async def test_requests_in_flight_while_a_stream_runs(upstream: Start, proxy: Start) -> None:
    url = await upstream(tokens_per_second=20)
    _, purl, registry = await proxy(url)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{purl}/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            await resp.content.readline()
            assert sample(registry, "backhaul_proxy_requests_in_flight") == 1
            await resp.read()
    assert sample(registry, "backhaul_proxy_requests_in_flight") == 0


async def test_a_big_request_body_is_streamed_through(upstream: Start, proxy: Start) -> None:
    url = await upstream()
    _, purl, registry = await proxy(url)
    words = 400_000  # ~2.4 MB: above the 1 MiB the proxy forwards whole
    body = json.dumps({"prompt": "token " * words, "max_tokens": 1}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    async with aiohttp.ClientSession() as session:
        headers = {"Content-Type": "application/json"}
        async with session.post(f"{purl}/v1/completions", data=chunks(), headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["usage"]["prompt_tokens"] == words
    assert sample(registry, "backhaul_proxy_prompt_tokens_total", route="/v1/completions", model="demo-llm-1b") == words


async def test_other_paths_and_errors_pass_through_under_route_other(upstream: Start, proxy: Start) -> None:
    url = await upstream()
    _, purl, registry = await proxy(url)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{purl}/some/{time.time_ns()}/path?x=1") as resp:
            assert resp.status == 404
        async with session.post(f"{purl}/v1/chat/completions", data=b"not json") as resp:
            assert resp.status == 400
    assert sample(registry, "backhaul_proxy_request_duration_seconds_count", route="other", code="404") == 1
    assert (
        sample(registry, "backhaul_proxy_request_duration_seconds_count", route="/v1/chat/completions", code="400") == 1
    )


async def test_an_unreachable_upstream_is_a_502(proxy: Start) -> None:
    _, purl, registry = await proxy(f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as session, session.post(f"{purl}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 502
    assert sample(registry, "backhaul_proxy_upstream_errors_total", reason="connect") == 1
    assert (
        sample(registry, "backhaul_proxy_request_duration_seconds_count", route="/v1/chat/completions", code="502") == 1
    )
