import dataclasses
from typing import Any

import cramjam
import pytest

from backhaul.wire import TooLarge, Unsupported, WireError
from backhaul.wire import remote_write as rw
from backhaul.wire.histogram import Histogram
from backhaul.wire.metadata import Metadata
from backhaul.wire.series import Exemplar, SeriesMap
from tests.unit.histograms import LATENCY

NOW = 1_700_000_000_000


def limits(**kw):
    base: dict[str, Any] = {"min_timestamp_ms": NOW - 3_600_000, "max_timestamp_ms": NOW + 600_000}
    base.update(kw)
    return rw.Limits(**base)


def test_encode_splits_like_prometheus_and_decode_reads_it_back():
    series: SeriesMap = {
        (("__name__", f"m{i}"), ("job", "j")): ([NOW, NOW + 5000], [float(i), i + 0.5]) for i in range(600)
    }
    bodies = rw.encode(series, 500)
    assert len(bodies) == 3  # 1,200 samples at 500 per request
    merged: SeriesMap = {}
    for body in bodies:
        for labels, (ts, vals) in rw.decode(body, limits()).series.items():
            merged.setdefault(labels, ([], []))
            merged[labels][0].extend(ts)
            merged[labels][1].extend(vals)
    assert merged == series


def test_samples_outside_the_window_and_bad_label_sets_are_dropped_and_counted():
    series = {
        (("__name__", "ok"),): ([NOW, NOW - 7_200_000, NOW + 3_600_000], [1.0, 2.0, 3.0]),
        (("__name__", "wide"), *((f"l{i}", "v") for i in range(200))): ([NOW], [1.0]),
        (("__name__", "long"), ("l", "x" * 20_000)): ([NOW], [1.0]),
    }
    decoded = rw.decode(rw.encode(series)[0], limits())
    assert decoded.series == {(("__name__", "ok"),): ([NOW], [1.0])}
    assert decoded.samples == 1
    assert decoded.dropped == {"too_old": 1, "too_far_in_future": 1, "too_many_labels": 1, "labels_too_long": 1}


def test_duplicate_label_names_are_dropped():
    request = rw.WriteRequest()
    ts = request.timeseries.add()
    ts.labels.add(name="__name__", value="a")
    ts.labels.add(name="__name__", value="b")
    ts.samples.add(value=1, timestamp=NOW)
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    assert rw.decode(body, limits()).dropped == {"duplicate_label_name": 1}


def test_metadata_only_request_is_fine():
    request = rw.WriteRequest()
    request.metadata.add(type=1, metric_family_name="up", help="x")
    decoded = rw.decode(bytes(cramjam.snappy.compress_raw(request.SerializeToString())), limits())
    assert (decoded.samples, decoded.metadata, decoded.series) == (0, 1, {})


