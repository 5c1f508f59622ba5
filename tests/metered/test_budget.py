"""A daily budget, counted on the wire (headers included) by a byte-counting proxy: bulk uploads stop
at it, a SIGKILL and a simulated power cut do not reset it, and it renews at midnight in the
configured time zone. The agent's clock is moved with libfaketime to shortly before that midnight."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.metered.conftest import ALERTS, BATCHES, Rig, alert_listed, noisy, push_all, trigger
from tests.support import READ_HEADERS, exported_samples, http, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]

ZONE = "America/Sao_Paulo"  # UTC-3 all year: its midnight is not ours
BUDGET = 256 * 1024
CAP = 16 * 1024  # 80 % to 100 % of the budget takes 3 s: several evaluations of the alert rules


def offset_to_before_midnight(seconds: float, zone: str = ZONE) -> float:
    """The clock offset that puts a process ``seconds`` before the next midnight in ``zone``."""
    now = datetime.now(ZoneInfo(zone))
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), ZoneInfo(zone))
    return midnight.timestamp() - seconds - time.time()


@pytest.mark.timeout(540)
def test_a_daily_budget_stops_uploads_survives_kill_and_power_cut_and_renews_at_midnight(rig: Rig) -> None:
    proxy = rig.proxy()
    proxy.set_down(True)
    disk = rig.lossy_disk("disk")
    # Midnight (by the agent's clock) must come after the kill and the power cut, however slow the machine.
    offset = offset_to_before_midnight(240)
    agent = rig.agent(
        proxy,
        # capped so that the budget takes seconds to spend: UplinkBudgetNearlySpent has time to fire
        uplink={
            "daily_bytes": BUDGET,
            "budget_timezone": ZONE,
            "drain_order": "oldest_first",
            "max_bytes_per_second": CAP,
        },
        clock_offset=offset,
        disk=disk,
    )
    start_ms = int(time.time() * 1000) - 3_600_000
    pushed = push_all(agent.url, noisy(500, start_ms, 200), together=20)  # ~0.7 MB: well over the budget
    wait_until(lambda: agent.health()["buffer"]["samples"] >= pushed, 20, "the backlog committed")

    proxy.set_down(False)
    wait_until(lambda: agent.blocked() == "budget", 60, "bulk uploads held by the budget")
    spent = proxy.total(BATCHES)
    assert 0.8 * BUDGET <= spent <= BUDGET, f"{spent} bytes on the wire for a budget of {BUDGET}"
    metered = agent.metric("backhaul_uplink_budget_spent_bytes", 'period="day"')
    assert abs(metered - spent) <= 0.02 * spent, f"the agent counted {metered}, the wire carried {spent}"
    assert agent.metric("backhaul_uplink_allowed") == 0
    assert agent.health()["uplink"]["blocked"] == "budget"

    # alerts still go: they have a budget of their own
    trigger(agent.url)
    wait_until(lambda: alert_listed(rig.collector.url), 10, "the alert while the budget is spent")
    assert proxy.total(ALERTS) > 0
    wait_until(
        lambda: any(a["rule"] == "UplinkBudgetSpent" for a in alerts_firing(rig.collector.url)), 10,
        "the UplinkBudgetSpent alert",
    )  # fmt: skip
    # on the way there it was nearly spent (fired, then resolved by the spent budget)
    assert "UplinkBudgetNearlySpent" in {a["rule"] for a in alerts_listed(rig.collector.url)}
    # the batch headers told the collector what the link spent; the fleet page says why it is held
    link = fleet_link(rig.collector.url, "dev-1")
    assert link["budget_day"] == BUDGET and 0 < link["spent_day"] <= BUDGET, link
    assert link["blocked"] == "budget", link

    # SIGKILL, then a power cut: nothing more goes, and the count is what it was
    agent.proc.kill()
    agent.restart()
    time.sleep(3)
    assert agent.blocked() == "budget" and proxy.total(BATCHES) == spent
    assert agent.metric("backhaul_uplink_budget_spent_bytes", 'period="day"') >= metered
    agent.proc.kill()
    assert disk.power_cut() is not None
    agent.restart()
    time.sleep(3)
    assert agent.blocked() == "budget" and proxy.total(BATCHES) == spent
    assert agent.metric("backhaul_uplink_budget_spent_bytes", 'period="day"') >= metered

    # midnight in Sao Paulo (by the agent's clock): a new budget, and the backlog goes on
    wait_until(lambda: proxy.total(BATCHES) > spent, 300, "uploads after midnight", interval=0.5)
    assert agent.metric("backhaul_uplink_budget_spent_bytes", 'period="day"') <= BUDGET
    wait_until(
        lambda: (
            sum(len(v) for v in exported_samples(rig.collector.url, '{__name__="noise"}').values()) >= pushed
            or agent.blocked() == "budget"
        ),
        60,
        "the rest of the backlog, or the new day's budget spent",
    )


def alerts_firing(collector_url: str) -> list[dict[str, Any]]:
    return alerts_listed(collector_url, "?state=firing")


def alerts_listed(collector_url: str, query: str = "") -> list[dict[str, Any]]:
    _, body, _ = http("GET", f"{collector_url}{ALERTS}{query}", headers=READ_HEADERS)
    return list(json.loads(body)["alerts"])


def fleet_link(collector_url: str, device: str) -> dict[str, Any]:
    _, body, _ = http("GET", f"{collector_url}/api/v1/fleet", headers=READ_HEADERS)
    (found,) = [d for d in json.loads(body)["devices"] if d["device"] == device]
    return dict(found["uplink"])
