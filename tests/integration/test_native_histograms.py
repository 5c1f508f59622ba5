"""Native histograms end to end on real processes (issue 18).

A small target serves native histograms in the protobuf exposition format. A real Prometheus 2.42
(``--enable-feature=native-histograms``) scrapes it and remote-writes them (``send_native_histograms``)
to the agent; the agent also scrapes the target itself (protobuf first). The agent buffers them as
native histograms (chunk version 3) and uploads them to the collector, which forwards them by
remote write to a second Prometheus with native histograms enabled. Both ends must hold the same
histograms: every raw sample the forwarding Prometheus has equals the scraping Prometheus' sample at
that timestamp, bucket for bucket, and ``histogram_quantile`` gives the same answer at both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agent.ingest.scrape import ACCEPT
from backhaul.wire import exposition
from backhaul.wire.metadata import Metadata
from tests.support import (
    Process,
    buffer_contents,
    exported_samples,
    free_port,
    http,
    metric_value,
    prometheus3,
    start_prometheus,
    stored_contents,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# Prometheus scraping the test's page and sending to the agent (``{sending}``: the remote-write
# section's further settings).
SCRAPING = """
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: native
    static_configs: [{{targets: ['127.0.0.1:{target}']}}]
remote_write:
  - url: http://127.0.0.1:{agent}/api/v1/write
    send_native_histograms: true
    queue_config: {{max_shards: 1, batch_send_deadline: 500ms, min_backoff: 100ms, max_backoff: 1s}}
    {sending}
"""


def scraping_prometheus(
    tmp_path: Path, target_url: str, agent_port: int, sending: str, features: str, binary: str | None = None
) -> tuple[Process, str]:
    """A Prometheus that scrapes ``target_url`` each second and remote-writes to the agent (see SCRAPING)."""
    target = urllib.parse.urlsplit(target_url).netloc.split(":")[1]
    config = SCRAPING.format(target=target, agent=agent_port, sending=sending)
    return start_prometheus(tmp_path, lambda port: config, f"--enable-feature={features}", binary=binary)


RECEIVING = """
global:
  scrape_interval: 1m
