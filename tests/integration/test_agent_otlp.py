"""OTLP/HTTP metrics on the agent's listener, end to end (issue 18).

A separate process instruments itself with the real OpenTelemetry SDK and sends with the real
``opentelemetry-exporter-otlp-proto-http`` (protobuf, gzip) to the agent's ``POST /v1/metrics``; the
series arrive at the collector with the names, labels and values OpenTelemetry's Prometheus
compatibility specification gives them. OTLP/JSON with delta sums is a partial success; malformed
bodies are 4xx with the reason as a ``google.rpc.Status``, and nothing else is lost.
"""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backhaul.wire import protodesc
from backhaul.wire.metadata import Metadata
from backhaul.wire.protodesc import Field, T
from backhaul.wire.series import Labels
from tests.otlp_example import official_style_json
from tests.support import exported_samples, http, metric_value, stored_contents, wait_until

pytestmark = [pytest.mark.integration]

PROTOBUF = "application/x-protobuf"
ROOT = Path(__file__).resolve().parents[2]
IDENTITY = {"instance": "dev-7", "job": "edge/infer", "otel_scope_name": "vllm.metrics", "otel_scope_version": "0.6.0"}
Status = protodesc.build(
    "test_rpc_status.proto",
    "google.rpc",
    {"Status": [Field("code", 1, T.TYPE_INT32), Field("message", 2, T.TYPE_STRING)]},
)["Status"]


Got = dict[Labels, dict[int, float]]


def by_name(got: Got, name: str, **labels: str) -> float:
    want = {"__name__": name, **labels}
    found = [v for lb, v in got.items() if all(dict(lb).get(k) == x for k, x in want.items())]
    assert len(found) == 1, (name, labels, sorted(got))
    (value,) = found[0].values()
    return float(value)


def test_the_real_sdk_and_exporter_send_through_the_agent_to_the_collector(start_collector, start_agent, tmp_path):
    collector = start_collector()
    agent = start_agent(collector.url)
    sender = subprocess.run(
        [sys.executable, "-m", "tests.integration.otlp_sender", f"{agent.url}/v1/metrics"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert sender.returncode == 0, sender.stderr.decode()[-2000:]
    assert metric_value(agent.url, "backhaul_ingest_otlp_requests_total", 'code="200"') == 1

    def arrived() -> Got | None:
        got = exported_samples(collector.url, '{job="edge/infer"}')
        return got if len([lb for lb in got if dict(lb)["__name__"] != "target_info"]) >= 9 else None

    got = wait_until(arrived, 30, "the OTLP series at the collector")
    llama = {**IDENTITY, "model": "llama"}
    assert by_name(got, "requests_total", http_status_code="200", **llama) == 3.0
    assert by_name(got, "gpu_temperature_celsius", gpu="0", **IDENTITY) == 61.5
    buckets = {
        dict(lb)["le"]: v[next(iter(v))]
        for lb, v in got.items()
        if dict(lb)["__name__"] == "request_duration_seconds_bucket"
    }
    assert buckets == {"0.1": 1.0, "0.5": 3.0, "1": 3.0, "5": 4.0, "+Inf": 5.0}
    assert by_name(got, "request_duration_seconds_count", **llama) == 5.0
    assert math.isclose(by_name(got, "request_duration_seconds_sum", **llama), 12.41)
    info = by_name(got, "target_info", host_name="jetson-1", instance="dev-7", job="edge/infer")
    assert info == 1.0
    # The exponential histogram is a native histogram in the agent's buffer, on the wire and in the
    # collector's store; metadata per family beside it.
    assert metric_value(agent.url, "backhaul_ingest_histograms_total") == 1
    held = stored_contents(tmp_path / "collector.db")["dev-1"]
    (ttft,) = [lb for lb in held.histograms if dict(lb)["__name__"] == "time_to_first_token_milliseconds"]
    assert dict(ttft)["job"] == "edge/infer" and dict(ttft)["instance"] == "dev-7"
    (h,) = held.histograms[ttft][1]
    assert h.count == 6 and math.isclose(h.sum, 709.5) and sum(c for _, c in h.positive_buckets()) == 6
    assert held.metadata["requests_total"] == Metadata("counter", "Requests served.", "")
    assert held.metadata["request_duration_seconds"] == Metadata("histogram", "Latency.", "seconds")


def test_json_partial_success_and_malformed_bodies(start_collector, start_agent):
    collector = start_collector()
    agent = start_agent(collector.url)
    url = f"{agent.url}/v1/metrics"
    now_ns = time.time_ns()

    status, text, headers = http(
        "POST",
        url,
        gzip.compress(official_style_json(now_ns)),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert status == 200, text
    assert headers["Content-Type"].startswith("application/json")
    answer = json.loads(text)
    assert int(answer["partialSuccess"]["rejectedDataPoints"]) == 2
    assert "otlp_delta_temporality (2)" in answer["partialSuccess"]["errorMessage"]
    assert metric_value(agent.url, "backhaul_ingest_otlp_rejected_points_total", 'reason="otlp_delta_temporality"') == 2

    bad = [
        (b"\xff\xff\xff", {"Content-Type": PROTOBUF}, 400, "not an ExportMetricsServiceRequest"),
        (b"{not json", {"Content-Type": "application/json"}, 400, "not JSON"),
        (
            b"\x1f\x8b\x08\x00garbage",
            {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
            400,
            "gzip",
        ),
        (b"{}", {"Content-Type": "text/plain"}, 415, "Content-Type must be"),
        (b"{}", {"Content-Type": "application/json", "Content-Encoding": "br"}, 415, "Content-Encoding"),
    ]
    for body, hdrs, want, reason in bad:
        status, text, headers = http("POST", url, body, hdrs)
        assert status == want, (hdrs, status, text)
        if headers["Content-Type"].startswith("application/json"):
            message = json.loads(text)["message"]
        else:
            message = Status.FromString(text).message
        assert reason in message, (reason, message)

    got = wait_until(
        lambda: exported_samples(collector.url, '{job="my.service"}') or None, 30, "the gauge at the collector"
    )
    assert [dict(lb)["__name__"] for lb in got] == ["my_gauge_ratio"]
    assert list(next(iter(got.values())).values()) == [10.0]
    assert metric_value(agent.url, "backhaul_buffer_dropped_samples_total") in (0, None)
