"""A small, deterministic stand-in for an LLM inference server (for the demo, tests and benchmarks).

    python -m demo.inference_server --port 8080 --tokens-per-second 50

OpenAI-compatible ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream: true`` answers
Server-Sent Events, one chunk per token, a final usage chunk when ``stream_options.include_usage``
is set), ``GET /v1/models``, ``GET /healthz`` and its own ``GET /metrics``. The "model" produces
words from a fixed vocabulary chosen by a hash of the prompt, at a configurable rate, so the same
request always gets the same answer. ``--tokens-per-second 0`` answers at once (for benchmarks).
Exits on SIGTERM or SIGINT; ``--exit-after`` makes it exit by itself (status 3) for crash tests.

Knobs for the hybrid-inference tests and benchmark: ``--first-token-delay`` (seconds before the
first token: a stream's headers go at once, a JSON answer waits), ``--failure-rate`` (share of
completions answered 500 at once; ``--seed`` makes it repeatable), ``--model``, ``--api-key``
(requests without ``Authorization: Bearer <key>`` get 401), ``--request-log`` (one JSON line per
request when it arrives and one when it ends: ``done``, ``failed``, ``refused`` or ``disconnected``,
with the path, model, stream flag and Authorization header it came with). ``--knobs`` adds
``POST /demo/knobs`` to change ``first_token_delay``, ``failure_rate`` and ``tokens_per_second``
while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

VOCABULARY = (
    "the edge device keeps its telemetry in a durable buffer while the uplink is down and sends it "
    "later in compact batches so nothing acknowledged is lost and alerts travel first"
).split()


class FakeModel:
    """Deterministic words at a fixed rate."""

    def __init__(self, name: str, tokens_per_second: float) -> None:
        self.name = name
        self.delay = 0.0
        self.set_rate(tokens_per_second)

    def set_rate(self, tokens_per_second: float) -> None:
        self.delay = 1 / tokens_per_second if tokens_per_second > 0 else 0.0

    @staticmethod
    def prompt_tokens(prompt: str) -> int:
        return max(1, len(prompt.split()))

    @staticmethod
    def words(prompt: str, n: int) -> list[str]:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
        return [VOCABULARY[(seed + i * 7) % len(VOCABULARY)] for i in range(n)]


def prompt_of(body: dict[str, Any], chat: bool) -> str:
    if chat:
        messages = body.get("messages") or []
        return " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    prompt = body.get("prompt", "")
    return " ".join(prompt) if isinstance(prompt, list) else str(prompt)


@dataclass
class Knobs:
    """Misbehaviour on demand: a delay before the first token, a share of failed requests."""

    first_token_delay: float = 0.0
    failure_rate: float = 0.0


class RequestLog:
    """JSON lines, flushed at once so a test reads them while the server runs.

    Args:
        path: the file (appended to); None logs nothing.
    """

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path is not None else None
        self._next = 0

    def new_id(self) -> int:
        self._next += 1
        return self._next

    def write(self, event: str, **fields: Any) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Server:
    def __init__(
        self,
        model: FakeModel,
        knobs: Knobs | None = None,
        request_log: RequestLog | None = None,
        api_key: str = "",
        knobs_endpoint: bool = False,
        seed: int | None = None,
    ) -> None:
        self.model = model
        self.knobs = knobs or Knobs()
        self.log = request_log or RequestLog(None)
        self.api_key = api_key
        self.knobs_endpoint = knobs_endpoint
        self._random = random.Random(seed)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inference_requests", "Requests answered, by route and status", ["route", "status"], registry=r
        )
        self.tokens = Counter("inference_tokens_generated", "Completion tokens produced", ["model"], registry=r)
        self.prompt = Counter("inference_prompt_tokens", "Prompt tokens read", ["model"], registry=r)
        self.latency = Histogram(
            "inference_request_duration_seconds", "Time to answer a completion request", ["route"], registry=r
        )
        self.active = Gauge("inference_requests_active", "Requests being answered", registry=r)
        Gauge("model_loaded", "1 for the loaded model", ["model"], registry=r).labels(model.name).set(1)
        self.started = time.time()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # long prompts
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        if self.knobs_endpoint:
            app.router.add_post("/demo/knobs", self.set_knobs)
        return app

    async def set_knobs(self, request: web.Request) -> web.Response:
        changes = await request.json()
        for key in ("first_token_delay", "failure_rate"):
            if key in changes:
                setattr(self.knobs, key, float(changes[key]))
        if "tokens_per_second" in changes:
            self.model.set_rate(float(changes["tokens_per_second"]))
        return web.json_response(asdict(self.knobs))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.model.name})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model.name, "object": "model"}]})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.complete(request, chat=False)

    async def complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        ident = self.log.new_id()
        auth = request.headers.get("Authorization")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self.requests.labels(request.path, "400").inc()
            self.log.write("received", id=ident, path=request.path, authorization=auth)
            self.log.write("refused", id=ident, status=400)
            return web.json_response({"error": {"message": "body must be a JSON object"}}, status=400)
        self.log.write(
            "received",
            id=ident,
            path=request.path,
            model=body.get("model"),
            stream=bool(body.get("stream")),
            authorization=auth,
            prompt_tokens=self.model.prompt_tokens(prompt_of(body, chat)),
        )
        if self.api_key and auth != f"Bearer {self.api_key}":
            self.requests.labels(request.path, "401").inc()
            self.log.write("refused", id=ident, status=401)
            return web.json_response({"error": {"message": "invalid API key"}}, status=401)
        if self.knobs.failure_rate and self._random.random() < self.knobs.failure_rate:
            self.requests.labels(request.path, "500").inc()
            self.log.write("failed", id=ident, status=500)
            return web.json_response({"error": {"message": "injected failure (--failure-rate)"}}, status=500)
        try:
            response = await self.answer(request, chat, body)
        except (asyncio.CancelledError, ConnectionResetError):
            # The client went away (the handler is cancelled, or a write finds the connection closed).
            self.log.write("disconnected", id=ident)
            raise
        self.log.write("done", id=ident, status=response.status)
        return response

    async def answer(self, request: web.Request, chat: bool, body: dict[str, Any]) -> web.StreamResponse:
        route = request.path
        started = time.perf_counter()
        self.active.inc()
        try:
            prompt = prompt_of(body, chat)
            n = int(body.get("max_tokens") or 16)
            words = self.model.words(prompt, n)
            usage = {
                "prompt_tokens": self.model.prompt_tokens(prompt),
                "completion_tokens": n,
                "total_tokens": self.model.prompt_tokens(prompt) + n,
            }
            ident = "cmpl-" + hashlib.sha256(f"{prompt}{time.time_ns()}".encode()).hexdigest()[:12]
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                response = await self.stream(request, chat, ident, words, usage if include_usage else None)
            else:
                await asyncio.sleep(self.knobs.first_token_delay + self.model.delay * n)
                text = " ".join(words)
                choice: dict[str, Any] = (
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": "length"}
                )
                response = web.json_response(
                    {
                        "id": ident,
                        "object": "chat.completion" if chat else "text_completion",
                        "created": int(time.time()),
                        "model": self.model.name,
                        "choices": [choice],
                        "usage": usage,
                    }
                )
            self.tokens.labels(self.model.name).inc(n)
            self.prompt.labels(self.model.name).inc(usage["prompt_tokens"])
            self.requests.labels(route, "200").inc()
            self.latency.labels(route).observe(time.perf_counter() - started)
            return response
        finally:
            self.active.dec()

    async def stream(
        self, request: web.Request, chat: bool, ident: str, words: list[str], usage: dict[str, int] | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
            payload = {"id": ident, "object": kind, "created": int(time.time()), "model": self.model.name}
            payload["choices"] = choices
            payload.update(extra or {})
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        if self.knobs.first_token_delay:
            await asyncio.sleep(self.knobs.first_token_delay)
        for i, word in enumerate(words):
            if self.model.delay:
                await asyncio.sleep(self.model.delay)
            piece = word if i == 0 else " " + word
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            await response.write(event([{**choice, "finish_reason": None}]))
        last = (
            {"index": 0, "delta": {}, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": "", "finish_reason": "length"}
        )
        await response.write(event([last]))
        if usage is not None:
            await response.write(event([], {"usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def serve(args: argparse.Namespace) -> int:
    request_log = RequestLog(args.request_log)
    server = Server(
        FakeModel(args.model, args.tokens_per_second),
        Knobs(args.first_token_delay, args.failure_rate),
        request_log,
        args.api_key,
        args.knobs,
        args.seed,
    )
    # handler_cancellation: a client that goes away cancels its request (and the log says so).
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=1, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    port = runner.addresses[0][1]
    print(f"demo inference server: model {args.model} on http://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        if args.exit_after:
            try:
                await asyncio.wait_for(stop.wait(), args.exit_after)
            except TimeoutError:
                print("demo inference server: --exit-after reached, exiting with status 3", flush=True)
                code = 3
        else:
            await stop.wait()
    finally:
        await runner.cleanup()
        request_log.close()
    print("demo inference server: stopped", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", default="demo-llm-1b")
    parser.add_argument("--tokens-per-second", type=float, default=50.0, help="0: answer at once")
    parser.add_argument("--exit-after", type=float, default=0.0, help="exit with status 3 after this many seconds")
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="share of completions answered 500")
    parser.add_argument("--seed", type=int, default=None, help="for --failure-rate")
    parser.add_argument("--api-key", default="", help="require Authorization: Bearer <key>")
    parser.add_argument("--request-log", type=Path, default=None, help="JSON lines: each request and its end")
    parser.add_argument("--knobs", action="store_true", help="accept POST /demo/knobs (tests, benchmarks)")
    args = parser.parse_args(argv)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