"""


def query(url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
    status, body, _ = http("GET", f"{url}/api/v1/query?{urllib.parse.urlencode(params)}")
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def raw_histograms(url: str, selector: str) -> dict[tuple[tuple[str, str], ...], dict[float, Any]]:
    """Raw native-histogram samples: {labels without device_id: {ts: histogram as the API gives it}}."""
    out: dict[tuple[tuple[str, str], ...], dict[float, Any]] = {}
    for series in query(url, f"{selector}[10m]"):
        labels = tuple(sorted((k, v) for k, v in series["metric"].items() if k != "device_id"))
        out[labels] = {ts: h for ts, h in series.get("histograms", [])}
    return out


@pytest.fixture
def native_target(tmp_path: Path):
    port = free_port()
    with (tmp_path / "target.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.native_target", str(port)], cwd=ROOT, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        try:
            return http("GET", url, timeout=1)[0] == 200
        except OSError:
            return False

    wait_until(up, 20, "the native-histogram target")
    yield url
    proc.kill()
    proc.wait(10)


def test_native_histograms_arrive_intact_at_a_forwarding_prometheus(
    native_target, start_collector, start_agent, tmp_path
):
    receiving, receiving_url = start_prometheus(
        tmp_path, lambda port: RECEIVING, "--web.enable-remote-write-receiver", "--enable-feature=native-histograms"
    )
    scraping = None
    try:
        collector = start_collector(
            forward=[
                {
                    "name": "prom",
                    "url": f"{receiving_url}/api/v1/write",
                    "native_histograms": True,
                    "backoff_min": 0.1,
                    "backoff_max": 1,
                }
            ]
        )
        agent_port = free_port()
        agent = start_agent(
            collector.url,
            port=agent_port,
            scrape={"interval": 1, "targets": [{"job": "direct", "url": native_target}]},
        )
        scraping, scraping_url = scraping_prometheus(
            tmp_path, native_target, agent_port, "metadata_config: {send_interval: 2s}", "native-histograms"
        )

        def enough() -> bool:
            got = raw_histograms(receiving_url, 'rpc_duration_seconds{job="native"}')
            direct = raw_histograms(receiving_url, 'rpc_duration_seconds{job="direct"}')
            return len(got) == 2 and min(len(v) for v in got.values()) >= 4 and len(direct) == 2

        wait_until(enough, 60, "native histograms at the forwarding Prometheus", interval=0.5)
        sent = raw_histograms(scraping_url, 'rpc_duration_seconds{job="native"}')
        arrived = raw_histograms(receiving_url, 'rpc_duration_seconds{job="native"}')
        assert set(arrived) == set(sent)
        for labels, samples in arrived.items():
            for ts, h in samples.items():
                assert sent[labels].get(ts) == h, (labels, ts)
            assert all(len(h["buckets"]) >= 4 for h in samples.values())

        # The same quantile at both ends, at the newest timestamp the forwarding Prometheus has.
        newest = max(max(s) for s in arrived.values())
        promql = 'histogram_quantile(0.9, rpc_duration_seconds{job="native",method="get"})'
        (there,) = query(scraping_url, promql, newest)
        (here,) = query(receiving_url, promql, newest)
        assert float(there["value"][1]) == float(here["value"][1]) > 0

        # What the agent scraped itself (protobuf): the same histogram shape, at the forwarding end too.
        direct = raw_histograms(receiving_url, 'rpc_duration_seconds{job="direct",method="put"}')
        (samples,) = direct.values()
        assert all(int(h["count"]) % 4 == 0 and len(h["buckets"]) >= 3 for h in samples.values())
        assert metric_value(agent.url, "backhaul_ingest_histograms_total") > 0
        # The collector's store keeps them (the export cannot show them: its format has no place).
        held = stored_contents(tmp_path / "collector.db")["dev-1"]
        checked = 0
        for labels, (stamps, hs) in held.histograms.items():
            if dict(labels).get("job") != "native":
                continue
            key = tuple(sorted(labels))
            for ms, h in zip(stamps, hs, strict=True):
                api = sent[key].get(ms / 1000)
                assert api is not None and int(api["count"]) == h.count and float(api["sum"]) == h.sum
                populated = sum(1 for _, c in h.positive_buckets() if c) + (1 if h.zero_count else 0)
                assert len(api["buckets"]) == populated
                checked += 1
        assert checked >= 8
        assert held.metadata["rpc_duration_seconds"] == Metadata("histogram", "RPC latency.", "")
    finally:
        if scraping is not None:
            scraping.kill()
        receiving.kill()


def raw_floats(url: str, selector: str) -> dict[tuple[tuple[str, str], ...], dict[int, float]]:
    out: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
    for series in query(url, f"{selector}[10m]"):
        labels = tuple(sorted(series["metric"].items()))
        out[labels] = {round(ts * 1000): float(v) for ts, v in series.get("values", [])}
    return out


def test_prometheus_3_sending_remote_write_2_0(native_target, start_collector, start_agent, tmp_path):
    """Debian sid's Prometheus 3.5 sends Remote-Write 2.0 (symbols, metadata, native histograms) to the
    agent; floats arrive at the collector and histograms at a forwarding Prometheus 2.42 as sent."""
    binary = prometheus3()
    receiving, receiving_url = start_prometheus(
        tmp_path, lambda port: RECEIVING, "--web.enable-remote-write-receiver", "--enable-feature=native-histograms"
    )
    sending = None
    try:
        forward = {"name": "prom", "url": f"{receiving_url}/api/v1/write", "native_histograms": True}
        collector = start_collector(forward=[{**forward, "backoff_min": 0.1, "backoff_max": 1}])
        agent_port = free_port()
        agent = start_agent(collector.url, port=agent_port)
        sending, sending_url = scraping_prometheus(
            tmp_path,
            native_target,
            agent_port,
            "protobuf_message: io.prometheus.write.v2.Request",
            "native-histograms,metadata-wal-records",
            binary,
        )

        def enough() -> bool:
            got = raw_histograms(receiving_url, 'rpc_duration_seconds{job="native"}')
            return len(got) == 2 and min(len(v) for v in got.values()) >= 4

        wait_until(enough, 90, "histograms sent as 2.0 at the forwarding Prometheus", interval=0.5)
        assert metric_value(agent.url, "backhaul_ingest_remote_write_v2_requests_total") > 0
        assert metric_value(agent.url, "backhaul_ingest_requests_total", 'code="400"') in (None, 0)
        sent = raw_histograms(sending_url, 'rpc_duration_seconds{job="native"}')
        arrived = raw_histograms(receiving_url, 'rpc_duration_seconds{job="native"}')
        assert set(arrived) == set(sent)
        for labels, samples in arrived.items():
            for ts, h in samples.items():
                assert sent[labels].get(ts) == h, (labels, ts)

        # Float samples (the counter and the scrape's own series) at the collector, exactly as sent.
        sent_floats = raw_floats(sending_url, '{job="native",__name__=~"rpc_total|up"}')
        stored = exported_samples(collector.url, '{job="native",__name__=~"rpc_total|up"}')
        assert set(stored) == set(sent_floats)
        for labels, values in stored.items():
            assert len(values) >= 3
            for ms, v in values.items():
                assert sent_floats[labels].get(ms) == v, (labels, ms)
    finally:
        if sending is not None:
            sending.kill()
        receiving.kill()


def test_scraping_a_go_target_in_protobuf_gives_the_series_its_text_page_gives(start_agent, tmp_path):
    """Prometheus' own /metrics (client_golang) answers the agent's scrape in protobuf: the series are
    the ones its text page has, ``le`` and ``quantile`` written the same way, so a target keeps its
    series whichever format it answers in."""
    prom, prom_url = start_prometheus(tmp_path, lambda port: RECEIVING)
    try:
        agent = start_agent(None, scrape={"interval": 0.5, "targets": [{"job": "go", "url": f"{prom_url}/metrics"}]})
        wait_until(
            lambda: metric_value(agent.url, "backhaul_scrapes_total", 'job="go",outcome="ok"') >= 2, 30, "scrapes"
        )
        status, page, headers = http("GET", f"{prom_url}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        # what the agent asked for, and got
        _, _, headers = http("GET", f"{prom_url}/metrics", headers={"Accept": ACCEPT})
        assert exposition.is_protobuf(headers["Content-Type"])
        assert agent.proc.stop() == 0
    finally:
        prom.kill()
    held = buffer_contents(tmp_path / "agent.db")
    scraped = {lb for lb in held.series if dict(lb)["job"] == "go"}
    instance = urllib.parse.urlsplit(prom_url).netloc
    text: set[tuple[tuple[str, str], ...]] = set()
    for family in parse_text(page.decode()):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            pairs = {"__name__": sample.name, **{k: v for k, v in sample.labels.items() if v}}
            text.add(tuple(sorted({**pairs, "job": "go", "instance": instance}.items())))
    # Series come and go between scrapes (a handler's first request); the bulk must be the same.
    assert len(text & scraped) >= 0.95 * len(text), sorted(text - scraped)[:10]
    buckets = {
        dict(lb)["le"] for lb in scraped if dict(lb)["__name__"] == "prometheus_http_request_duration_seconds_bucket"
    }
    assert buckets and buckets <= {dict(lb)["le"] for lb in text if "le" in dict(lb)}
    assert held.metadata["go_goroutines"].type == "gauge"
