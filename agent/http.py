"""The agent's one HTTP listener: remote write and OTLP/HTTP metrics in, its own metrics, health and
status out.

``GET /api/v1/status`` is what ``backhaul-agent status`` shows (agent/status.py): local, like
/metrics and /healthz, behind the same listener (``[listen]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from agent.ingest.otlp import OtlpReceiver
from agent.ingest.remote_write import RemoteWriteReceiver
from backhaul.web import error_middleware


def build_app(
    receiver: RemoteWriteReceiver,
    registry: CollectorRegistry,
    health: Callable[[], tuple[bool, dict[str, Any]]],
    max_request_bytes: int,
    status: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    app = web.Application(client_max_size=max_request_bytes, middlewares=[error_middleware])

    async def healthz(request: web.Request) -> web.Response:
        ok, detail = health()
        return web.json_response(detail, status=200 if ok else 503)

    app.router.add_post("/api/v1/write", receiver.handle)
    # OTLP/HTTP beside remote write: the same commit, limits and decoding budget.
    otlp = OtlpReceiver(receiver.committer, receiver.ingest, receiver.limits, receiver.budget, registry)
    app.router.add_post("/v1/metrics", otlp.handle)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    if status is not None:
        snapshot = status

        async def status_page(request: web.Request) -> web.Response:
            return web.json_response(snapshot(), headers={"Cache-Control": "no-store"})

        app.router.add_get("/api/v1/status", status_page)
    return app
