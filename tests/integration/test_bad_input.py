"""Malformed requests get a clear 4xx with a reason, and the process keeps serving everyone else."""

from __future__ import annotations

import json
import time

import cramjam
import pytest
import zstandard

from backhaul.wire import batch as batchfmt
from backhaul.wire import remote_write as rw
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap
from tests.support import READ_HEADERS, TOKEN, exported_samples, http, metric_value, push

pytestmark = [pytest.mark.integration]

PROTO = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}


def good_series():
    now = int(time.time() * 1000)
    return {(("__name__", "still_ok"),): ([now], [1.0])}


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"\x0cnot snappy at all", PROTO, 400, "snappy"),
        (bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff\xff\xff")), PROTO, 400, "protobuf"),
        (rw.encode(good_series())[0], {"Content-Type": "application/json"}, 415, "Content-Type"),
        (rw.encode(good_series())[0], {**PROTO, "Content-Encoding": "gzip"}, 415, "Content-Encoding"),
        (bytes([0x80, 0x80, 0x80, 0x80, 0x04]) + b"\0" * 20, PROTO, 413, "decompressed"),  # claims 1 GiB
        (b"\0" * (300 * 1024), PROTO, 413, "limit"),
    ],
    ids=["bad-snappy", "bad-protobuf", "content-type", "encoding", "snappy-bomb", "oversized"],
)
def test_agent_refuses_bad_remote_write_and_keeps_serving(start_agent, body, headers, status, reason):
    agent = start_agent(None, ingest={"max_request_bytes": 256 * 1024})
    got, text, _ = http("POST", f"{agent.url}/api/v1/write", body, headers)
    assert got == status
    assert reason in text.decode()
    assert push(agent.url, good_series()) == [204]
    assert metric_value(agent.url, "backhaul_ingest_samples_total") == 1
    assert metric_value(agent.url, "backhaul_ingest_requests_total", f'code="{status}"') == 1
    assert agent.proc.popen.poll() is None


def test_agent_counts_samples_it_drops(start_agent):
    agent = start_agent(None)
    now = int(time.time() * 1000)
    series: SeriesMap = {
        (("__name__", "ok"),): ([now], [1.0]),
        (("__name__", "ancient"),): ([now - 30 * 86_400_000], [1.0]),
        (("__name__", "future"),): ([now + 86_400_000], [1.0]),
    }
    assert push(agent.url, series) == [204]
    assert metric_value(agent.url, "backhaul_ingest_dropped_samples_total", 'reason="too_old"') == 1
    assert metric_value(agent.url, "backhaul_ingest_dropped_samples_total", 'reason="too_far_in_future"') == 1
    assert metric_value(agent.url, "backhaul_buffer_samples") == 1


def batch_body(device="dev-1", seq=1, chunks=None, samples=None):
    now = int(time.time() * 1000)
    codec = Codec()
    chunks = chunks if chunks is not None else [codec.encode({(("__name__", "x"),): ([now], [1.0])})]
    header = batchfmt.BatchHeader(
        device=device, buffer_id="b1", seq=seq, sent_at_ms=now, samples=1 if samples is None else samples
    )
    return batchfmt.encode(header, chunks)


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}", "Content-Type": batchfmt.CONTENT_TYPE}


@pytest.mark.parametrize(
    ("make_body", "headers", "status", "reason"),
    [
        (lambda: batch_body(), {"Content-Type": batchfmt.CONTENT_TYPE}, 401, "missing bearer"),
        (lambda: batch_body(), auth("wrong"), 401, "unknown token"),
        (lambda: batch_body(device="dev-2"), auth(), 403, "belongs to device 'dev-1'"),
        (lambda: b"garbage", auth(), 400, "batch"),
        (lambda: batch_body(chunks=[b"not zstd"]), auth(), 400, "zstd"),
        (lambda: batch_body(samples=5), auth(), 400, "announces 5 samples"),
        (
            lambda: batch_body(chunks=[zstandard.ZstdCompressor().compress(b"\0" * (8 << 20))]),
            auth(),
            413,
            "decompressed",
        ),
        (lambda: b"\0" * (2 << 20), auth(), 413, "limit"),
        (lambda: batch_body(), {**auth(), "Content-Type": "application/json"}, 415, "Content-Type"),
    ],
    ids=[
        "no-token",
        "bad-token",
        "other-device",
        "garbage",
        "bad-chunk",
        "count-mismatch",
        "zstd-bomb",
        "oversized",
        "content-type",
    ],
)
def test_collector_refuses_bad_batches_and_keeps_serving(start_collector, make_body, headers, status, reason):
    collector = start_collector(limits={"max_request_bytes": "1MiB", "max_decompressed_bytes": "4MiB"})
    got, text, _ = http("POST", f"{collector.url}/api/v1/batches", make_body(), headers)
    assert got == status, text
    assert reason in text.decode()
    ok, text, _ = http("POST", f"{collector.url}/api/v1/batches", batch_body(seq=99), auth())
    assert ok == 200 and json.loads(text)["duplicate"] is False
    again, text, _ = http("POST", f"{collector.url}/api/v1/batches", batch_body(seq=99), auth())
    assert again == 200 and json.loads(text)["duplicate"] is True
    assert metric_value(collector.url, "backhaul_collector_device_received_samples_total", 'device="dev-1"') == 1


def test_export_rejects_bad_selectors_and_times(start_collector):
    collector = start_collector()
    for query in ("", "?match[]={", '?match[]={job=~"("}', '?match[]={a="b"}&start=yesterday'):
        status, text, _ = http("GET", f"{collector.url}/api/v1/export{query}", headers=READ_HEADERS)
        assert status == 400, query
        assert text.strip()


def test_collector_accepts_plain_remote_write_from_a_device(start_collector):
    collector = start_collector()
    now = int(time.time() * 1000)
    series: SeriesMap = {
        (("__name__", "rw_direct"), ("i", str(i))): ([now - 1000, now], [float(i), i + 0.25]) for i in range(10)
    }
    headers = {**PROTO, "Authorization": f"Bearer {TOKEN}"}
    for body in rw.encode(series):
        status, text, _ = http("POST", f"{collector.url}/api/v1/write", body, headers)
        assert status == 204, text
        again, _, _ = http("POST", f"{collector.url}/api/v1/write", body, headers)  # a sender's retry
        assert again == 204
    got = exported_samples(collector.url, '{__name__="rw_direct"}')
    assert got == {labels: dict(zip(ts, vals, strict=True)) for labels, (ts, vals) in series.items()}
    assert metric_value(collector.url, "backhaul_collector_device_received_samples_total", 'device="dev-1"') == 20
    assert metric_value(collector.url, "backhaul_collector_device_duplicate_samples_total", 'device="dev-1"') == 20
    for body, hdrs, expected in (
        (rw.encode(series)[0], PROTO, 401),
        (b"\x0cnot snappy", headers, 400),
        (rw.encode(series)[0], {**headers, "Content-Type": "text/plain"}, 415),
    ):
        status, text, _ = http("POST", f"{collector.url}/api/v1/write", body, hdrs)
        assert status == expected, text
