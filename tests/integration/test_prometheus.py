"""A real Prometheus (Debian's 2.42) scrapes targets and remote-writes to the agent; the agent uploads
to a real collector. Every sample Prometheus sent must come back from the export API with its exact
timestamp and value, through an agent SIGKILL and a collector outage on the way."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from backhaul.wire.series import Labels
from tests.support import (
    exported_samples,
    http,
    same_value,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def prometheus_gauge(url: str, name: str) -> float | None:
    _, body, _ = http("GET", f"{url}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def prometheus_samples(url: str, until_ms: int) -> dict[Labels, dict[int, float]]:
    """Raw samples Prometheus holds up to ``until_ms``, as {labels: {ts_ms: value}}."""
    query = urllib.parse.urlencode({"query": '{__name__=~".+"}[10m]', "time": f"{until_ms / 1000:.3f}"})
    status, body, _ = http("GET", f"{url}/api/v1/query?{query}")
    assert status == 200, body
    out: dict[Labels, dict[int, float]] = {}
    for series in json.loads(body)["data"]["result"]:
        labels = tuple(sorted(series["metric"].items()))
        out[labels] = {round(ts * 1000): float(v) for ts, v in series["values"]}
    return out


def test_real_prometheus_remote_write_arrives_intact(prometheus, start_collector, start_agent):
    collector = start_collector()
    agent = start_agent(collector.url)
    agent_port = int(agent.url.rsplit(":", 1)[1])
    prom = prometheus(agent_port)

    time.sleep(4)
    agent.proc.kill()  # Prometheus retries while the agent is down
    time.sleep(1.5)
    agent.proc.start()
    agent.proc.wait_healthy(agent.url)
    time.sleep(2)
    collector.proc.stop()  # uplink outage: the agent buffers
    time.sleep(3)
    collector.proc.start()
    collector.proc.wait_healthy(collector.url)
    time.sleep(3)

    highest = wait_until(
        lambda: prometheus_gauge(prom, "prometheus_remote_storage_queue_highest_sent_timestamp_seconds"),
        20,
        "prometheus to report what it sent",
    )
    cutoff = int(highest * 1000)
    expected = {
        labels: {t: v for t, v in points.items() if t <= cutoff}
        for labels, points in prometheus_samples(prom, cutoff).items()
    }
    expected = {k: v for k, v in expected.items() if v}
    total = sum(len(v) for v in expected.values())
    assert total > 1000, f"Prometheus sent only {total} samples: the test would prove little"
    assert any(("job", "backhaul-agent") in labels for labels in expected)

    def arrived():
        got = exported_samples(collector.url)
        got = {k: {t: v for t, v in pts.items() if t <= cutoff} for k, pts in got.items()}
        missing = sum(1 for k, pts in expected.items() for t in pts if t not in got.get(k, {}))
        return (got, missing) if missing == 0 else None

    try:
        got, _ = wait_until(arrived, 60, "every sample Prometheus sent to reach the collector", 1)
    except AssertionError:
        got = exported_samples(collector.url)
        missing = [(k, t) for k, pts in expected.items() for t in pts if t not in got.get(k, {})]
        raise AssertionError(f"{len(missing)} of {total} samples never arrived, e.g. {missing[:3]}") from None
    wrong = [(k, t) for k, pts in expected.items() for t, v in pts.items() if not same_value(got[k][t], v)]
    assert not wrong, f"values changed on the way: {wrong[:3]}"
    extra = [(k, t) for k, pts in got.items() for t in pts if t not in expected.get(k, {})]
    assert not extra, f"samples Prometheus never had: {extra[:3]}"
