"""Samples pushed into a real agent reach real time-series databases — through the collector's
forwarders, or straight from the agent — and come back from PromQL exactly as they were sent."""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trustme

from backhaul.wire.series import SeriesMap
from tests.conftest import Running
from tests.forward.conftest import Samples, Tsdb
from tests.support import TlsFront, exported_samples, http, metric_value, push, wait_until

pytestmark = [pytest.mark.integration]

STEP_MS = 15_000


def aligned_now() -> int:
    return int(time.time() * 1000) // 60_000 * 60_000


def make_series(job: str, series: int, start_ms: int, points: int) -> SeriesMap:
    """``points`` samples per series, one per query step, with values a float holds exactly."""
    return {
        (("__name__", f"fwd_metric_{i % 5}"), ("job", job), ("series", str(i))): (
            [start_ms + k * STEP_MS for k in range(points)],
            [i * 1000 + k + (i % 8) / 8 for k in range(points)],
        )
        for i in range(series)
    }


def as_stored(*parts: SeriesMap, device: str = "dev-1") -> Samples:
    """What a database should hold: every series with the device label the collector adds."""
    out: Samples = {}
    for part in parts:
        for labels, (stamps, values) in part.items():
            key = tuple(sorted((*labels, ("device_id", device))))
            out.setdefault(key, {}).update(zip(stamps, values, strict=True))
    return out


