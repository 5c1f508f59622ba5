"""The routing decision and the [proxy.cloud] settings, without processes; the link gate with the proxy in
process between real demo servers (a gate is passed through the constructor, so a fake one fits)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from agent.config import AgentSettings, ProxySettings
from agent.proxy.link import LinkGate
from agent.proxy.routing import Body, Plan, RouteHeaderError, Router, estimated_prompt_tokens, route_header
from agent.proxy.server import InferenceProxy
from agent.proxy.settings import CloudSettings
from tests.inference.conftest import Demo
from tests.support import free_port

CHAT = "/v1/chat/completions"


def body(words: int = 3) -> Body:
    return Body(b'{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % (b"word " * words))


def router(local_down: str | None = None, blocked: str | None = None, **cloud: Any) -> Router:
    settings = CloudSettings(url="http://cloud.example:8080", **cloud)
    return Router(settings, lambda: local_down, FakeGate(blocked))


class FakeGate:
    """A link that says what it is told, and remembers what it was charged."""

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason
        self.counted = 0

    def blocked(self) -> str | None:
        return self.reason

    def count(self, nbytes: int) -> None:
        self.counted += nbytes


def test_the_fake_gate_is_a_link_gate() -> None:
    gate: LinkGate = FakeGate()
    assert gate.blocked() is None


def test_triggers_apply_in_order_and_only_when_enabled() -> None:
    r = router("not running", escalate_on=["down", "too_long", "overloaded", "error"], max_local_prompt_tokens=10)
    assert r.plan("POST", CHAT, None, body(), 0) == Plan(cloud=True, reason="down")
    assert r.plan("POST", CHAT, "cloud", body(), 0) == Plan(cloud=True, reason="requested")
    r = router(None, escalate_on=["too_long", "overloaded"], max_local_prompt_tokens=10, max_local_in_flight=2)
    assert r.plan("POST", CHAT, None, body(100), 5).reason == "too_long"
    assert r.plan("POST", CHAT, None, body(), 2).reason == "overloaded"
    assert r.plan("POST", CHAT, None, body(), 1) == Plan(cloud=False, late=frozenset())
    # without "down" among the triggers a down server is still tried (and "error" may apply)
    r = router("not running", escalate_on=["error", "slow_start"])
    assert r.plan("POST", CHAT, None, body(), 0) == Plan(cloud=False, late=frozenset({"error", "slow_start"}))


def test_only_generating_posts_escalate() -> None:
    r = router("not running")
    assert not r.plan("GET", "/v1/models", None, None, 0).cloud
    assert not r.plan("POST", "/v1/other", None, body(), 0).cloud
    assert not r.plan("GET", "/healthz", "cloud", None, 0).cloud


def test_private_requests_never_escalate_and_opt_in_wins_over_the_rules() -> None:
    r = router("crash loop", private_routes=["/v1/embeddings", "/v1/resp*"])
    plan = r.plan("POST", CHAT, "local-only", body(), 0)
    assert plan == Plan(cloud=False, private=True, refused="private", wanted="down", unavailable="crash loop",
                        late=frozenset())  # fmt: skip
    assert r.plan("POST", "/v1/embeddings", None, body(), 0).refused == "private"
    assert r.plan("POST", "/v1/responses", None, body(), 0).refused == "private"
    assert r.plan("POST", "/v1/embeddings", "allow-cloud", body(), 0) == Plan(cloud=True, reason="down")
    by_default = router("crash loop", private_by_default=True)
    assert by_default.plan("POST", CHAT, None, body(), 0).refused == "private"
    assert by_default.plan("POST", CHAT, "allow-cloud", body(), 0).cloud
    assert by_default.plan("POST", CHAT, "cloud", body(), 0) == Plan(cloud=True, reason="requested")
    # a private request is told why even when "down" is not a trigger
    assert router("not running", escalate_on=[]).plan("POST", CHAT, "local-only", body(), 0).unavailable


def test_the_link_can_refuse_and_respect_budget_false_ignores_it() -> None:
    assert router("not running", blocked="budget").plan("POST", CHAT, None, body(), 0).refused == "budget"
    assert router("not running", blocked="window").refusal(False) == "window"
    assert router("not running", blocked="budget", respect_budget=False).plan("POST", CHAT, None, body(), 0).cloud


def test_without_a_cloud_nothing_is_decided_but_a_cloud_request_is_refused() -> None:
    r = Router(CloudSettings(), lambda: "not running", None)
    assert r.plan("POST", CHAT, None, body(), 0) == Plan(cloud=False)
    assert r.plan("POST", CHAT, "cloud", body(), 0).refused == "no_cloud"


def test_route_header_values() -> None:
    assert route_header(" Local-Only ") == "local-only"
    assert route_header(None) is None
    with pytest.raises(RouteHeaderError, match="not one of"):
        route_header("local")


def test_prompt_estimate_reads_messages_parts_prompts_and_inputs() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a" * 40}, {"type": "image_url"}]}]}
    assert estimated_prompt_tokens(parts) == 10
    assert estimated_prompt_tokens({"prompt": ["abcd", "efgh"]}) == 2
    assert estimated_prompt_tokens({"input": "x" * 9}) == 3
    assert Body(b"[" * 100_000).json() is None  # absurd nesting is no crash


def test_cloud_settings_names_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKHAUL_PROXY__CLOUD__TOKEN", "from-env")
    monkeypatch.setenv("BACKHAUL_PROXY__CLOUD__URL", "https://cloud.example")
    settings = AgentSettings(device_id="dev-1")
    c = settings.proxy.cloud
    assert c.token.get_secret_value() == "from-env" and c.enabled
    assert c.escalate_on == ["down", "error"] and c.respect_budget and not c.private_by_default
    with pytest.raises(ValidationError, match="escalate_on"):
        CloudSettings(escalate_on=["sometimes"])
    with pytest.raises(ValidationError, match="twice"):
        CloudSettings(escalate_on=["down", "down"])
    with pytest.raises(ValidationError, match="path pattern"):
        CloudSettings(private_routes=["v1/embeddings"])
    with pytest.raises(ValidationError, match="client_key needs client_cert"):
        CloudSettings(client_key=__file__)  # a readable file: the pairing is what is refused
    with pytest.raises(ValidationError, match="extra"):
        CloudSettings(escalate=["down"])  # type: ignore[call-arg]


# -- the gate, with the proxy in process between real demo servers --


@pytest.fixture
async def gated() -> AsyncIterator[Callable[..., Any]]:
    proxies: list[InferenceProxy] = []

    async def start(upstream: str, cloud: Demo, gate: FakeGate, **cloud_settings: Any) -> tuple[str, CollectorRegistry]:
        registry = CollectorRegistry()
        settings = ProxySettings(
            enabled=True, port=0, upstream=upstream, cloud=CloudSettings(url=cloud.url, **cloud_settings)
        )
        proxy = InferenceProxy(settings, registry, link=gate)
        await proxy.__aenter__()
        proxies.append(proxy)
        return f"http://127.0.0.1:{proxy.port}", registry

    yield start
    for p in proxies:
        await p.__aexit__(None, None, None)


async def post(url: str, headers: dict[str, str] | None = None, words: int = 3) -> tuple[int, str, dict[str, Any]]:
    chat = {"model": "demo-llm-1b", "messages": [{"role": "user", "content": "word " * words}], "max_tokens": 3}
    async with aiohttp.ClientSession() as session, session.post(f"{url}{CHAT}", json=chat, headers=headers) as resp:
        answer = await resp.json() if resp.content_type == "application/json" else {"text": await resp.text()}
        return resp.status, resp.headers["X-Backhaul-Routed"], answer


def refused(registry: CollectorRegistry, reason: str, trigger: str) -> float:
    labels = {"reason": reason, "trigger": trigger}
    return registry.get_sample_value("backhaul_proxy_escalations_refused_total", labels) or 0.0


async def test_respect_budget_keeps_requests_local_or_answers_503_with_the_reason(
    demo_server: Callable[..., Demo], gated: Callable[..., Any]
) -> None:
    local = demo_server("local")
    cloud = demo_server("cloud", "--model", "cloud-llm-70b")
    gate = FakeGate("budget")
    everything = ["down", "overloaded", "slow_start", "too_long", "error"]
    url, registry = await gated(local.url, cloud, gate, escalate_on=everything, max_local_prompt_tokens=10)
    status, routed, answer = await post(url, words=100)  # too long for the local model, but the budget is spent
    assert (status, routed, answer["model"]) == (200, "local", "demo-llm-1b")
    status, routed, _ = await post(url, {"X-Backhaul-Route": "cloud"})
    assert (status, routed) == (200, "local")
    assert refused(registry, "budget", "too_long") == 1 and refused(registry, "budget", "requested") == 1

    # No local answer at all: a 503 that says why it was not escalated.
    down_url, down_registry = await gated(f"http://127.0.0.1:{free_port()}", cloud, gate, escalate_on=everything)
    status, routed, answer = await post(down_url)
    assert (status, routed) == (503, "local")
    assert answer["error"]["code"] == "budget" and "budget" in answer["error"]["message"]
    assert refused(down_registry, "budget", "error") == 1
    assert cloud.events() == [] and gate.counted == 0  # nothing went over the link

    gate.reason = None  # a new budget: the same request escalates, and the link is charged
    status, routed, answer = await post(down_url)
    assert (status, routed, answer["model"]) == (200, "cloud; reason=error", "cloud-llm-70b")
    sent = down_registry.get_sample_value("backhaul_proxy_cloud_bytes_total", {"direction": "sent"})
    received = down_registry.get_sample_value("backhaul_proxy_cloud_bytes_total", {"direction": "received"})
    assert sent and received and gate.counted == sent + received


async def test_private_by_default_makes_escalation_opt_in(
    demo_server: Callable[..., Demo], gated: Callable[..., Any]
) -> None:
    cloud = demo_server("cloud", "--model", "cloud-llm-70b")
    url, _ = await gated(f"http://127.0.0.1:{free_port()}", cloud, FakeGate(), private_by_default=True)
    status, routed, answer = await post(url)
    assert (status, routed, answer["error"]["code"]) == (503, "local", "private")
    assert cloud.events() == []
    status, routed, _ = await post(url, {"X-Backhaul-Route": "allow-cloud"})
    assert (status, routed) == (200, "cloud; reason=error")
    status, _, _ = await post(url, {"X-Backhaul-Route": "anywhere"})
    assert status == 400
