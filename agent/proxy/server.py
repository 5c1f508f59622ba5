"""The proxy's listener and the path of one request: decide, try the local server, escalate, relay.

The local server is tried first unless the plan escalates at once (``routing.py``). While it is
tried, two triggers can still send the request to the cloud, but only before any byte reached the
client: ``slow_start`` (no headers, or for a stream no first token, within ``ttft_deadline``; the
proxy holds what arrives before the first token, then cancels the local request, closing its
connection so the local server sees the disconnect) and ``error`` (5xx, or no answer at all).
Every answer carries ``X-Backhaul-Routed: local`` or ``cloud; reason=<reason>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from agent.proxy.errors import UpstreamError
from agent.proxy.forward import WHOLE_BODY, failed, not_escalated, relay
from agent.proxy.link import CountedLink, LinkGate
from agent.proxy.measure import StreamStats
from agent.proxy.metrics import ProxyMetrics
from agent.proxy.routing import (
    ESCALATABLE,
    ROUTE_HEADER,
    Body,
    Plan,
    RouteHeaderError,
    Router,
    route_header,
)
from agent.proxy.settings import ProxySettings
from agent.proxy.upstream import Upstream, header_bytes
from backhaul.listener import Listener, ListenerMetrics

log = logging.getLogger("agent.proxy")

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
# Request line and status line, roughly, for the link's byte count.
_LINE_BYTES = 16


@dataclass(slots=True)
class _Outcome:
    upstream: str = "local"
    reason: str = "none"
    code: str = "error"


@dataclass(frozen=True, slots=True)
class _Escalate:
    reason: str


class _Quiet:
    """At most one log line per ``every`` seconds per key; what was held back is counted in the next."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) >= self.every:
            held = self._held.pop(key, 0)
            more = f" ({held} more since the last message)" if held else ""
            log.warning("proxy: %s%s", text, more)
            self._last[key] = now
        else:
            self._held[key] = self._held.get(key, 0) + 1


