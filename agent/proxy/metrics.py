"""The proxy's metrics, on the registry it is given (the agent's, so the self-scrape takes them along).

``route`` on the request metrics is the API path (``/v1/chat/completions``, ..., ``other``);
``upstream`` is where the answer came from (``local`` or ``cloud``), the ``route`` of
``backhaul_proxy_routed_requests_total`` — that one name was already taken by the path.
``model`` comes from the answers, so an upstream decides its values: the first ``max_models``
distinct names (cut to 128 characters) keep their own series, any later one is counted as ``other``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Characters of a model name kept as a label value.
_MODEL_CHARS = 128


class ProxyMetrics:
    """Args: registry: where the ``backhaul_proxy_*`` metrics are registered; max_models: distinct
    ``model`` label values kept before the rest become ``other``."""

    def __init__(self, registry: CollectorRegistry, max_models: int = 20) -> None:
        self._max_models = max_models
        self._models: set[str] = set()
        r = registry
        self.duration = Histogram(
            "backhaul_proxy_request_duration_seconds",
            "Inference API requests through the proxy: duration to the last byte, by route, status code and upstream",
            ["route", "code", "upstream"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.in_flight = Gauge("backhaul_proxy_requests_in_flight", "Requests being proxied now", registry=r)
        self.local_in_flight = Gauge(
            "backhaul_proxy_local_requests_in_flight",
            "Requests in flight to the local server (compared with proxy.cloud.max_local_in_flight)",
            registry=r,
        )
        self.upstream_errors = Counter(
            "backhaul_proxy_upstream_errors",
            "Requests an upstream did not answer (connect failure, timeout, reset), by reason and upstream",
            ["reason", "upstream"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "backhaul_proxy_prompt_tokens",
            "Prompt tokens reported by the upstream, by route, model and upstream",
            ["route", "model", "upstream"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "backhaul_proxy_completion_tokens",
            "Completion tokens (usage, or counted in the stream), by route, model and upstream",
            ["route", "model", "upstream"],
            registry=r,
        )
        self.ttft = Histogram(
            "backhaul_proxy_time_to_first_token_seconds",
            "Streamed responses: request start to the first chunk carrying a token, by route and upstream",
            ["route", "upstream"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "backhaul_proxy_tokens_per_second",
            "Streamed responses: decode rate, (tokens - 1) / (last token time - first token time)",
            ["route", "upstream"],
            buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 500, 1000),
            registry=r,
        )
        self.routed = Counter(
            "backhaul_proxy_routed_requests",
            "Answers by route (local, cloud) and reason (cloud: the trigger; local: none, or why it was not escalated)",
            ["route", "reason"],
            registry=r,
        )
        self.refused = Counter(
            "backhaul_proxy_escalations_refused",
            "Escalations wanted but refused, by reason (private, budget, window, no_cloud) and trigger",
            ["reason", "trigger"],
            registry=r,
        )
        self.cloud_bytes = Counter(
            "backhaul_proxy_cloud_bytes",
            "Bytes of escalated requests on the device's link (headers and bodies), by direction (sent, received)",
            ["direction"],
            registry=r,
        )

    def model(self, name: str) -> str:
        """The ``model`` label value for a name an answer gave (bounded cardinality, see the module)."""
        name = name[:_MODEL_CHARS]
        if name in self._models:
            return name
        if len(self._models) >= self._max_models:
            return "other"
        self._models.add(name)
        return name
