"""Issue 12, integrity: one device can never store samples under another's series, every integer is
range-checked where it enters, and one set of label rules holds on every ingest path.

Each test plays a hostile device against real processes on 127.0.0.1 (collector, agent).
"""

from __future__ import annotations

import json
import time
from typing import Any

import cramjam
import pytest

from backhaul.wire import batch as batchfmt
from backhaul.wire import chunk as chunkfmt
from backhaul.wire import remote_write as rw
from backhaul.wire.chunk import Codec
from backhaul.wire.series import Labels, SeriesMap, sample_count
from tests.conftest import Running
from tests.support import TOKEN, export, http, metric_value, push, raw_label, raw_series

pytestmark = [pytest.mark.integration]

TOKENS = {"dev-1": TOKEN, "dev-2": TOKEN + "-2"}
PROTO = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}


def encode_chunk(series: SeriesMap) -> bytes:
    """The chunk as the agent encodes it, but with its series table written as ASCII JSON, so that
    strings no UTF-8 encoder writes (a lone surrogate, "\\udc80") reach the collector."""
    raw = chunkfmt.encode({tuple((n, "\0" if "\udc80" in v else v) for n, v in k): v for k, v in series.items()})
    _, stripped = chunkfmt.split_table(raw)
    table = json.dumps([[part for pair in labels for part in pair] for labels in series]).encode()
    return Codec().compress(chunkfmt.join_table(stripped, table))


def post_batch(url: str, device: str, seq: int, series: SeriesMap, **header: Any) -> tuple[int, str]:
    head = batchfmt.BatchHeader(
        device=device,
        buffer_id="buf-1",
        seq=seq,
        sent_at_ms=int(time.time() * 1000),
        samples=sample_count(series),
        **header,
    )
    body = batchfmt.encode(head, [encode_chunk(series)])
    headers = {"Authorization": f"Bearer {TOKENS[device]}", "Content-Type": batchfmt.CONTENT_TYPE}
    status, text, _ = http("POST", f"{url}/api/v1/batches", body, headers)
    return status, text.decode()