class InferenceProxy:
    """The proxy's listener and its upstream sessions, as an async context manager.

    Args:
        settings: the ``[proxy]`` section (listen address, local upstream, timeout, ``[proxy.cloud]``).
        registry: where the ``backhaul_proxy_*`` metrics are registered.
        local_down: why the local server cannot serve now, or None when it can (the supervisor's
            :meth:`~agent.supervisor.Supervisor.unavailable`); None when nothing supervises it.
        link: the metered link escalated requests travel over (None: unmetered).
    """

    def __init__(
        self,
        settings: ProxySettings,
        registry: CollectorRegistry,
        local_down: Callable[[], str | None] | None = None,
        link: LinkGate | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = ProxyMetrics(registry)
        self._listener_metrics = ListenerMetrics(registry, "backhaul_proxy")
        cloud = settings.cloud
        if cloud.enabled:
            link = CountedLink(registry, link)
        self.link = link
        self.router = Router(cloud, local_down, link)
        self.local = Upstream("local", str(settings.upstream), settings.timeout.total_seconds())
        self.cloud: Upstream | None = None
        # TLS towards the cloud, built (and checked) now, reloaded with the uplink's (agent/app.py).
        self.tls = cloud.client_tls("proxy.cloud") if cloud.enabled else None
        self.port: int | None = None
        self._hold = max(WHOLE_BODY, int(cloud.max_body_bytes)) if cloud.enabled else WHOLE_BODY
        self._deadline = cloud.ttft_deadline.total_seconds()
        self._local_in_flight = 0
        self._stack: contextlib.AsyncExitStack | None = None
        self._quiet = _Quiet()

    # -- lifecycle --

    async def __aenter__(self) -> InferenceProxy:
        if self._stack is not None:
            raise RuntimeError("an InferenceProxy can be started once")
        s = self.settings
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.local)
            c = s.cloud
            if c.url is not None:
                self.cloud = Upstream(
                    "cloud",
                    str(c.url),
                    c.timeout.total_seconds(),
                    c.token.get_secret_value(),
                    c.model_map,
                    self.tls,
                )
                await stack.enter_async_context(self.cloud)
            app = web.Application(client_max_size=self._hold)
            app.router.add_route("*", "/{tail:.*}", self.handle)
            # The agent's listener: timeouts for slow or idle clients and a connection cap.
            listener = Listener(app, s.host, s.port, s, self._listener_metrics, "inference proxy", shutdown_timeout=2)
            await stack.enter_async_context(listener)
            self.port = listener.port
            self._stack = stack.pop_all()  # started: from now on __aexit__ unwinds it
        cloud = f", cloud {self.cloud.base_url} on {sorted(self.router.triggers)}" if self.cloud else ""
        log.info("inference proxy on %s:%s -> %s%s", s.host, self.port, self.local.base_url, cloud)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stack is not None:
            await self._stack.aclose()

    async def start(self) -> None:
        await self.__aenter__()

    async def stop(self) -> None:
        await self.__aexit__(None, None, None)

    # -- one request --

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.path if request.path in ROUTES else "other"
        m = self.metrics
        m.in_flight.inc()
        out = _Outcome()
        try:
            response = await self._route(request, route, started, out)
            out.code = str(response.status)
            return response
        finally:
            m.in_flight.dec()
            m.duration.labels(route, out.code, out.upstream).observe(time.perf_counter() - started)
            if request.path in ESCALATABLE:
                m.routed.labels(out.upstream, out.reason).inc()

    async def _route(self, request: web.Request, route: str, started: float, out: _Outcome) -> web.StreamResponse:
        try:
            header = route_header(request.headers.get(ROUTE_HEADER))
        except RouteHeaderError as exc:
            return failed(400, str(exc), "local")
        body, streamed = await self._read_body(request)
        plan = self.router.plan(request.method, request.path, header, body, self._local_in_flight)
        if plan.cloud:
            assert body is not None
            return await self._cloud(request, route, started, body, plan.reason, out)
        if plan.refused is not None:
            self._refused(plan.refused, plan.wanted or "", out)
            if plan.unavailable is not None:
                return not_escalated(f"the local model is unavailable ({plan.unavailable})", plan.refused)
        result = await self._local(request, route, started, body, streamed, plan, out)
        if isinstance(result, _Escalate):
            assert body is not None
            return await self._cloud(request, route, started, body, result.reason, out)
        return result

    async def _read_body(self, request: web.Request) -> tuple[Body | None, AsyncIterator[bytes] | None]:
        """The body held whole (so it can be sent twice) when small enough, else a stream of it."""
        if not request.body_exists:
            return None, None
        length = request.content_length
        if length is not None and length <= self._hold:
            return Body(await request.read()), None
        if length is not None or not self.router.enabled:
            return None, request.content.iter_any()
        parts: list[bytes] = []  # chunked, with a cloud to escalate to: hold it up to the limit
        size = 0
        while chunk := await request.content.readany():
            parts.append(chunk)
            size += len(chunk)
            if size > self._hold:
                return None, _chain(parts, request.content)
        return Body(b"".join(parts)), None

    def _refused(self, refused: str, wanted: str, out: _Outcome) -> None:
        self.metrics.refused.labels(refused, wanted).inc()
        out.reason = refused

    # -- the local server --

    async def _local(
        self,
        request: web.Request,
        route: str,
        started: float,
        body: Body | None,
        streamed: AsyncIterator[bytes] | None,
        plan: Plan,
        out: _Outcome,
    ) -> web.StreamResponse | _Escalate:
        data: bytes | AsyncIterator[bytes] | None = body.raw if body is not None else streamed
        headers = self.local.headers(request.headers)
        path_qs = request.rel_url.raw_path_qs
        m = self.metrics
        self._local_in_flight += 1
        m.local_in_flight.inc()
        up: aiohttp.ClientResponse | None = None
        try:
            try:
                pending: list[bytes] = []
                stats: StreamStats | None = None
                if "slow_start" in plan.late:
                    first = await self._first_in_time(request.method, path_qs, headers, data, plan, out)
                    if isinstance(first, _Escalate):
                        return first
                    up, pending, stats = first
                else:
                    up = await self.local.send(request.method, path_qs, headers, data)
                if up.status >= 500 and "error" in plan.late:
                    refused = self.router.refusal(plan.private)
                    if refused is None:
                        return _Escalate("error")
                    self._refused(refused, "error", out)
                response, _ = await relay(request, up, self.local, m, route, "local", started, pending, stats)
                return response
            except UpstreamError as exc:
                m.upstream_errors.labels(exc.kind, "local").inc()
                self._quiet.warning(f"local-{exc.kind}", str(exc))
                refused = plan.refused
                if refused is None and "error" in plan.late:
                    refused = self.router.refusal(plan.private)
                    if refused is None:
                        return _Escalate("error")
                    self._refused(refused, "error", out)
                if refused is None and plan.private:
                    refused = "private"
                if refused is not None:
                    return not_escalated(f"the local model did not answer ({exc.detail})", refused)
                return failed(504 if exc.kind == "timeout" else 502, str(exc), "local")
        finally:
            if up is not None:
                up.release()
            self._local_in_flight -= 1
            m.local_in_flight.dec()

    async def _first_in_time(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        data: bytes | AsyncIterator[bytes] | None,
        plan: Plan,
        out: _Outcome,
    ) -> tuple[aiohttp.ClientResponse, list[bytes], StreamStats | None] | _Escalate:
        """The local response once its headers (and, for a stream, its first token) arrived in time."""

        async def first() -> tuple[aiohttp.ClientResponse, list[bytes], StreamStats | None]:
            up = await self.local.send(method, path_qs, headers, data)
            if up.status >= 300 or up.content_type != "text/event-stream":
                return up, [], None
            pending: list[bytes] = []
            stats = StreamStats()
            try:
                while stats.first_token is None:
                    chunk = await self.local.chunk(up)
                    if not chunk:
                        break  # ended without a token: relay what there is
                    pending.append(chunk)
                    stats.feed(chunk, time.perf_counter())
            except BaseException:
                up.close()  # cancelled (deadline) or broken: the local server sees the disconnect
                raise
            return up, pending, stats

        task = asyncio.create_task(first())
        try:
            done, _ = await asyncio.wait({task}, timeout=self._deadline)
            if not done:
                refused = self.router.refusal(plan.private)
                if refused is None:
                    task.cancel()
                    await asyncio.wait({task})
                    if not task.cancelled() and task.exception() is None:
                        task.result()[0].close()  # it made it just as the deadline passed: too late
                    return _Escalate("slow_start")
                self._refused(refused, "slow_start", out)  # keep waiting for the local answer
            return await task
        except asyncio.CancelledError:
            task.cancel()
            raise

    # -- the cloud --

    async def _cloud(
        self, request: web.Request, route: str, started: float, body: Body, reason: str, out: _Outcome
    ) -> web.StreamResponse:
        cloud = self.cloud
        assert cloud is not None, "a plan escalates only with a cloud"
        out.upstream, out.reason = "cloud", reason
        routed = f"cloud; reason={reason}"
        self._quiet.warning(f"escalate-{reason}", f"escalating requests to the cloud model: {reason}")
        data = cloud.body(body.raw, body.json() if cloud.maps_models else None)
        headers = cloud.headers(request.headers)
        path_qs = request.rel_url.raw_path_qs
        self._count_link("sent", _LINE_BYTES + len(path_qs) + header_bytes(headers) + len(data))
        try:
            up = await cloud.send(request.method, path_qs, headers, data)
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels(exc.kind, "cloud").inc()
            self._quiet.warning(f"cloud-{exc.kind}", str(exc))
            return failed(504 if exc.kind == "timeout" else 502, str(exc), routed)
        size = 0
        try:
            response, size = await relay(request, up, cloud, self.metrics, route, routed, started)
            return response
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels(exc.kind, "cloud").inc()
            return failed(504 if exc.kind == "timeout" else 502, str(exc), routed)
        finally:
            up.release()
            self._count_link("received", _LINE_BYTES + header_bytes(up.headers) + size)

    def _count_link(self, direction: str, nbytes: int) -> None:
        self.metrics.cloud_bytes.labels(direction).inc(nbytes)
        if self.link is not None:
            self.link.count(nbytes)


async def _chain(head: list[bytes], rest: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    async for chunk in rest.iter_any():
        yield chunk
