"""The whole path with real processes: agent and collector started from their console scripts,
remote write and batches over real HTTP on 127.0.0.1, real SQLite files, real SIGKILLs."""

from __future__ import annotations

import random
import time

import pytest

from backhaul.wire.series import SeriesMap
from tests.support import DelayProxy, Sender, exported_samples, metric_value, push, wait_until

pytestmark = [pytest.mark.integration]


def assert_delivered_exactly(sender: Sender, collector_url: str, timeout: float = 60) -> None:
    """Every acknowledged sample is at the collector with its value, and nothing else is."""

    def complete():
        got = exported_samples(collector_url, '{job="sender"}')
        flat = {(labels, t): v for labels, points in got.items() for t, v in points.items()}
        return flat if len(flat) >= len(sender.acked) else None

    flat = wait_until(complete, timeout, f"{len(sender.acked)} acknowledged samples at the collector", 0.5)
    missing = sender.acked.keys() - flat.keys()
    extra = flat.keys() - sender.acked.keys() - sender.unacknowledged
    assert not missing, f"{len(missing)} acknowledged samples lost, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} samples nobody acknowledged, e.g. {sorted(extra)[:3]}"
    wrong = [k for k, v in sender.acked.items() if flat[k] != v]
    assert not wrong, f"{len(wrong)} values changed on the way, e.g. {wrong[:3]}"
    stored = metric_value(collector_url, "backhaul_collector_device_received_samples_total", 'device="dev-1"')
    assert stored == len(flat), "the collector stored some sample twice"


def test_samples_pushed_to_the_agent_arrive_at_the_collector(start_collector, start_agent):
    collector = start_collector()
    agent = start_agent(collector.url)
    now = int(time.time() * 1000)
    series: SeriesMap = {
        (("__name__", "inference_requests_total"), ("model", f"m{i}")): ([now - 10_000, now], [i, i + 1.5])
        for i in range(300)
    }
    assert set(push(agent.url, series)) == {204}
    wait_until(
        lambda: len(exported_samples(collector.url, '{__name__="inference_requests_total"}')) == 300,
        20,
        "all 300 series",
    )
    got = exported_samples(collector.url, '{__name__="inference_requests_total"}')
    assert got == {labels: dict(zip(ts, vals, strict=True)) for labels, (ts, vals) in series.items()}
    # the collector tells devices apart by a label it adds
    line = exported_samples(collector.url, '{__name__="inference_requests_total",model="m1"}', drop=())
    assert ("device_id", "dev-1") in next(iter(line))
    assert metric_value(agent.url, "backhaul_uplink_samples_total") == 600


def test_outage_backlog_arrives_complete_without_duplicates(start_collector, start_agent):
    collector = start_collector()
    agent = start_agent(collector.url)
    sender = Sender(agent.url)
    sender.start()
    time.sleep(1.5)
    collector.proc.stop()  # the uplink goes down; the agent keeps acknowledging
    acked_at_outage = len(sender.acked)
    time.sleep(3)
    assert len(sender.acked) > acked_at_outage, "agent stopped acknowledging during the outage"
    assert metric_value(agent.url, "backhaul_buffer_samples") > 0
    assert metric_value(agent.url, "backhaul_uplink_failures_total", 'reason="connection"') > 0
    collector.proc.start()
    collector.proc.wait_healthy(collector.url)
    time.sleep(1.5)
    sender.stop()
    assert_delivered_exactly(sender, collector.url)
    assert sender.refused == []


def test_agent_sigkilled_again_and_again_loses_nothing_acknowledged(start_collector, start_agent):
    """SIGKILL at random moments while a sender pushes and the uploader drains: during ingest, group
    commit, sealing and upload. Nothing acknowledged may be lost, nothing stored twice."""
    collector = start_collector()
    agent = start_agent(collector.url, uplink={"batch_max_bytes": "64KiB"}, buffer={"budget_bytes": "16MiB"})
    sender = Sender(agent.url, series=300, interval=0.01)
    sender.start()
    rng = random.Random(7)
    for _ in range(8):
        time.sleep(rng.uniform(0.2, 1.0))
        agent.proc.kill()
        time.sleep(rng.uniform(0.0, 0.3))
        agent.proc.start()
        agent.proc.wait_healthy(agent.url)
    time.sleep(1)
    sender.stop()
    assert sender.retries > 0, "no request was ever interrupted: the test did not test anything"
    assert_delivered_exactly(sender, collector.url)
    assert metric_value(agent.url, "backhaul_buffer_evicted_samples_total") == 0