def assert_holds(db: Tsdb, job: str, expected: Samples, timeout: float = 30) -> None:
    """PromQL query_range over the whole span gives back exactly ``expected`` (and VM's raw export too)."""
    start = min(min(points) for points in expected.values())
    end = max(max(points) for points in expected.values())

    def got() -> Samples:
        return db.query_range(f'{{job="{job}"}}', start, end, STEP_MS // 1000)

    try:
        wait_until(lambda: got() == expected, timeout, f"{db.kind} to hold every sample", 0.3)
    except AssertionError:
        have = got()
        missing = sum(len(p.keys() - have.get(k, {}).keys()) for k, p in expected.items())
        extra = sum(len(p.keys() - expected.get(k, {}).keys()) for k, p in have.items())
        changed = sum(have[k][t] != v for k, p in expected.items() if k in have for t, v in p.items() if t in have[k])
        # a final read that matches says the database was only slower than the timeout (a loaded machine)
        raise AssertionError(
            f"{db.kind} after {timeout} s: {missing} samples missing, {extra} extra, {changed} changed,"
            f" {len(have)}/{len(expected)} series"
        ) from None
    if db.kind == "victoria-metrics":
        assert db.export(f'{{job="{job}"}}') == expected


def buffer_empty(agent_url: str) -> bool:
    return metric_value(agent_url, "backhaul_buffer_samples") == 0


def forward_to(*dbs: tuple[str, Tsdb], **extra: object) -> list[dict[str, object]]:
    return [
        {
            "name": name,
            "url": db.write_url,
            "max_samples_per_request": 500,
            "backoff_min": 0.1,
            "backoff_max": 0.5,
            "timeout": 5,
            **extra,
        }
        for name, db in dbs
    ]


def test_collector_forwards_everything_through_a_database_outage_and_a_collector_crash(
    victoria_metrics: Callable[[], Tsdb],
    prometheus_receiver: Callable[..., Tsdb],
    start_collector: Callable[..., Running],
    start_agent: Callable[..., Running],
) -> None:
    vm, prom = victoria_metrics(), prometheus_receiver()
    collector = start_collector(forward=forward_to(("vm", vm), ("prom", prom)))
    agent = start_agent(collector.url)
    base = aligned_now() - 40 * 60_000
    before = make_series("fwd", 60, base, 20)
    assert set(push(agent.url, before)) == {204}
    assert_holds(vm, "fwd", as_stored(before))
    assert_holds(prom, "fwd", as_stored(before))

    vm.stop()  # the database goes away; the collector keeps taking batches and spools them
    during = make_series("fwd", 60, base + 20 * STEP_MS, 20)
    assert set(push(agent.url, during)) == {204}
    assert_holds(prom, "fwd", as_stored(before, during))
    wait_until(
        lambda: metric_value(collector.url, "backhaul_collector_forward_queued_samples", 'target="vm"') == 1200,
        20,
        "the outage's samples to wait in vm's spool",
    )
    assert metric_value(collector.url, "backhaul_collector_forward_failures_total", 'reason="connection",target="vm"')
    health = json.loads(http("GET", f"{collector.url}/healthz")[1])["forward"]
    assert health["vm"]["queued_samples"] == 1200 and "Cannot connect" in health["vm"]["last_error"]
    assert health["prom"] == {"queued_samples": 0, "last_error": None}
    collector.proc.kill()  # the collector crashes with a full spool ...
    collector.proc.start()
    collector.proc.wait_healthy(collector.url)
    assert metric_value(collector.url, "backhaul_collector_forward_queued_samples", 'target="vm"') == 1200
    vm.start()  # ... and the database comes back after it
    assert_holds(vm, "fwd", as_stored(before, during))
    wait_until(
        lambda: metric_value(collector.url, "backhaul_collector_forward_queued_entries", 'target="vm"') == 0,
        10,
        "vm's spool to drain",
    )
    # counters restarted with the collector: after the crash only the spooled samples were sent
    assert metric_value(collector.url, "backhaul_collector_forward_sent_samples_total", 'target="vm"') == 1200
    # the collector's own store has the same, so the forwarders added or lost nothing on the way
    assert sum(len(p) for p in exported_samples(collector.url, '{job="fwd"}').values()) == 2400


def test_old_backfill_is_refused_by_stock_prometheus_counted_once_and_accepted_by_vm_and_ooo_prometheus(
    victoria_metrics: Callable[[], Tsdb],
    prometheus_receiver: Callable[..., Tsdb],
    start_collector: Callable[..., Running],
    start_agent: Callable[..., Running],
) -> None:
    vm, prom, ooo = victoria_metrics(), prometheus_receiver(), prometheus_receiver(out_of_order_time_window="1d")
    collector = start_collector(forward=forward_to(("vm", vm), ("prom", prom), ("ooo", ooo)))
    agent = start_agent(collector.url)
    now = aligned_now()
    fresh = make_series("fresh", 10, now - 5 * 60_000, 10)
    assert set(push(agent.url, fresh)) == {204}
    assert_holds(prom, "fresh", as_stored(fresh))  # Prometheus' head block now ends about now

    old = make_series("backfill", 40, now - 3 * 3_600_000, 30)  # three hours old: before the head block
    assert set(push(agent.url, old)) == {204}
    assert_holds(vm, "backfill", as_stored(old))
    assert_holds(ooo, "backfill", as_stored(old))  # the documented remedy for Prometheus works
    rejected = 'reason="out_of_bounds",target="prom"'
    wait_until(
        lambda: metric_value(collector.url, "backhaul_collector_forward_rejected_samples_total", rejected) == 1200,
        20,
        "Prometheus' refusal of all 1,200 old samples to be counted",
    )
    requests = metric_value(collector.url, "backhaul_collector_forward_request_duration_seconds_count", 'target="prom"')
    time.sleep(1.5)  # no loop: nothing more is sent to Prometheus, nothing stays queued
    assert (
        metric_value(collector.url, "backhaul_collector_forward_request_duration_seconds_count", 'target="prom"')
        == requests
    )
    assert metric_value(collector.url, "backhaul_collector_forward_queued_entries", 'target="prom"') == 0
    failures = 'reason="http_400",target="prom"'
    assert metric_value(collector.url, "backhaul_collector_forward_failures_total", failures) == 0
    assert prom.query_range('{job="backfill"}', now - 3 * 3_600_000, now, 15) == {}
    # explained once per batch (not per request, not per retry): the logged counts add up to each sample once
    log = (collector.config.parent / "collector.log").read_text()
    logged = [int(n) for n in re.findall(r"refused (\d+) out_of_bounds samples", log)]
    assert sum(logged) == 1200 and log.count("out_of_order_time_window") == len(logged), log
    # the collector's own store keeps what Prometheus refused
    assert sum(len(p) for p in exported_samples(collector.url, '{job="backfill"}').values()) == 1200


def test_agent_uploads_straight_to_victoria_metrics_and_prometheus_and_keeps_data_through_an_outage(
    victoria_metrics: Callable[[], Tsdb],
    prometheus_receiver: Callable[..., Tsdb],
    start_agent: Callable[..., Running],
) -> None:
    vm, prom = victoria_metrics(), prometheus_receiver()
    series = make_series("direct", 50, aligned_now() - 30 * 60_000, 20)
    agents: dict[str, Running] = {}
    for name, db in (("agent-vm", vm), ("agent-prom", prom)):
        agent = start_agent(
            db.url,  # replaced by uplink.url below; the token it brings is ignored by both databases
            name=name,
            uplink={
                "url": db.write_url,
                "protocol": "remote_write",
                "max_samples_per_request": 100,
                "batch_interval": 0.2,
                "backoff_min": 0.2,
                "backoff_max": 1,
                "timeout": 5,
            },
        )
        assert set(push(agent.url, series)) == {204}
        assert_holds(db, "direct", as_stored(series))
        wait_until(partial(buffer_empty, agent.url), 10, "the agent's buffer to empty")
        assert metric_value(agent.url, "backhaul_uplink_samples_total") == 1000
        agents[name] = agent
    # 1,000 samples at 100 per request: at least ten requests reached VictoriaMetrics
    assert metric_value(vm.url, "vm_http_requests_total", 'path="/api/v1/write", protocol="promremotewrite"') >= 10

    # the buffer's guarantee holds without a collector: while the database is down the agent keeps it all
    agent_vm = agents["agent-vm"].url
    vm.stop()
    later = make_series("direct", 50, aligned_now() - 30 * 60_000 + 20 * STEP_MS, 10)
    assert set(push(agent_vm, later)) == {204}
    wait_until(
        lambda: metric_value(agent_vm, "backhaul_uplink_failures_total", 'reason="connection"') >= 2,
        10,
        "the agent to fail to reach the stopped database",
    )
    assert metric_value(agent_vm, "backhaul_buffer_samples") == 500
    vm.start()
    assert_holds(vm, "direct", as_stored(series, later))
    wait_until(partial(buffer_empty, agent_vm), 10, "the agent's buffer to empty")


def test_agent_keeps_its_data_when_the_database_url_is_wrong(
    victoria_metrics: Callable[[], Tsdb], start_agent: Callable[..., Running]
) -> None:
    vm = victoria_metrics()
    agent = start_agent(
        vm.url,
        uplink={"url": f"{vm.url}/api/v1/wirte", "protocol": "remote_write", "backoff_min": 0.1, "backoff_max": 0.2},
    )
    assert set(push(agent.url, make_series("typo", 10, aligned_now() - 60_000, 3))) == {204}
    wait_until(
        lambda: metric_value(agent.url, "backhaul_uplink_failures_total", 'reason="http_404"') >= 1,
        10,
        "the agent to be told the path is wrong",
    )
    assert metric_value(agent.url, "backhaul_uplink_rejected_samples_total") == 0
    assert metric_value(agent.url, "backhaul_buffer_samples") == 30


def test_collector_forwards_over_tls_with_a_private_ca_and_the_servers_name(
    victoria_metrics: Callable[[], Tsdb],
    start_collector: Callable[..., Running],
    start_agent: Callable[..., Running],
    tmp_path: Path,
) -> None:
    """A ``[[forward]]`` target behind TLS (a database behind its load balancer): ``ca_file`` and
    ``server_name`` as the agent's uplink has them; every sample arrives through the TLS front."""
    vm = victoria_metrics()
    ca = trustme.CA()
    ca_file = tmp_path / "tsdb-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("tsdb.internal.example").configure_cert(context)
    with TlsFront(vm.port, context) as front:
        target = forward_to(("vm", vm), ca_file=str(ca_file), server_name="tsdb.internal.example")
        target[0]["url"] = f"{front.url}{urllib.parse.urlsplit(vm.write_url).path}"
        collector = start_collector(forward=target)
        agent = start_agent(collector.url)
        series = make_series("tls", 20, aligned_now() - 20 * 60_000, 10)
        assert set(push(agent.url, series)) == {204}
        assert_holds(vm, "tls", as_stored(series))
        assert front.connections >= 1
        assert metric_value(collector.url, "backhaul_collector_forward_sent_samples_total", 'target="vm"') == 200
