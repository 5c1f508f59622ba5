"""``POST /v1/metrics``: OTLP/HTTP metrics into the durable buffer, beside remote write.

The request is an ``ExportMetricsServiceRequest`` in protobuf or OTLP/JSON, plain or gzip
(``backhaul.wire.otlp``), mapped to Prometheus series per OpenTelemetry's Prometheus compatibility
specification: names with unit and ``_total`` suffixes, resource attributes as ``job``/``instance``
and ``target_info``, cumulative sums as counters (delta temporality is refused point by point, with
the reason in partial success, and counted), gauges, histograms as classic buckets and exponential
histograms as native histograms, metadata per family. Exemplars are counted, not stored.

Answers (OTLP/HTTP, in the request's encoding):
    200  committed to the buffer (and only then): an ``ExportMetricsServiceResponse``, with
         ``partial_success`` (points refused, and why) when some points were refused
    400  the body does not parse: a ``google.rpc.Status`` with the reason
    413  body or its decompressed form over the limits
    415  a Content-Type other than application/x-protobuf or application/json, an encoding other than gzip
    503  shutting down, overloaded or the disk refused: ``Retry-After``, the exporter retries
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from agent.ingest.commit import Committer
from agent.ingest.settings import IngestSettings
from backhaul.errors import InputError
from backhaul.web import read_body, respond
from backhaul.wire import budget, otlp, protodesc
from backhaul.wire import remote_write as rw
from backhaul.wire.budget import DecodeBudget
from backhaul.wire.protodesc import Field, T

# Bodies larger than this are decompressed, and those that decompress to more decoded, on a worker
# thread (and the latter only within the decoding budget), so the event loop never waits on them.
_INLINE_BYTES = 256 * 1024
_INLINE_GZIP_BYTES = 16 * 1024

# google.rpc.Status, which OTLP/HTTP answers a refused request with (code, message; no details).
_Status = protodesc.build(
    "backhaul_rpc_status.proto",
    "google.rpc",
    {"Status": [Field("code", 1, T.TYPE_INT32), Field("message", 2, T.TYPE_STRING)]},
)["Status"]
# gRPC codes for the HTTP answers, as OTLP/HTTP maps them.
_GRPC_CODE = {400: 3, 401: 16, 403: 7, 413: 3, 415: 3, 503: 14}


class OtlpReceiver:
    """The OTLP/HTTP metrics handler.

    Args:
        committer: the commit remote write uses (limits on pending samples, alert rules, metadata).
        ingest: size limits.
        limits: the receiver's current decoding limits (remote write's: labels, timestamp window).
        decode_budget: decoded memory shared with remote write.
        registry: where its request counter is registered.
        options: how OTLP is mapped (``backhaul.wire.otlp.Options``).
    """

    def __init__(
        self,
        committer: Committer,
        ingest: IngestSettings,
        limits: Callable[[], rw.Limits],
        decode_budget: DecodeBudget,
        registry: CollectorRegistry,
        options: otlp.Options | None = None,
    ) -> None:
        self._committer = committer
        self._ingest = ingest
        self._limits = limits
        self._budget = decode_budget
        self._options = options or otlp.Options()
        self.requests = Counter(
            "backhaul_ingest_otlp_requests",
            "OTLP/HTTP metrics requests answered, by HTTP status",
            ["code"],
            registry=registry,
        )
        self.rejected = Counter(
            "backhaul_ingest_otlp_rejected_points",
            "OTLP data points refused (reported as partial success), by reason",
            ["reason"],
            registry=registry,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await respond(self._handle, request, "OTLP metrics")
        self.requests.labels(str(response.status)).inc()
        if response.status >= 400 and isinstance(response, web.Response) and response.text is not None:
            response = _status_answer(response, request.headers.get("Content-Type"))
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        kind = otlp.media_type(request.headers.get("Content-Type"))
        encoding = request.headers.get("Content-Encoding")
        body = await read_body(request, int(self._ingest.max_request_bytes))
        limits = self._limits()
        cap = limits.max_decompressed_bytes
        gzip = (encoding or "").strip().lower() == "gzip"
        if len(body) > (_INLINE_GZIP_BYTES if gzip else _INLINE_BYTES):
            raw = await asyncio.to_thread(otlp.decompress, body, encoding, cap)
        else:
            raw = otlp.decompress(body, encoding, cap)
        if len(raw) > _INLINE_BYTES:
            cost = min(budget.remote_write_worst(len(raw)), self._budget.per_request)
            async with self._budget.reserve(cost, "OTLP request"):
                mapped = await asyncio.to_thread(self._map, raw, kind, limits)
        else:
            mapped = self._map(raw, kind, limits)
        await self._committer.commit(mapped.decoded, "OTLP")
        for reason, count in mapped.rejected.items():
            self.rejected.labels(reason).inc(count)
        return web.Response(status=200, body=otlp.response(mapped, kind), content_type=kind)

    def _map(self, raw: bytes, kind: str, limits: rw.Limits) -> otlp.Mapped:
        return otlp.to_prometheus(otlp.parse(raw, kind), limits, self._options)


def _status_answer(answer: web.Response, content_type: str | None) -> web.Response:
    """An error answer as OTLP/HTTP wants it: a ``google.rpc.Status`` in the request's encoding
    (protobuf unless the request was JSON); status and headers (``Retry-After``) kept."""
    message = (answer.text or "").strip()
    code = _GRPC_CODE.get(answer.status, 2)
    headers = {k: v for k, v in answer.headers.items() if k.lower() in ("retry-after", "www-authenticate")}
    try:
        is_json = otlp.media_type(content_type) == otlp.JSON
    except InputError:
        is_json = False
    if is_json:
        body = json.dumps({"code": code, "message": message}).encode()
        return web.Response(status=answer.status, body=body, content_type=otlp.JSON, headers=headers)
    status = _Status(code=code, message=message)
    return web.Response(
        status=answer.status, body=status.SerializeToString(), content_type=otlp.PROTOBUF, headers=headers
    )
