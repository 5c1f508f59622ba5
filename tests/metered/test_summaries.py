"""Summaries when the budget is short, on real processes: the collector first receives each series'
real sample at the end of every interval; once the budget renews (midnight by the agent's clock,
moved there with libfaketime) the full data follows, and the export holds each sample once."""

from __future__ import annotations

import time

import pytest

from backhaul.wire.series import Labels
from tests.metered.conftest import Rig, noisy, push_all
from tests.metered.test_budget import offset_to_before_midnight
from tests.support import exported_samples, read_metrics, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL_MS = 30_000
BUDGET = 64 * 1024


@pytest.mark.timeout(360)
def test_a_short_budget_sends_summaries_first_then_the_full_data_once_it_renews(rig: Rig) -> None:
    proxy = rig.proxy()
    proxy.set_down(True)
    agent = rig.agent(
        proxy,
        uplink={
            "daily_bytes": BUDGET,
            "budget_timezone": "UTC",
            "when_short": "summarise",
            "summary_interval": INTERVAL_MS / 1000,
        },
        clock_offset=offset_to_before_midnight(120, "UTC"),
        # The moved clock only brings midnight near; the samples are stamped by the real one. Left
        # on, correction takes them for the agent's own once the machine's uptime is longer than
        # the time to midnight (the era then reaches back to them) and shifts them by the offset.
        clock={"correct": False},
    )
    start = (int(time.time() * 1000) - 900_000) // INTERVAL_MS * INTERVAL_MS  # ten minutes, 15 minutes ago
    scrapes = list(noisy(100, start, 120, interval_ms=5000, seed=5))
    pushed: dict[tuple[Labels, int], float] = {}
    for scrape in scrapes:
        for labels, (stamps, values) in scrape.items():
            pushed[(labels, stamps[0])] = values[0]
    push_all(agent.url, iter(scrapes), together=12)
    proxy.set_down(False)

    def at_collector() -> dict[tuple[Labels, int], float]:
        found = exported_samples(rig.collector.url, '{__name__="noise"}')
        return {(labels, ts): v for labels, values in found.items() for ts, v in values.items()}

    wait_until(lambda: agent.metric("backhaul_uplink_summary_samples_total") > 0, 60, "a summary acknowledged")
    wait_until(lambda: agent.blocked() == "budget", 60, "the budget spent")
    got = at_collector()
    # every interval's last real sample of every series, with its value
    ends = sorted({ts for (_, ts) in pushed if (ts + 5000) % INTERVAL_MS == 0})
    assert len(ends) == 20
    missing = [(labels, ts) for (labels, ts) in pushed if ts in ends and got.get((labels, ts)) != pushed[(labels, ts)]]
    assert missing == [], f"{len(missing)} interval ends missing, e.g. {missing[:3]}"
    # (how many came as summaries depends on what the batch sealed while the link was down held)
    summarised = agent.metric("backhaul_uplink_summary_samples_total")
    assert len(got) < len(pushed), "the budget carried everything: nothing to summarise"
    assert all(pushed[k] == v for k, v in got.items())  # real samples only

    # midnight: the budget renews, and the full data follows
    wait_until(lambda: len(at_collector()) >= len(pushed), 200, "the full data after midnight", interval=1)
    assert at_collector() == pushed  # each sample once, none invented
    duplicates = read_metrics(rig.collector.url).get(
        'backhaul_collector_device_duplicate_samples_total{device="dev-1"}'
    )
    assert duplicates == summarised  # the summarised samples came twice, and are stored once