def test_agent_killed_while_the_collector_reply_is_in_flight(start_collector, start_agent):
    """The collector stored the batch, the agent died before hearing so: after restart it re-sends the
    same batch and the collector recognises it instead of storing it twice."""
    collector = start_collector()
    with DelayProxy(collector.url, delay=3.0) as proxy:
        agent = start_agent(proxy.url, uplink={"timeout": 20})
        sender = Sender(agent.url, series=100)
        sender.start()
        time.sleep(0.5)
        sender.stop()
        wait_until(lambda: proxy.forwarded >= 1, 10, "a batch forwarded to the collector")
        agent.proc.kill()  # the reply is still held by the proxy
        proxy.delay = 0
        agent.proc.start()
        agent.proc.wait_healthy(agent.url)
        assert_delivered_exactly(sender, collector.url)
        wait_until(
            lambda: metric_value(collector.url, "backhaul_collector_batches_total", 'outcome="duplicate"') >= 1,
            10,
            "the re-sent batch to be recognised as a duplicate",
        )
        assert metric_value(collector.url, "backhaul_collector_device_duplicate_batches_total", 'device="dev-1"') >= 1


def test_full_buffer_evicts_oldest_counts_it_and_keeps_accepting(start_collector, start_agent, tmp_path):
    collector_port_unused = "http://127.0.0.1:9"  # nothing listens on the discard port: uplink down
    agent = start_agent(collector_port_unused, buffer={"budget_bytes": "1MiB"}, uplink={"batch_max_bytes": "64KiB"})
    sender = Sender(agent.url, series=2000, interval=0)
    sender.start()
    # A deadline, not a figure: a loaded machine takes well over a minute to fill the megabyte.
    wait_until(lambda: metric_value(agent.url, "backhaul_buffer_evicted_samples_total") > 0, 180, "evictions")
    time.sleep(0.5)
    sender.stop()
    assert sender.refused == []
    assert metric_value(agent.url, "backhaul_buffer_bytes") <= 1024 * 1024
    evicted = metric_value(agent.url, "backhaul_buffer_evicted_samples_total")
    held = metric_value(agent.url, "backhaul_buffer_samples")
    assert held + evicted == len(sender.acked), "acknowledged = buffered + evicted must hold exactly"

    # Connect a collector: what arrives plus what was evicted is what was acknowledged, and the
    # eviction count reaches the collector too.
    agent.proc.stop()
    collector = start_collector()
    agent = start_agent(
        collector.url,
        port=int(agent.url.rsplit(":", 1)[1]),
        buffer={"budget_bytes": "1MiB"},
        uplink={"batch_max_bytes": "64KiB"},
    )
    arrived = wait_until(
        lambda: (
            (n := metric_value(collector.url, "backhaul_collector_device_received_samples_total", 'device="dev-1"'))
            >= held
            and n
        ),
        60,
        "the retained backlog",
    )
    assert arrived == held
    flat = {(labels, t) for labels, points in exported_samples(collector.url, '{job="sender"}').items() for t in points}
    assert flat <= sender.acked.keys()
    wait_until(
        lambda: (
            metric_value(
                collector.url, "backhaul_collector_device_reported_lost_samples", 'cause="evicted",device="dev-1"'
            )
            == evicted
        ),
        20,
        "the eviction report",
    )


def test_samples_past_max_age_are_expired_and_counted(start_agent):
    agent = start_agent("http://127.0.0.1:9", buffer={"max_age": 3, "maintenance_interval": 0.5})
    now = int(time.time() * 1000)
    series: SeriesMap = {(("__name__", "short_lived"), ("i", str(i))): ([now - 1000], [1.0]) for i in range(50)}
    assert push(agent.url, series) == [204]
    assert metric_value(agent.url, "backhaul_buffer_samples") == 50
    wait_until(lambda: metric_value(agent.url, "backhaul_buffer_expired_samples_total") == 50, 15, "expiry")
    assert metric_value(agent.url, "backhaul_buffer_samples") == 0