def test_bad_snappy_and_bad_protobuf_are_wire_errors():
    with pytest.raises(WireError, match="snappy"):
        rw.decode(b"\x05garbage-not-snappy", limits())
    with pytest.raises(WireError, match="protobuf"):
        rw.decode(bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff\xff")), limits())


def test_announced_size_over_the_limit_is_refused_before_decompressing():
    # A 12-byte body whose preamble claims 1 GiB: refused without allocating anything.
    body = bytes([0x80, 0x80, 0x80, 0x80, 0x04]) + b"\0" * 7
    with pytest.raises(TooLarge):
        rw.decode(body, limits(max_decompressed_bytes=1024 * 1024))


def test_stale_marker_is_recognised_by_its_bits():
    stale = rw.STALE_NAN_BYTES
    import struct

    assert rw.is_stale_marker(struct.unpack("<d", stale)[0])
    assert not rw.is_stale_marker(float("nan"))
    assert not rw.is_stale_marker(1.0)


def test_the_label_cache_gives_the_same_answers_and_shares_one_tuple_per_series():
    # A value of 255 bytes puts 0xff into its length varint: the cache must not confuse such series.
    series = {
        (("__name__", "up"), ("job", "node")): ([NOW], [1.0]),
        (("__name__", "up"), ("job", "x" * 255)): ([NOW], [2.0]),
        (("__name__", "up"), ("job", "x" * 254), ("k", "\x7f")): ([NOW], [3.0]),
        (("__name__", "wide"), *((f"l{i}", "v") for i in range(200))): ([NOW], [4.0]),
    }
    body = rw.encode(series)[0]
    cache = rw.LabelCache()
    first = rw.decode(body, limits(), cache)
    second = rw.decode(body, limits(), cache)
    assert first.series == second.series == rw.decode(body, limits()).series
    assert second.dropped == {"too_many_labels": 1}
    assert len(first.series) == 3
    for a, b in zip(first.series, second.series, strict=True):
        assert a is b  # decoded once, then looked up
    # Other limits (a reloaded config) must not reuse answers given under the old ones.
    strict = rw.decode(body, limits(max_label_bytes=100), cache)
    assert strict.dropped == {"too_many_labels": 1, "labels_too_long": 2}


def test_a_malformed_label_inside_a_series_is_refused_with_a_reason():
    # TimeSeries with one "label" that is not a Label message (a truncated field).
    series_bytes = b"\x0a\x02\x0a\x05" + b"\x12\x09\x09" + b"\0" * 8
    body = bytes(cramjam.snappy.compress_raw(b"\x0a" + bytes([len(series_bytes)]) + series_bytes))
    with pytest.raises(WireError, match="label"):
        rw.decode(body, limits())


@pytest.mark.parametrize(
    ("content_type", "encoding", "expected"),
    [
        ("application/x-protobuf", "snappy", rw.Message.V1),
        ("application/x-protobuf", None, rw.Message.V1),
        ("application/x-protobuf;proto=prometheus.WriteRequest", "snappy", rw.Message.V1),
        ('APPLICATION/X-PROTOBUF ; Proto="prometheus.WriteRequest" ; charset=utf-8', "Snappy", rw.Message.V1),
        ("application/x-protobuf;proto=io.prometheus.write.v2.Request", "snappy", rw.Message.V2),
    ],
)
def test_negotiation_reads_the_proto_parameter(content_type, encoding, expected):
    assert rw.negotiate(content_type, encoding, accept=set(rw.Message)) is expected


@pytest.mark.parametrize(
    ("content_type", "encoding", "reason"),
    [
        ("application/json", "snappy", "Content-Type must be application/x-protobuf"),
        (None, "snappy", "Content-Type must be"),
        ("application/x-protobuf;proto=io.prometheus.write.v3.Request", "snappy", "knows no such message"),
        ("application/x-protobuf;proto=", "snappy", "knows no such message"),
        ("application/x-protobuf;proto=a;proto=b", "snappy", "twice"),
        ("application/x-protobuf;proto", "snappy", "not name=value"),
        ("application/x-protobuf;proto=io.prometheus.write.v2.Request", "snappy", "does not take yet"),
        ("application/x-protobuf", "zstd", "Content-Encoding must be snappy"),
    ],
)
def test_negotiation_refuses_what_it_cannot_read(content_type, encoding, reason):
    with pytest.raises(Unsupported, match=reason):
        rw.negotiate(content_type, encoding)
    assert reason in (rw.header_problem(content_type, encoding) or "")


def test_a_v2_body_labelled_as_v1_is_refused_not_read_as_empty():
    from backhaul.wire import remote_write_v2 as v2

    body = v2.encode({(("__name__", "up"),): ([NOW], [1.0])})[0]
    with pytest.raises(WireError, match=r"io\.prometheus\.write\.v2\.Request"):
        rw.decode(body, limits())


FLOATY = Histogram(
    count=2.5, sum=1.0, schema=-53, positive_spans=((1, 1),), positive=(2.5,), custom_values=(0.5, 1.0), is_float=True
)


def test_native_histograms_in_1_0_are_counted_as_dropped_unless_asked_for():
    labels = (("__name__", "latency_seconds"), ("job", "api"))
    body = rw.encode({}, histograms={labels: ([NOW, NOW + 5000], [LATENCY, FLOATY])})[0]
    decoded = rw.decode(body, limits())
    assert decoded.dropped == {"native_histogram": 2} and not decoded.histograms
    decoded = rw.decode(body, limits(), histograms=True)
    assert decoded.dropped == {}
    assert decoded.histograms == {labels: ([NOW, NOW + 5000], [LATENCY, FLOATY])}
    assert decoded.histogram_samples == 2


def test_1_0_histograms_are_checked_limited_and_reduced():
    labels = (("__name__", "h"),)

    def decode(h, **kw):
        return rw.decode(rw.encode({}, histograms={labels: ([NOW], [h])})[0], limits(**kw), histograms=True)

    with pytest.raises(WireError, match="buckets hold 15"):
        decode(dataclasses.replace(LATENCY, count=3))
    assert decode(LATENCY, max_histogram_buckets=4).dropped == {"too_many_buckets": 1}
    fine = decode(dataclasses.replace(LATENCY, schema=12)).histograms[labels][1][0]
    assert fine.schema == 8 and sum(c for _, c in fine.positive_buckets()) == 14
    request = rw.WriteRequest()
    ts = request.timeseries.add()
    ts.labels.add(name="__name__", value="h")
    ts.histograms.add(count_int=1, positive_counts=[1.0], timestamp=NOW)
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    with pytest.raises(WireError, match="integer histogram carries float buckets"):
        rw.decode(body, limits(), histograms=True)


def test_1_0_metadata_and_exemplars_are_decoded_per_family():
    request = rw.WriteRequest()
    request.metadata.add(type=3, metric_family_name="latency_seconds", help="Latency.", unit="seconds")
    request.metadata.add(type=1, metric_family_name="requests_total", help="Requests.")
    ts = request.timeseries.add()
    ts.labels.add(name="__name__", value="requests_total")
    ts.samples.add(value=5, timestamp=NOW)
    ex = ts.exemplars.add(value=0.2, timestamp=NOW - 10)
    ex.labels.add(name="trace_id", value="abc")
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    decoded = rw.decode(body, limits(), exemplars=True)
    assert decoded.families == {
        "latency_seconds": Metadata("histogram", "Latency.", "seconds"),
        "requests_total": Metadata("counter", "Requests.", ""),
    }
    assert decoded.exemplars == {(("__name__", "requests_total"),): [Exemplar((("trace_id", "abc"),), 0.2, NOW - 10)]}
    assert rw.decode(body, limits()).exemplars == {}
