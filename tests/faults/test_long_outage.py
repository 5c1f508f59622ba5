"""A simulated 24-hour outage at 1,000 samples/s (86.4 million samples), with the clock injected.

The buffer is driven through its own API with a simulated clock — one chunk per simulated minute, as
group commits of a minute of 1 s scrapes would add up to, expiry and compaction every 10 minutes as
the agent's maintenance job does, the store closed and reopened (an agent restart) every 6 hours —
then the device stays off for 2 more hours, and a real agent process drains what is left to a real
collector. Checked: the byte budget and the age limit hold throughout, restarts keep the backlog,
acknowledged = delivered + evicted + expired exactly, and everything retained arrives."""

from __future__ import annotations

import itertools
import math
import random
import time

import pytest

from agent.buffer.store import BufferStore
from backhaul.wire.series import SeriesMap
from tests.support import metric_value, wait_until

# 86.4 M samples through the buffer take a minute or more on 2 cores: more than the default 120 s when busy.
pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

SERIES = 1000  # one sample per series per second: 1,000 samples/s
MINUTE_MS = 60_000
BUDGET = 4 * 1024 * 1024
MAX_AGE_MS = 3 * 3_600_000


def minute_of_samples(start_ms: int, minute: int) -> SeriesMap:
    """A minute of 1 s scrapes: half constants, a fifth counters rising by random steps, the rest
    noisy gauges with two decimals — about what an exporter sends (perfectly regular data would
    compress to next to nothing and never fill the budget)."""
    rng = random.Random(minute)
    stamps = [start_ms + k * 1000 for k in range(60)]
    out: SeriesMap = {}
    for i in range(SERIES):
        labels = (("__name__", f"edge_metric_{i % 40}"), ("instance", "edge-1"), ("series", str(i)))
        if i % 10 < 5:
            values = [float(i)] * 60
        elif i % 10 < 7:
            rate = i % 7 + 1
            values = list(map(float, itertools.accumulate(rng.randrange(2 * rate + 1) for _ in range(60))))
            values = [v + minute * 60 * rate for v in values]
        else:
            phase = minute * 60 + i
            values = [round(50 + 40 * math.sin((phase + k) / 300) + rng.gauss(0, 0.5), 2) for k in range(60)]
        out[labels] = (stamps, values)
    return out


def test_a_day_long_outage_stays_in_budget_and_drains(tmp_path, start_collector, start_agent):
    path = tmp_path / "agent.db"  # where start_agent keeps the buffer
    real_now = int(time.time() * 1000)
    start = real_now - 26 * 3_600_000  # 24 h of outage with data, then 2 h powered off, ending now
    store = BufferStore(path, BUDGET, "FULL", target_samples=100_000)
    store.open()
    acknowledged = 0
    restarts = 0
    try:
        for minute in range(24 * 60):
            now = start + (minute + 1) * MINUTE_MS
            store.append(minute_of_samples(start + minute * MINUTE_MS, minute), 0, now)
            acknowledged += SERIES * 60
            assert store.totals.bytes <= BUDGET
            if minute % 10 == 9:
                store.expire(now - MAX_AGE_MS)
                store.compact(now)
                oldest = store.totals.oldest_ts
                assert oldest is not None and oldest >= now - MAX_AGE_MS - 10 * MINUTE_MS
            if minute % 360 == 359:  # an agent restart every 6 h: the backlog must survive it
                before = (store.totals.samples, store.totals.bytes, store.counters())
                store.close()
                store = BufferStore(path, BUDGET, "FULL", target_samples=100_000)
                store.open()
                restarts += 1
                assert (store.totals.samples, store.totals.bytes, store.counters()) == before
                assert store.recovery is None
        evicted = store.counters()["evicted_samples"]
        assert evicted > 0, "the budget never bound: the test proves nothing about eviction"
    finally:
        store.close()
    assert restarts == 4
    assert acknowledged == 86_400_000

    # Powered off for two more hours, then the agent starts (real clock = simulated end) and the
    # link is back: expiry removes what passed max_age meanwhile, the rest drains.
    collector = start_collector()
    agent_started = time.monotonic()
    agent = start_agent(
        collector.url,
        buffer={"budget_bytes": BUDGET, "max_age": MAX_AGE_MS // 1000},
        uplink={"batch_max_bytes": "1MiB"},
    )
    expired = wait_until(
        lambda: metric_value(
            collector.url, "backhaul_collector_device_reported_lost_samples", 'cause="expired",device="dev-1"'
        ),
        60,
        "the expiry at start to be reported",
    )

    def drained():
        stored = metric_value(collector.url, "backhaul_collector_device_received_samples_total", 'device="dev-1"')
        return stored if metric_value(agent.url, "backhaul_buffer_samples") == 0 and stored else None

    delivered = wait_until(drained, 120, "the backlog to drain", interval=1)
    print(
        f"\nlong outage: acknowledged {acknowledged:,}, evicted {evicted:,}, expired {expired:,.0f}, "
        f"delivered {delivered:,.0f} within {time.monotonic() - agent_started:.1f} s of the agent's start"
    )
    reported_evicted = metric_value(
        collector.url, "backhaul_collector_device_reported_lost_samples", 'cause="evicted",device="dev-1"'
    )
    assert reported_evicted == evicted
    assert delivered + evicted + expired == acknowledged, (delivered, evicted, expired)
    assert delivered > 0 and expired > 0
