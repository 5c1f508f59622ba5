"""Relaying an upstream's answer to the client, measuring it on the way, and the proxy's own answers.

Small answers with a known length (up to 1 MiB) are read whole and sent as one response; bigger ones
and every Server-Sent Events stream are relayed chunk by chunk as they come, never held whole.
"""

from __future__ import annotations

import json
import logging
import time

import aiohttp
from aiohttp import web

from agent.proxy.errors import UpstreamError
from agent.proxy.measure import StreamStats, count_stream, count_usage
from agent.proxy.metrics import ProxyMetrics
from agent.proxy.routing import ROUTED_HEADER
from agent.proxy.upstream import Upstream, forwardable

log = logging.getLogger(__name__)

WHOLE_BODY = 1024 * 1024
TOKEN_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})


async def relay(
    request: web.Request,
    up: aiohttp.ClientResponse,
    upstream: Upstream,
    metrics: ProxyMetrics,
    route: str,
    routed: str,
    started: float,
    pending: list[bytes] | None = None,
    stats: StreamStats | None = None,
) -> tuple[web.StreamResponse, int]:
    """The client's response and the body bytes relayed.

    ``pending`` is what was already read from ``up`` (and fed to ``stats``) while waiting for a first
    token. Raises :class:`UpstreamError` only while nothing has been sent to the client yet.
    """
    headers = forwardable(up.headers)
    headers[ROUTED_HEADER] = routed
    sse = up.content_type == "text/event-stream"
    if not sse and not pending and up.content_length is not None and up.content_length <= WHOLE_BODY:
        data = await upstream.read(up)
        if route in TOKEN_ROUTES and up.content_type == "application/json" and up.status == 200:
            count_usage(metrics, route, upstream.name, data)
        return web.Response(status=up.status, body=data, headers=headers), len(data)
    if sse and stats is None:
        stats = StreamStats()
    response = web.StreamResponse(status=up.status, headers=headers)
    await response.prepare(request)
    size = 0
    try:
        for chunk in pending or ():
            await response.write(chunk)
            size += len(chunk)
        while chunk := await upstream.chunk(up):
            await response.write(chunk)  # the client first; the bookkeeping after
            if stats is not None:
                stats.feed(chunk, time.perf_counter())
            size += len(chunk)
        await response.write_eof()
    except (ConnectionResetError, UpstreamError) as exc:
        log.info("proxy: answer on %s from %s ended early: %s", route, upstream.name, exc)
    if sse and stats is not None:
        count_stream(metrics, route, upstream.name, stats, started)
    return response, size


def not_escalated(why: str, refused: str) -> web.Response:
    """503 for a request the local server cannot answer and the cloud may not: an OpenAI-style error."""
    reasons = {
        "private": "the request is local-only",
        "no_cloud": "no cloud model is configured (proxy.cloud.url)",
    }
    because = reasons.get(refused, f"the link may not carry it now ({refused})")
    body = {
        "error": {
            "message": f"{why}; not escalated to the cloud: {because}",
            "type": "backhaul_not_escalated",
            "code": refused,
        }
    }
    return web.Response(
        status=503,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={ROUTED_HEADER: "local", "Retry-After": "5"},
    )


def failed(status: int, text: str, routed: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers={ROUTED_HEADER: routed})
