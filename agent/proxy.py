"""A reverse proxy in front of the inference HTTP API that measures what passes through it.

Its own listener (``[proxy]``) forwards every request to ``proxy.upstream`` over one shared
keep-alive ``ClientSession``. Small bodies (up to 1 MiB with a known length) are forwarded whole;
bigger ones, and every Server-Sent Events stream, are streamed chunk by chunk, never held whole.

Measured, on the agent's registry (and so, through the self-scrape, in the buffer too):
- request duration by route and status code, requests in flight, upstream failures;
- for OpenAI-compatible JSON answers: ``usage.prompt_tokens`` and ``usage.completion_tokens``;
- for SSE streams (``stream: true``): tokens (the final ``usage`` chunk when the server sends one,
  otherwise one per data chunk that carries text), time to first token, and tokens per second over
  the decode phase ((tokens - 1) / (last token - first token), the rate a user sees).
Routes outside the OpenAI set are labelled ``other`` so arbitrary paths cannot grow the label set.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.config import ProxySettings

log = logging.getLogger(__name__)

ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/health",
        "/healthz",
        "/metrics",
    }
)
TOKEN_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})
_WHOLE_BODY = 1024 * 1024
# RFC 9110 hop-by-hop headers, plus what aiohttp recomputes (length, host) and compression, which the
# proxy asks the upstream not to use (it must read token counts; loopback needs no compression).
_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)


def _forwardable(headers: Any) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _DROP)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.duration = Histogram(
            "backhaul_proxy_request_duration_seconds",
            "Inference API requests through the proxy: duration to the last byte, by route and status code",
            ["route", "code"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.in_flight = Gauge("backhaul_proxy_requests_in_flight", "Requests being proxied now", registry=r)
        self.upstream_errors = Counter(
            "backhaul_proxy_upstream_errors",
            "Requests the upstream did not answer (connect failure, timeout, reset), by reason",
            ["reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "backhaul_proxy_prompt_tokens",
            "Prompt tokens reported by the upstream, by route and model",
            ["route", "model"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "backhaul_proxy_completion_tokens",
            "Completion tokens (usage, or counted in the stream), by route and model",
            ["route", "model"],
            registry=r,
        )
        self.ttft = Histogram(
            "backhaul_proxy_time_to_first_token_seconds",
            "Streamed responses: request start to the first chunk carrying a token",
            ["route"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "backhaul_proxy_tokens_per_second",
            "Streamed responses: decode rate, (tokens - 1) / (last token time - first token time)",
            ["route"],
            buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 500, 1000),
            registry=r,
        )


class _StreamStats:
    """Incremental reader of an SSE stream's ``data:`` lines (OpenAI chat/completions chunks)."""

    def __init__(self) -> None:
        self._partial = b""
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.token_chunks = 0
        self.usage: dict[str, Any] | None = None
        self.model = ""

    def feed(self, chunk: bytes, now: float) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _WHOLE_BODY:  # not SSE after all: stop looking, keep forwarding
            self._partial = b""
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            self.model = str(event.get("model") or self.model)
            if isinstance(event.get("usage"), dict):
                self.usage = event["usage"]
            if _carries_token(event):
                self.token_chunks += 1
                if self.first_token is None:
                    self.first_token = now
                self.last_token = now


def _carries_token(event: dict[str, Any]) -> bool:
    choices = event.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and (
            delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")
        ):
            return True
        if choice.get("text"):
            return True
    return False


def _tokens(usage: dict[str, Any], key: str) -> int | None:
    value = usage.get(key)
    return value if isinstance(value, int) and value >= 0 else None