def by_device(url: str) -> dict[tuple[str, str], dict[int, float]]:
    """Everything exported, as {(metric name, device_id): {timestamp: value}}."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for line in export(url):
        key = (line["metric"]["__name__"], line["metric"]["device_id"])
        out.setdefault(key, {}).update(zip(line["timestamps"], map(float, line["values"]), strict=True))
    return out


def test_a_timestamp_beyond_int64_never_puts_one_devices_samples_under_anothers(
    start_collector: Any, tmp_path: Any
) -> None:
    """Finding 1: device A's chunk with a timestamp >= 2**63, then device B's new series, then A's
    later samples, then a restart: every sample is exported under the device that sent it."""
    collector: Running = start_collector()
    url = collector.url
    now = int(time.time() * 1000)
    a_series: Labels = (("__name__", "a_temperature"), ("sensor", "1"))
    # Delta-of-delta lets a chunk spell a timestamp past 2**63 with two int64 words: 2**62, then +5.
    hostile = {a_series: ([2**62, 2**63 + 5], [1.0, 2.0])}
    status, text = post_batch(url, "dev-1", 1, hostile)
    assert status == 400, text
    assert "timestamp" in text

    status, text = post_batch(url, "dev-2", 1, {(("__name__", "b_pressure"),): ([now - 2000], [7.0])})
    assert status == 200, text
    status, text = post_batch(url, "dev-1", 2, {a_series: ([now - 1000, now], [3.0, 4.0])})
    assert status == 200, text

    expected = {
        ("a_temperature", "dev-1"): {now - 1000: 3.0, now: 4.0},
        ("b_pressure", "dev-2"): {now - 2000: 7.0},
    }
    assert by_device(url) == expected
    collector.proc.kill()
    collector.proc.start()
    collector.proc.wait_healthy(url)
    assert by_device(url) == expected
    # and new samples after the restart go where they belong too
    assert post_batch(url, "dev-2", 2, {(("__name__", "b_pressure"),): ([now], [8.0])})[0] == 200
    assert by_device(url)[("b_pressure", "dev-2")] == {now - 2000: 7.0, now: 8.0}
    assert ("b_pressure", "dev-1") not in by_device(url)


def raw_header_batch(fields: dict[str, Any], raw_json: str | None = None) -> bytes:
    """A batch whose header JSON is written by hand (values Python's json would not write, e.g. 1e400)."""
    now = int(time.time() * 1000)
    series: SeriesMap = {(("__name__", "x"),): ([now], [1.0])}
    chunk = Codec().encode(series)
    head: dict[str, Any] = {
        "device": "dev-1",
        "buffer_id": "b",
        "seq": 1,
        "sent_at_ms": now,
        "samples": 1,
        "chunk_sizes": [len(chunk)],
    }
    head.update(fields)
    text = json.dumps(head) if raw_json is None else json.dumps(head)[:-1] + ", " + raw_json + "}"
    data = text.encode()
    return b"BHB\x01" + len(data).to_bytes(4, "little") + data + chunk


@pytest.mark.parametrize(
    ("fields", "raw_json", "named"),
    [
        ({"seq": 2**63}, None, "seq"),
        ({"samples": -1}, None, "samples"),
        ({"evicted_samples": 2**64}, None, "evicted_samples"),
        ({}, '"backlog_bytes": 1e400', "backlog_bytes"),
        ({}, '"sent_at_ms": -1e309', "sent_at_ms"),
        ({}, '"dropped_samples": Infinity', "dropped_samples"),
        ({}, '"seq": NaN', "seq"),
    ],
    ids=["seq-2^63", "negative", "2^64", "1e400", "-1e309", "Infinity", "NaN"],
)
def test_batch_header_integers_out_of_range_get_400_naming_the_field(
    start_collector: Any, fields: dict[str, Any], raw_json: str | None, named: str
) -> None:
    """Finding 2 (batch header): 400 naming the field, never a 500; the collector keeps serving."""
    collector = start_collector()
    body = raw_header_batch(fields, raw_json)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": batchfmt.CONTENT_TYPE}
    status, text, _ = http("POST", f"{collector.url}/api/v1/batches", body, headers)
    assert status == 400, text
    assert named in text.decode()
    assert post_batch(collector.url, "dev-1", 7, {(("__name__", "ok"),): ([int(time.time() * 1000)], [1.0])})[0] == 200


@pytest.mark.parametrize(
    "stamps", [[2**62, 2**63 + 5], [-(2**62), -(2**63) - 5], [2**53 + 1]], ids=["2^63", "-2^63", "2^53"]
)
def test_chunk_timestamps_out_of_range_get_400_naming_the_timestamp(start_collector: Any, stamps: list[int]) -> None:
    """Finding 2 (chunk timestamps): refused at decode, before any of it reaches the store."""
    collector = start_collector()
    status, text = post_batch(collector.url, "dev-1", 1, {(("__name__", "t"),): (stamps, [1.0] * len(stamps))})
    assert status == 400, text
    assert "timestamp" in text
    assert export(collector.url) == []


def chunk_with_table(table: list[list[str]], now: int) -> SeriesMap:
    """A series map whose label sets are given as flat lists, in the order given (not sorted)."""
    return {tuple(zip(flat[0::2], flat[1::2], strict=True)): ([now], [float(i)]) for i, flat in enumerate(table)}


BAD_SERIES = {
    "empty_label_name": ["__name__", "m", "", "x"],
    "invalid_label_name": ["__name__", "m", "bad-name!", "x"],
    "device_label_lookalike": ["__name__", "m", "Device_ID", "dev-2"],
    "missing_metric_name": ["job", "x", "instance", "y"],
    "invalid_metric_name": ["__name__", "9 lives"],
    "invalid_utf8": ["__name__", "m", "v", "\udc80"],
    "too_many_labels": ["__name__", "m", *[p for i in range(200) for p in (f"l{i}", "v")]],
}
LOOKALIKES = {
    "trailing space": ["__name__", "m", "device_id ", "dev-2"],
    "zero-width space": ["__name__", "m", "device_id\u200b", "dev-2"],
}


def test_collector_batches_drop_and_count_series_with_bad_labels_and_keep_the_rest(start_collector: Any) -> None:
    """Finding 5 (collector batches): each bad series dropped and counted per device and reason."""
    collector = start_collector()
    now = int(time.time() * 1000)
    table = [["__name__", "good", "job", "a"], *BAD_SERIES.values(), *LOOKALIKES.values()]
    status, text = post_batch(collector.url, "dev-1", 1, chunk_with_table(table, now))
    assert status == 200, text
    answer = json.loads(text)
    assert answer["samples"] == 1
    assert set(answer["dropped"]) == set(BAD_SERIES)
    lines = export(collector.url)
    assert [line["metric"] for line in lines] == [{"__name__": "good", "job": "a", "device_id": "dev-1"}]
    for reason in BAD_SERIES:
        labels = f'device="dev-1",reason="{reason}"'
        expected = 3 if reason == "invalid_label_name" else 1  # the two look-alikes are invalid names
        assert metric_value(collector.url, "backhaul_collector_dropped_samples_total", labels) == expected, reason


def test_collector_remote_write_drops_and_counts_series_with_bad_labels(start_collector: Any) -> None:
    """Finding 5 (collector remote write): the same rules, the same counter."""
    collector = start_collector()
    now = int(time.time() * 1000)
    series = {
        (("__name__", "good"),): ([now], [1.0]),
        (("__name__", "m"), ("bad-name!", "x")): ([now], [2.0]),
        (("__name__", "m"), ("device_id\u200b", "dev-2")): ([now], [3.0]),
        (("job", "no_name"),): ([now], [4.0]),
    }
    body = rw.encode(series)[0]
    status, text, _ = http("POST", f"{collector.url}/api/v1/write", body, {**PROTO, "Authorization": f"Bearer {TOKEN}"})
    assert status == 204, text
    assert [line["metric"]["__name__"] for line in export(collector.url)] == ["good"]
    name = "backhaul_collector_dropped_samples_total"
    assert metric_value(collector.url, name, 'device="dev-1",reason="invalid_label_name"') == 2
    assert metric_value(collector.url, name, 'device="dev-1",reason="missing_metric_name"') == 1


def test_agent_drops_a_series_with_labels_not_utf8_and_keeps_the_rest(start_agent: Any) -> None:
    """Finding 5 (agent remote write): a label value that is not UTF-8 costs its series, not the request."""
    agent = start_agent(None)
    now = int(time.time() * 1000)
    good = raw_series([raw_label(b"__name__", b"good")], now)
    bad = raw_series([raw_label(b"__name__", b"bad"), raw_label(b"v", b"\xff\xfe")], now)
    body = bytes(cramjam.snappy.compress_raw(good + bad))
    status, text, _ = http("POST", f"{agent.url}/api/v1/write", body, PROTO)
    assert status == 204, text
    assert metric_value(agent.url, "backhaul_ingest_dropped_samples_total", 'reason="invalid_utf8"') == 1
    assert metric_value(agent.url, "backhaul_buffer_samples") == 1


def test_agent_applies_the_same_label_rules(start_agent: Any) -> None:
    agent = start_agent(None)
    now = int(time.time() * 1000)
    series = {
        (("__name__", "good"),): ([now], [1.0]),
        (("__name__", "m"), ("bad-name!", "x")): ([now], [2.0]),
        (("job", "no_name"),): ([now], [3.0]),
        (("__name__", "9lives"),): ([now], [4.0]),
        (("Device_ID", "dev-2"), ("__name__", "m")): ([now], [5.0]),
    }
    assert push(agent.url, series) == [204]
    name = "backhaul_ingest_dropped_samples_total"
    for reason in ("invalid_label_name", "missing_metric_name", "invalid_metric_name", "device_label_lookalike"):
        assert metric_value(agent.url, name, f'reason="{reason}"') == 1, reason
    assert metric_value(agent.url, "backhaul_buffer_samples") == 1


def test_loss_counters_near_2_63_in_two_buffers_do_not_overflow_the_device_total(start_collector: Any) -> None:
    """Found by the fuzzing: each buffer's counter is in range, their sum was not (503 for ever)."""
    collector = start_collector()
    now = int(time.time() * 1000)
    for buffer_id in ("buf-a", "buf-b"):
        head = batchfmt.BatchHeader(
            device="dev-1", buffer_id=buffer_id, seq=1, sent_at_ms=now, samples=1, evicted_samples=2**63 - 1
        )
        body = batchfmt.encode(head, [Codec().encode({(("__name__", "x"),): ([now], [1.0])})])
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": batchfmt.CONTENT_TYPE}
        status, text, _ = http("POST", f"{collector.url}/api/v1/batches", body, headers)
        assert status == 200, text
    lost = metric_value(
        collector.url, "backhaul_collector_device_reported_lost_samples", 'cause="evicted",device="dev-1"'
    )
    assert lost == float(2**63 - 1)
