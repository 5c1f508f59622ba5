"""What the proxy reads from answers as they pass: ``usage`` of JSON answers, tokens and timing of SSE streams.

For SSE streams (``stream: true``): tokens are the final ``usage`` chunk's when the server sends one,
otherwise one per data chunk that carries text; time to first token is request start to the first
chunk carrying a token; tokens per second is the decode phase's rate,
(tokens - 1) / (last token - first token), the rate a user sees.
"""

from __future__ import annotations

import json
from typing import Any

from agent.proxy.metrics import ProxyMetrics

# A "line" longer than this is not SSE after all: stop looking, keep forwarding.
_MAX_LINE = 1024 * 1024


class StreamStats:
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
        if len(self._partial) > _MAX_LINE:
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
            if carries_token(event):
                self.token_chunks += 1
                if self.first_token is None:
                    self.first_token = now
                self.last_token = now


def carries_token(event: dict[str, Any]) -> bool:
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


def count_usage(metrics: ProxyMetrics, route: str, upstream: str, data: bytes) -> None:
    """Token counts of a whole JSON answer."""
    try:
        answer = json.loads(data)
    except ValueError:
        return
    if not isinstance(answer, dict) or not isinstance(answer.get("usage"), dict):
        return
    model = metrics.model(str(answer.get("model") or ""))
    usage = answer["usage"]
    if (prompt := _tokens(usage, "prompt_tokens")) is not None:
        metrics.prompt_tokens.labels(route, model, upstream).inc(prompt)
    if (completion := _tokens(usage, "completion_tokens")) is not None:
        metrics.completion_tokens.labels(route, model, upstream).inc(completion)


def count_stream(metrics: ProxyMetrics, route: str, upstream: str, stats: StreamStats, started: float) -> None:
    """Tokens, time to first token and decode rate of a finished (or broken-off) stream."""
    m = metrics
    usage = stats.usage or {}
    completion = _tokens(usage, "completion_tokens")
    if completion is None:
        completion = stats.token_chunks
    model = m.model(stats.model)
    if (prompt := _tokens(usage, "prompt_tokens")) is not None:
        m.prompt_tokens.labels(route, model, upstream).inc(prompt)
    m.completion_tokens.labels(route, model, upstream).inc(completion)
    if stats.first_token is None or stats.last_token is None:
        return
    m.ttft.labels(route, upstream).observe(stats.first_token - started)
    decode = stats.last_token - stats.first_token
    if completion > 1 and decode > 0:
        m.tokens_per_second.labels(route, upstream).observe((completion - 1) / decode)
