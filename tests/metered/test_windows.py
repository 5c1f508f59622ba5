"""Upload windows on a real agent whose clock libfaketime puts 20 s before a window opens: nothing but
alerts leaves (counted on the wire) until it opens, then the backlog drains."""

from __future__ import annotations

import math
import time

import pytest

from tests.metered.conftest import ALERTS, BATCHES, Rig, alert_listed, noisy, push_all, trigger
from tests.support import exported_samples, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_nothing_but_alerts_leaves_outside_the_window_and_the_backlog_drains_when_it_opens(rig: Rig) -> None:
    now = time.time()
    agent_start = (math.floor(now / 60) + 1) * 60 + 40  # hh:mm:40 by the agent's clock
    window_minute = (int(agent_start // 60) + 1) % 60
    proxy = rig.proxy()
    agent = rig.agent(
        proxy,
        uplink={"windows": [f"{window_minute} * * * *"], "budget_timezone": "UTC"},
        clock_offset=agent_start - now,
    )
    pushed = push_all(agent.url, noisy(200, int(now * 1000) - 600_000, 120), together=10)
    assert agent.blocked() == "window"
    assert 0 < agent.metric("backhaul_uplink_next_window_seconds") <= 20
    trigger(agent.url)
    wait_until(lambda: alert_listed(rig.collector.url), 10, "the alert, outside the window")
    assert proxy.total(ALERTS) > 0
    opens = agent_start + 20 - (agent_start - now)  # our clock
    while time.time() < opens - 1:
        assert proxy.total(BATCHES) == 0, "bulk data left outside the window"
        time.sleep(0.2)

    def delivered() -> int:
        return sum(len(v) for v in exported_samples(rig.collector.url, '{__name__="noise"}').values())

    wait_until(lambda: delivered() >= pushed, 40, "the backlog, once the window opened", interval=0.5)
    assert time.time() >= opens - 1  # not before
    assert agent.blocked() is None and agent.metric("backhaul_uplink_next_window_seconds") == 0
    health = agent.health()["uplink"]
    assert health["window_ends_ms"] == (agent_start + 80) * 1000 and health["next_window_ms"] > 0
