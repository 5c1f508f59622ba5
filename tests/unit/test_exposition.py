"""The protobuf exposition format (backhaul/wire/exposition.py): native and classic histograms,
summaries, counters and metadata, from delimited MetricFamily messages."""

from __future__ import annotations

import pytest

from backhaul.wire import WireError, exposition
from backhaul.wire.histogram import Histogram
from backhaul.wire.metadata import Metadata

BASE = {"job": "t", "instance": "h:1"}
NOW = 1_700_000_000_000


def lb(**kw: str):
    return tuple(sorted({**kw, **BASE}.items()))


def test_native_and_classic_histograms_summaries_and_counters():
    ints = Histogram(count=6, sum=3.5, schema=3, zero_count=1, positive_spans=((-2, 2), (1, 1)), positive=(1, 1, 0))
    floats = Histogram(count=2.5, sum=1.0, schema=0, positive_spans=((0, 1),), positive=(2.5,), is_float=True)
    empty = Histogram(count=0, sum=0.0, schema=3)
    native = exposition.native_family(
        "rpc_seconds", "RPC latency.", [({"m": "a"}, ints), ({"m": "b"}, floats), ({}, empty)]
    )
    classic = exposition.MetricFamily(name="req_seconds", help="Latency.", type=exposition.HISTOGRAM)
    h = classic.metric.add(timestamp_ms=NOW - 5).histogram
    h.sample_count, h.sample_sum = 4, 2.0
    h.bucket.add(upper_bound=0.25, cumulative_count=1)
    h.bucket.add(upper_bound=1.0, cumulative_count=3)  # no +Inf bucket: the format allows leaving it out
    summary = exposition.MetricFamily(name="gc_seconds", type=exposition.SUMMARY)
    s = summary.metric.add().summary
    s.sample_count, s.sample_sum = 7, 0.5
    s.quantile.add(quantile=0.5, value=0.01)
    counter = exposition.MetricFamily(name="hits_total", type=exposition.COUNTER, help="Hits.")
    c = counter.metric.add()
    c.label.add(name="job", value="scraped")  # clashes with the target's label
    c.counter.value = 9
    page = exposition.parse(exposition.encode([native, classic, summary, counter]), BASE, NOW)

    assert page.histograms == {
        lb(__name__="rpc_seconds", m="a"): ([NOW], [ints]),
        lb(__name__="rpc_seconds", m="b"): ([NOW], [floats]),
        lb(__name__="rpc_seconds"): ([NOW], [empty]),
    }
    values = {k: v for k, (_, v) in page.series.items()}
    assert values[lb(__name__="req_seconds_bucket", le="0.25")] == [1.0]
    assert values[lb(__name__="req_seconds_bucket", le="1")] == [3.0]
    assert values[lb(__name__="req_seconds_bucket", le="+Inf")] == [4.0]
    assert page.series[lb(__name__="req_seconds_count")] == ([NOW - 5], [4.0])
    assert values[lb(__name__="gc_seconds", quantile="0.5")] == [0.01]
    assert values[lb(__name__="gc_seconds_count")] == [7.0]
    assert values[lb(__name__="hits_total", exported_job="scraped")] == [9.0]
    assert page.metadata == {
        "rpc_seconds": Metadata("histogram", "RPC latency.", ""),
        "req_seconds": Metadata("histogram", "Latency.", ""),
        "gc_seconds": Metadata("summary", "", ""),
        "hits_total": Metadata("counter", "Hits.", ""),
    }


def test_an_invalid_native_histogram_is_dropped_and_counted_the_rest_kept():
    bad = Histogram(count=1, sum=0.0, schema=0, positive_spans=((0, 2),), positive=(5, 0))
    ok = Histogram(count=1, sum=0.0, schema=0, positive_spans=((0, 1),), positive=(1,))
    page = exposition.parse(
        exposition.encode([exposition.native_family("x", "", [({"a": "1"}, bad), ({}, ok)])]), BASE, NOW
    )
    assert page.dropped == {"invalid_native_histogram": 1}
    assert list(page.histograms) == [lb(__name__="x")]


@pytest.mark.parametrize("body", [b"\x05abc", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x03\xff\xff\xff"])
def test_malformed_pages_are_wire_errors(body: bytes):
    with pytest.raises(WireError):
        exposition.parse(body, BASE, NOW)


def test_content_type():
    assert exposition.is_protobuf(exposition.MEDIA_TYPE)
    assert exposition.is_protobuf(
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
    )
    assert not exposition.is_protobuf("text/plain; version=0.0.4")
