"""The proxy and the uplink share one metered link (issues 13 and 17): escalated requests count against
the uplink's budget, and ``proxy.cloud.respect_budget`` refuses escalation once it is spent or while
no upload window is open. A real agent, a demo server playing the cloud model, a client over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Running
from tests.inference.conftest import Demo
from tests.support import free_port, http, metric_value

pytestmark = pytest.mark.integration

CLOUD_MODEL = "cloud-llm-70b"
CHAT = "/v1/chat/completions"


def ask(proxy: str) -> tuple[int, str, dict[str, Any]]:
    body = json.dumps({"model": "local", "messages": [{"role": "user", "content": "status?"}], "max_tokens": 4})
    status, answer, headers = http(
        "POST", f"{proxy}{CHAT}", body.encode(), {"Content-Type": "application/json", "X-Backhaul-Route": "cloud"}
    )
    return status, headers.get("X-Backhaul-Routed", ""), json.loads(answer)


def start(agent_with: Callable[..., Running], demo_server: Callable[..., Demo], **uplink: Any) -> tuple[Running, str]:
    cloud = demo_server("cloud", "--model", CLOUD_MODEL, "--tokens-per-second", "0")
    proxy_port = free_port()
    agent = agent_with(
        None,
        uplink={"url": "http://127.0.0.1:9/api/v1/batches", "token": "t", **uplink},
        proxy={
            "enabled": True,
            "port": proxy_port,
            "upstream": f"http://127.0.0.1:{free_port()}",  # nothing there
            "cloud": {"url": cloud.url},
        },
    )
    return agent, f"http://127.0.0.1:{proxy_port}"


def test_escalated_requests_spend_the_uplinks_budget_and_stop_when_it_is_spent(
    agent_with: Callable[..., Running], demo_server: Callable[..., Demo]
) -> None:
    agent, proxy = start(agent_with, demo_server, daily_bytes=3000)
    status, routed, _ = ask(proxy)
    assert status == 200 and routed.startswith("cloud")
    spent = metric_value(agent.url, "backhaul_uplink_budget_spent_bytes", 'period="day"')
    assert spent == metric_value(agent.url, "backhaul_proxy_link_bytes_total") > 500
    while (answer := ask(proxy))[0] == 200:  # until the budget is spent
        assert metric_value(agent.url, "backhaul_uplink_budget_spent_bytes", 'period="day"') <= 3000
    status, _, error = answer
    assert status == 503 and error["error"]["code"] == "budget", error


def test_no_escalation_while_no_upload_window_is_open(
    agent_with: Callable[..., Running], demo_server: Callable[..., Demo]
) -> None:
    other_month = time.gmtime().tm_mon % 12 + 1
    agent, proxy = start(agent_with, demo_server, windows=[f"* * * {other_month} *"])
    status, _, error = ask(proxy)
    assert status == 503 and error["error"]["code"] == "window", error
    assert metric_value(agent.url, "backhaul_uplink_budget_spent_bytes", 'period="day"') == 0
