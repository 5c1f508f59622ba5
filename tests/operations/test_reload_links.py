"""A reload (SIGHUP) applies the uplink's links, budgets and caps without a restart, on real processes:
a link that keeps its name keeps what it spent, so a budget lowered below that stops it at once and
uploads move to a link the reload added; nothing of it is reported as needing a restart."""

from __future__ import annotations

import json
import signal
import tomllib
from collections.abc import Callable
from typing import Any

from tests.conftest import Running
from tests.support import free_port, http, parse_metrics, toml_text
from tests.support import wait_until as until


def page(url: str) -> dict[str, float]:
    status, body, _ = http("GET", f"{url}/metrics")
    assert status == 200
    return parse_metrics(body.decode())


def spent(url: str, link: str) -> float:
    return page(url).get(f'backhaul_uplink_link_spent_bytes{{link="{link}",period="day"}}', 0.0)


def reload_with(agent: Running, change: Callable[[dict[str, Any]], None]) -> None:
    config = tomllib.loads(agent.config.read_text())
    change(config)
    agent.config.write_text(toml_text(config))
    agent.proc.ps().send_signal(signal.SIGHUP)


def test_a_reload_applies_new_links_and_budgets_and_keeps_what_was_spent(
    start_collector: Callable[..., Running], start_agent: Callable[..., Running]
) -> None:
    collector = start_collector()
    port = free_port()
    agent = start_agent(
        collector.url,
        port=port,
        uplink={"links": [{"name": "primary", "daily_bytes": "100MB"}]},
        scrape={"interval": 0.3, "targets": [{"job": "agent", "url": f"http://127.0.0.1:{port}/metrics"}]},
    )
    until(lambda: spent(agent.url, "primary") > 20_000, 30, "uploads over the primary link")
    before = spent(agent.url, "primary")

    def lower_and_add(config: dict[str, Any]) -> None:
        # The primary's budget below what it spent today; a backup link with a cap.
        config["uplink"]["links"] = [
            {"name": "primary", "daily_bytes": int(before // 2)},
            {"name": "backup", "daily_bytes": "100MB", "max_bytes_per_second": "1MB"},
        ]

    reload_with(agent, lower_and_add)
    until(lambda: page(agent.url).get('backhaul_uplink_link_active{link="backup"}') == 1.0, 20, "the switch")
    until(lambda: spent(agent.url, "backup") > 10_000, 30, "uploads over the backup link")
    m = page(agent.url)
    assert m['backhaul_uplink_link_switches_total{from="primary",to="backup"}'] == 1.0
    assert m["backhaul_config_last_reload_successful"] == 1.0
    assert m['backhaul_uplink_link_spent_bytes{link="primary",period="day"}'] >= before  # kept, not reset
    assert m['backhaul_uplink_budget_bytes{period="day"}'] == 100_000_000  # the gauges follow the link in use
    assert m["backhaul_uplink_max_bytes_per_second"] == 1_000_000
    status, body, _ = http("GET", f"{agent.url}/api/v1/status")
    assert status == 200
    state = json.loads(body)
    assert "uplink.links" in state["config"]["applied"] and not state["config"]["needs_restart"]
    links = {link["name"]: link for link in state["uplink"]["links"]}
    assert links["backup"]["in_use"] and links["primary"]["why_not"] == "budget"
    log = agent.proc.log.read_text()
    assert "link switch primary → backup (primary: budget)" in log
    assert "uplink links, caps, budgets and windows reloaded" in log
