"""Uploads through a flaky link: agent -> FaultProxy -> collector, real processes on 127.0.0.1.

Whatever the link does (slow, dropped, reset, half an answer, 5xx storms, a black hole, answers lost
after the collector stored the batch), every sample the agent acknowledged reaches the collector
exactly once, the agent never stalls for good and never gives up on data it still holds.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.proxy import FAULTS, FaultProxy
from tests.integration.test_pipeline import assert_delivered_exactly
from tests.support import Sender, metric_value, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

TIMEOUT = 2.0  # the agent's uplink.timeout
BACKOFF_MAX = 1.0
UPLINK = {"timeout": TIMEOUT, "backoff_min": 0.1, "backoff_max": BACKOFF_MAX, "batch_interval": 0.1}
BUFFER = {"budget_bytes": "256MiB"}


def failures(agent_url: str, reason: str) -> float:
    return metric_value(agent_url, "backhaul_uplink_failures_total", f'reason="{reason}"')


def duplicate_batches(collector_url: str) -> float:
    return metric_value(collector_url, "backhaul_collector_batches_total", 'outcome="duplicate"')


def assert_nothing_lost_at_the_agent(agent_url: str) -> None:
    assert metric_value(agent_url, "backhaul_buffer_evicted_samples_total") == 0
    assert metric_value(agent_url, "backhaul_buffer_expired_samples_total") == 0
    assert metric_value(agent_url, "backhaul_uplink_rejected_samples_total") == 0


def test_every_fault_of_the_link_in_turn_then_mixed(start_collector, start_agent):
    collector = start_collector()
    # in the mixed period about a third of the connections pass, so data moves between the faults
    with FaultProxy(collector.url, delay=1.0, seed=3, mixed=("pass",) * 4 + FAULTS) as proxy:
        agent = start_agent(proxy.url, uplink=UPLINK, buffer=BUFFER)
        sender = Sender(agent.url, series=100, interval=0.05)
        sender.start()
        time.sleep(1.0)
        assert proxy.connections.get("pass", 0) >= 1, "nothing uploaded before the faults began"
        acked_before_faults = len(sender.acked)
        for mode in FAULTS:
            proxy.mode = mode
            time.sleep(2.5 if mode == "black_hole" else 2)
        before_mixed = proxy.connections
        proxy.mode = "mixed"
        time.sleep(7)
        in_mixed = {m: n - before_mixed.get(m, 0) for m, n in proxy.connections.items()}

        proxy.mode = "pass"
        healed = time.monotonic()
        acked_while_faulty = len(sender.acked) - acked_before_faults
        time.sleep(1)
        sender.stop()
        # No stall: a black-holed attempt still in flight ends at the agent's timeout, then one backoff.
        wait_until(
            lambda: metric_value(agent.url, "backhaul_buffer_samples") == 0,
            TIMEOUT + BACKOFF_MAX + 6,
            "the backlog to drain once the link is healthy",
        )
        drained_after = time.monotonic() - healed

        assert acked_while_faulty > 0, "the agent stopped acknowledging while the link was bad"
        assert sender.refused == []
        assert_delivered_exactly(sender, collector.url, timeout=10)
        assert_nothing_lost_at_the_agent(agent.url)

        seen = proxy.connections
        assert all(seen.get(mode, 0) >= 1 for mode in FAULTS), f"some fault never happened: {seen}"
        assert proxy.errors == []
        # stored, but the agent never heard so: the re-sent batch is recognised, not stored again
        assert duplicate_batches(collector.url) >= 1
        assert metric_value(collector.url, "backhaul_collector_device_duplicate_samples_total") == 0
        reasons = {r: failures(agent.url, r) for r in ("timeout", "connection", "http_500", "http_502", "http_503")}
        assert reasons["timeout"] >= 1, reasons  # black_hole
        assert reasons["connection"] >= 1, reasons  # drop, reset, half_response, reply_lost
        assert reasons["http_500"] + reasons["http_502"] + reasons["http_503"] >= 1, reasons  # error_storm
        assert sum(n for m, n in in_mixed.items() if m != "pass") >= 3, in_mixed
        print(f"\nconnections by mode: {seen}, of them in the mixed period: {in_mixed}")
        print(f"forwarded: {proxy.forwarded}\nagent failures: {reasons}")
        print(f"duplicate batches: {duplicate_batches(collector.url)}; drained {drained_after:.1f} s after healing")


def test_black_hole_ends_at_the_agents_timeout(start_collector, start_agent):
    collector = start_collector()
    with FaultProxy(collector.url, mode="black_hole") as proxy:
        agent = start_agent(proxy.url, uplink=UPLINK, buffer=BUFFER)
        sender = Sender(agent.url, series=50)
        sender.start()
        wait_until(lambda: proxy.open_connections >= 1, 5, "a request swallowed by the black hole")
        swallowed = time.monotonic()
        time.sleep(0.3)
        proxy.mode = "pass"
        wait_until(lambda: proxy.forwarded.get("pass", 0) >= 1, TIMEOUT + BACKOFF_MAX + 2, "an upload after it")
        recovered = time.monotonic() - swallowed
        sender.stop()
        assert_delivered_exactly(sender, collector.url, timeout=10)
        assert failures(agent.url, "timeout") >= 1
        # the agent gave up on the swallowed request at its timeout, not later
        assert TIMEOUT * 0.8 <= recovered <= TIMEOUT + BACKOFF_MAX + 1.5, recovered
        wait_until(lambda: proxy.open_connections == 0, 5, "the agent to close the black-holed connection")
        assert_nothing_lost_at_the_agent(agent.url)


def test_reply_lost_after_the_collector_stored_is_not_stored_twice(start_collector, start_agent):
    collector = start_collector()
    with FaultProxy(collector.url, mode="reply_lost") as proxy:
        agent = start_agent(proxy.url, uplink=UPLINK, buffer=BUFFER)
        sender = Sender(agent.url, series=50)
        sender.start()
        wait_until(lambda: proxy.forwarded.get("reply_lost", 0) >= 3, 10, "three batches stored, answers lost")
        stored = metric_value(collector.url, "backhaul_collector_device_batches_total", 'device="dev-1"')
        assert stored == 1, "the agent sent another batch before the first was acknowledged"
        proxy.mode = "pass"
        time.sleep(0.5)
        sender.stop()
        assert_delivered_exactly(sender, collector.url, timeout=10)
        assert duplicate_batches(collector.url) >= 3  # two lost repeats, then the one that got through
        assert metric_value(collector.url, "backhaul_collector_device_duplicate_samples_total") == 0
        assert failures(agent.url, "connection") >= 3
        assert_nothing_lost_at_the_agent(agent.url)
