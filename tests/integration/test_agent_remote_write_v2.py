"""The agent's ``/api/v1/write`` takes Remote-Write 2.0 and native histograms into its buffer (issue 18).

Requests are built as the 2.0 spec's message description builds them (the protobuf message, not
backhaul's encoder): symbols interned once with "" first, a counter with metadata, an exemplar and a
created timestamp, a native histogram with its metadata. What the agent holds is read from its
buffer file after it stopped: float samples, histograms bucket for bucket, metadata per family.
"""

from __future__ import annotations

import time
from typing import Any

import cramjam
import pytest

from backhaul.wire import remote_write as rw
from backhaul.wire import remote_write_v2 as v2
from backhaul.wire.histogram import Histogram
from backhaul.wire.metadata import Metadata
from tests.support import TOKEN, buffer_contents, exported_samples, http, metric_value, stored_contents
from tests.unit.test_remote_write_v2 import spec_example

pytestmark = [pytest.mark.integration]

V1 = "application/x-protobuf"
V2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request"
COUNTER = (("__name__", "http_requests_total"), ("job", "api"))
LATENCY = (("__name__", "http_request_duration_seconds"), ("job", "api"))


def headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Content-Encoding": "snappy", "X-Prometheus-Remote-Write-Version": "2.0.0"}


def body(request: Any) -> bytes:
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def spec_request(now: int) -> Any:
    """The request the spec's message description builds (tests/unit/test_remote_write_v2.py), at ``now``."""
    return spec_example(now)


def test_remote_write_2_0_is_stored_and_answered_with_the_written_counts(start_agent, tmp_path):
    agent = start_agent(None)
    url = f"{agent.url}/api/v1/write"
    now = int(time.time() * 1000)
    status, text, answer = http("POST", url, body(spec_request(now)), headers(V2))
    assert status == 204, text
    assert answer[v2.SAMPLES_WRITTEN] == "2"
    assert answer[v2.HISTOGRAMS_WRITTEN] == "1"
    assert answer[v2.EXEMPLARS_WRITTEN] == "0"  # counted, not stored
    assert metric_value(agent.url, "backhaul_ingest_exemplars_total") == 1
    assert metric_value(agent.url, "backhaul_ingest_histograms_total") == 1
    assert metric_value(agent.url, "backhaul_buffer_samples") == 3

    # Remote write 1.0 with native histograms (field 4) and metadata in a request of its own.
    float_h = Histogram(count=2.0, sum=1.5, schema=0, positive_spans=((0, 2),), positive=(1.0, 1.0), is_float=True)
    gauge = (("__name__", "queue_depth"), ("job", "api"))
    v1_body = rw.encode({gauge: ([now], [7.0])}, histograms={(("__name__", "rpc_seconds"),): ([now], [float_h])})[0]
    status, text, answer = http("POST", url, v1_body, headers(V1))
    assert status == 204, text
    assert v2.SAMPLES_WRITTEN not in answer
    meta_only = rw.encode({}, metadata={"queue_depth": Metadata("gauge", "Jobs waiting.", "")})[0]
    status, text, _ = http("POST", url, meta_only, headers(V1))
    assert status == 204, text
    # Metadata that came alone rides with the next samples (no chunk holds metadata alone).
    status, text, _ = http("POST", url, rw.encode({gauge: ([now + 1], [8.0])})[0], headers(V1))
    assert status == 204, text
    assert agent.proc.stop() == 0

    held = buffer_contents(tmp_path / "agent.db")
    assert held.series[COUNTER] == ([now - 15_000, now], [10.0, 12.0])
    assert held.series[gauge] == ([now, now + 1], [7.0, 8.0])
    assert held.histograms[LATENCY] == (
        [now],
        [Histogram(count=3, sum=0.75, schema=2, positive_spans=((-1, 2),), positive=(1, 1))],
    )
    assert held.histograms[(("__name__", "rpc_seconds"),)] == ([now], [float_h])
    assert held.metadata == {
        "http_requests_total": Metadata("counter", "Requests served.", ""),
        "http_request_duration_seconds": Metadata("histogram", "Latency.", "seconds"),
        "queue_depth": Metadata("gauge", "Jobs waiting.", ""),
    }


def _bad_symbols0(r: Any) -> None:
    r.symbols[0] = "x"


def _out_of_range(r: Any) -> None:
    r.timeseries[0].labels_refs[1] = 99


def _unsorted(r: Any) -> None:
    r.timeseries[0].samples[0].timestamp, r.timeseries[0].samples[1].timestamp = (
        r.timeseries[0].samples[1].timestamp,
        r.timeseries[0].samples[0].timestamp,
    )


BAD = [
    (_bad_symbols0, "symbols[0] must be the empty string"),
    (_out_of_range, "refers to symbol 99"),
    (_unsorted, "not in timestamp order"),
    (lambda r: r.timeseries[1].histograms[0].__setattr__("count_int", 1), "buckets hold 3"),
]


def test_malformed_2_0_is_a_400_with_the_reason_and_stores_nothing(start_agent):
    agent = start_agent(None)
    url = f"{agent.url}/api/v1/write"
    now = int(time.time() * 1000)
    for change, reason in BAD:
        request = spec_request(now)
        change(request)
        status, text, _ = http("POST", url, body(request), headers(V2))
        assert status == 400, (reason, status, text)
        assert reason in text.decode(), text
    status, text, _ = http("POST", url, body(spec_request(now)), headers(V1))
    assert status == 400 and "io.prometheus.write.v2.Request" in text.decode()
    assert metric_value(agent.url, "backhaul_buffer_samples") == 0
    assert metric_value(agent.url, "backhaul_ingest_requests_total", 'code="400"') == len(BAD) + 1
    # and the agent still takes good requests
    status, text, _ = http("POST", url, body(spec_request(now)), headers(V2))
    assert status == 204, text
    assert metric_value(agent.url, "backhaul_buffer_samples") == 3


def test_the_collector_takes_2_0_too(start_collector, tmp_path):
    collector = start_collector()
    url = f"{collector.url}/api/v1/write"
    now = int(time.time() * 1000)
    auth = {**headers(V2), "Authorization": f"Bearer {TOKEN}"}
    status, text, answer = http("POST", url, body(spec_request(now)), auth)
    assert status == 204, text
    assert (answer[v2.SAMPLES_WRITTEN], answer[v2.HISTOGRAMS_WRITTEN]) == ("2", "1")
    for change, reason in BAD:
        request = spec_request(now)
        change(request)
        status, text, _ = http("POST", url, body(request), auth)
        assert status == 400 and reason in text.decode(), (reason, status, text)
    got = exported_samples(collector.url, '{job="api"}')
    assert got == {COUNTER: {now - 15_000: 10.0, now: 12.0}}
    held = stored_contents(tmp_path / "collector.db")["dev-1"]
    assert held.histograms[LATENCY] == (
        [now],
        [Histogram(count=3, sum=0.75, schema=2, positive_spans=((-1, 2),), positive=(1, 1))],
    )
    assert held.metadata["http_request_duration_seconds"] == Metadata("histogram", "Latency.", "seconds")
