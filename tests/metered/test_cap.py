"""The bandwidth cap, measured on the wire by a byte-counting proxy between a real agent and collector."""

from __future__ import annotations

import time

import pytest

from tests.metered.conftest import ALERTS, BATCHES, Rig, alert_listed, noisy, push_all, trigger
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAP = 40 * 1024


@pytest.mark.timeout(300)
def test_the_cap_holds_over_a_minute_and_an_alert_still_arrives_within_a_second(rig: Rig) -> None:
    proxy = rig.proxy()
    proxy.set_down(True)  # the link is down while the backlog builds
    agent = rig.agent(proxy, uplink={"max_bytes_per_second": CAP})
    # over 4 MiB of chunks: 2,000 series of random values, 340 scrapes (~7 bytes per sample compacted)
    push_all(agent.url, noisy(2000, int(time.time() * 1000) - 3_600_000, 340, interval_ms=5000), together=10)
    wait_until(lambda: agent.health()["buffer"]["bytes"] >= 4 * 1024**2, 60, "a 4 MiB backlog")
    backlog = agent.health()["buffer"]["bytes"]

    proxy.set_down(False)
    wait_until(lambda: proxy.total(BATCHES) > 0, 30, "the drain to start")
    start = time.monotonic()
    time.sleep(20)
    # an alert in the middle of the capped drain: its own lane, its own connection, never paced
    pushed = trigger(agent.url)
    wait_until(lambda: alert_listed(rig.collector.url), 5, "the alert at the collector", interval=0.02)
    alert_seconds = time.monotonic() - pushed
    time.sleep(max(0.0, start + 75 - time.monotonic()))

    sent = proxy.sent_between(start + 10, start + 70, BATCHES)
    rate = sent / 60
    assert abs(rate - CAP) <= 0.1 * CAP, f"{rate:.0f} bytes/s on the wire over a minute, cap {CAP}"
    assert alert_seconds < 1.0, f"the alert took {alert_seconds:.2f} s"
    assert proxy.total(ALERTS) > 0  # it went over the same link
    assert agent.health()["buffer"]["bytes"] < backlog  # and the drain went on meanwhile
    page_cap = agent.metric("backhaul_uplink_blocked", 'reason="cap"')
    assert page_cap == 1.0 and agent.metric("backhaul_uplink_allowed") == 1.0