class InferenceProxy:
    """The proxy's listener and its upstream session, as an async context manager.

    Args:
        settings: the ``[proxy]`` section (listen address, upstream URL, timeout).
        registry: where the ``backhaul_proxy_*`` metrics are registered.
    """

    def __init__(self, settings: ProxySettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.upstream = str(settings.upstream).rstrip("/")
        self.metrics = ProxyMetrics(registry)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._last_warning = -math.inf
        self._unlogged = 0

    async def __aenter__(self) -> InferenceProxy:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # e.g. the port is taken: close the session already opened
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout.total_seconds()),
            auto_decompress=False,  # bytes pass through as the upstream sent them
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        app = web.Application(client_max_size=_WHOLE_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.host, self.settings.port).start()
        self.port = self._runner.addresses[0][1]
        log.info("inference proxy on %s:%s -> %s", self.settings.host, self.port, self.upstream)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.path if request.path in ROUTES else "other"
        m = self.metrics
        m.in_flight.inc()
        code = "error"
        try:
            response = await self._forward(request, route, started)
            code = str(response.status)
            return response
        finally:
            m.in_flight.dec()
            m.duration.labels(route, code).observe(time.perf_counter() - started)

    async def _forward(self, request: web.Request, route: str, started: float) -> web.StreamResponse:
        assert self._session is not None, "InferenceProxy.start() first"
        body: bytes | AsyncIterator[bytes] | None = None
        if request.body_exists:
            length = request.content_length
            body = await request.read() if length is not None and length <= _WHOLE_BODY else request.content.iter_any()
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.rel_url.raw_path_qs,
                headers=_forwardable(request.headers),
                data=body,
                allow_redirects=False,
            ) as up:
                headers = _forwardable(up.headers)
                if up.content_type == "text/event-stream":
                    return await self._relay_stream(request, up, headers, route, started)
                if up.content_length is not None and up.content_length <= _WHOLE_BODY:
                    data = await up.read()
                    if route in TOKEN_ROUTES and up.content_type == "application/json" and up.status == 200:
                        self._count_usage(route, data)
                    return web.Response(status=up.status, body=data, headers=headers)
                return await self._relay(request, up, headers)
        except aiohttp.ClientConnectorError as exc:
            return self._failed("connect", 502, f"upstream {self.upstream} unreachable: {exc.strerror or exc}")
        except TimeoutError:
            return self._failed("timeout", 504, f"upstream did not answer within {self.settings.timeout}")
        except aiohttp.ClientError as exc:
            return self._failed("reset", 502, f"upstream failed: {type(exc).__name__}")

    def _failed(self, reason: str, status: int, text: str) -> web.Response:
        self.metrics.upstream_errors.labels(reason).inc()
        # Clients retrying against a server that is down would flood the log: one line per 10 s.
        now = time.monotonic()
        if now - self._last_warning >= 10:
            more = f" ({self._unlogged} more failures since the last message)" if self._unlogged else ""
            log.warning("proxy: %s%s", text, more)
            self._last_warning, self._unlogged = now, 0
        else:
            self._unlogged += 1
        return web.Response(status=status, text=text + "\n")

    @staticmethod
    async def _relay(request: web.Request, up: aiohttp.ClientResponse, headers: CIMultiDict[str]) -> web.StreamResponse:
        response = web.StreamResponse(status=up.status, headers=headers)
        await response.prepare(request)
        async for chunk in up.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _relay_stream(
        self,
        request: web.Request,
        up: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        route: str,
        started: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=up.status, headers=headers)
        await response.prepare(request)
        stats = _StreamStats()
        try:
            async for chunk in up.content.iter_any():
                await response.write(chunk)  # the client first; the bookkeeping after
                stats.feed(chunk, time.perf_counter())
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientPayloadError):
            log.info("proxy: stream on %s ended early", route)
        self._count_stream(route, stats, started)
        return response

    def _count_usage(self, route: str, data: bytes) -> None:
        try:
            answer = json.loads(data)
        except ValueError:
            return
        if not isinstance(answer, dict) or not isinstance(answer.get("usage"), dict):
            return
        model = str(answer.get("model") or "")
        usage = answer["usage"]
        if (prompt := _tokens(usage, "prompt_tokens")) is not None:
            self.metrics.prompt_tokens.labels(route, model).inc(prompt)
        if (completion := _tokens(usage, "completion_tokens")) is not None:
            self.metrics.completion_tokens.labels(route, model).inc(completion)

    def _count_stream(self, route: str, stats: _StreamStats, started: float) -> None:
        m = self.metrics
        usage = stats.usage or {}
        completion = _tokens(usage, "completion_tokens")
        if completion is None:
            completion = stats.token_chunks
        if (prompt := _tokens(usage, "prompt_tokens")) is not None:
            m.prompt_tokens.labels(route, stats.model).inc(prompt)
        m.completion_tokens.labels(route, stats.model).inc(completion)
        if stats.first_token is None or stats.last_token is None:
            return
        m.ttft.labels(route).observe(stats.first_token - started)
        decode = stats.last_token - stats.first_token
        if completion > 1 and decode > 0:
            m.tokens_per_second.labels(route).observe((completion - 1) / decode)
