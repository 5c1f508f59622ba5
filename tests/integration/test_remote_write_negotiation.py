"""Remote-write content negotiation on real processes: the ``proto=`` parameter of Content-Type picks
the message; one that the receiver does not take is a 415, never a 204 with nothing stored.

Before this was checked, a Remote-Write 2.0 body was parsed as 1.0 (where its fields are unknown),
decoded as an empty request and answered 204: a sender configured for 2.0 believed every sample
delivered while nothing was stored (issue 12 finding 14, issue 18)."""

from __future__ import annotations

import time

import pytest

from backhaul.wire import remote_write as rw
from backhaul.wire import remote_write_v2 as v2
from tests.support import TOKEN, exported_samples, http, metric_value

pytestmark = [pytest.mark.integration]

V1 = "application/x-protobuf"
V1_NAMED = "application/x-protobuf;proto=prometheus.WriteRequest"
V1_QUOTED = 'Application/X-Protobuf ; proto="prometheus.WriteRequest"'
V2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request"
UNKNOWN = "application/x-protobuf;proto=io.prometheus.write.v3.Request"


def series(name: str):
    now = int(time.time() * 1000)
    return {(("__name__", name), ("job", "negotiation")): ([now - 1000, now], [1.0, 2.0])}


def headers(content_type: str, **extra: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Content-Encoding": "snappy", **extra}


REFUSED = [
    (V2, "io.prometheus.write.v2.Request"),
    (UNKNOWN, "no such message"),
    (V1 + ";proto=a;proto=b", "twice"),
]


# Both take 2.0 (tests/integration/test_agent_remote_write_v2.py); the rest they refuse.
AGENT_REFUSED = REFUSED[1:]


def test_agent_answers_415_for_a_message_it_does_not_take_and_stores_nothing(start_agent):
    agent = start_agent(None)
    url = f"{agent.url}/api/v1/write"
    for content_type, reason in AGENT_REFUSED:
        status, text, _ = http("POST", url, v2.encode(series("sent_as_v2"))[0], headers(content_type))
        assert status == 415, (content_type, status, text)
        assert reason in text.decode()
    assert metric_value(agent.url, "backhaul_ingest_requests_total", 'code="415"') == len(AGENT_REFUSED)
    # A 2.0 body labelled as 1.0 would parse as an empty 1.0 request: refused, not acknowledged.
    status, text, _ = http("POST", url, v2.encode(series("sent_as_v2"))[0], headers(V1))
    assert status == 400 and "io.prometheus.write.v2.Request" in text.decode()
    assert metric_value(agent.url, "backhaul_ingest_samples_total") == 0

    for i, content_type in enumerate((V1, V1_NAMED, V1_QUOTED)):
        status, text, _ = http("POST", url, rw.encode(series(f"sent_as_v1_{i}"))[0], headers(content_type))
        assert status == 204, (content_type, text)
    assert metric_value(agent.url, "backhaul_ingest_samples_total") == 6
    assert metric_value(agent.url, "backhaul_buffer_samples") == 6
    status, text, answer = http("POST", url, v2.encode(series("sent_as_v2"))[0], headers(V2))
    assert status == 204 and answer[v2.SAMPLES_WRITTEN] == "2", text
    assert metric_value(agent.url, "backhaul_buffer_samples") == 8
    assert agent.proc.popen is not None and agent.proc.popen.poll() is None


def test_collector_answers_415_for_a_message_it_does_not_take_and_stores_nothing(start_collector):
    collector = start_collector()
    url = f"{collector.url}/api/v1/write"
    auth = f"Bearer {TOKEN}"
    for content_type, reason in AGENT_REFUSED:
        body = v2.encode(series("sent_as_v2"))[0]
        status, text, _ = http("POST", url, body, headers(content_type, Authorization=auth))
        assert status == 415, (content_type, status, text)
        assert reason in text.decode()
    status, text, _ = http("POST", url, v2.encode(series("sent_as_v2"))[0], headers(V1, Authorization=auth))
    assert status == 400 and "io.prometheus.write.v2.Request" in text.decode()
    assert exported_samples(collector.url, '{job="negotiation"}') == {}

    for i, content_type in enumerate((V1, V1_NAMED, V1_QUOTED)):
        sent = series(f"sent_as_v1_{i}")
        status, text, _ = http("POST", url, rw.encode(sent)[0], headers(content_type, Authorization=auth))
        assert status == 204, (content_type, text)
    got = exported_samples(collector.url, '{job="negotiation"}')
    assert sorted(dict(labels)["__name__"] for labels in got) == ["sent_as_v1_0", "sent_as_v1_1", "sent_as_v1_2"]
    assert metric_value(collector.url, "backhaul_collector_device_received_samples_total", 'device="dev-1"') == 6
    status, text, answer = http("POST", url, v2.encode(series("sent_as_v2"))[0], headers(V2, Authorization=auth))
    assert status == 204 and answer[v2.SAMPLES_WRITTEN] == "2", text
    assert len(exported_samples(collector.url, '{job="negotiation"}')) == 4
