"""Remote-Write 2.0: round trips through our encoder, and every rule of the spec checked on decoding."""

from __future__ import annotations

from typing import Any

import cramjam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backhaul.wire import TooLarge, WireError
from backhaul.wire import remote_write as rw
from backhaul.wire import remote_write_v2 as v2
from backhaul.wire.histogram import Histogram, HistogramSeriesMap
from backhaul.wire.metadata import Metadata, MetadataMap
from backhaul.wire.series import Exemplar, ExemplarMap, Labels, SeriesMap
from tests.unit.histograms import damaged, histogram_runs, key

NOW = 1_700_000_000_000


def limits(**kw):
    base: dict[str, Any] = {"min_timestamp_ms": NOW - 3_600_000, "max_timestamp_ms": NOW + 600_000}
    base.update(kw)
    return rw.Limits(**base)


def body(request) -> bytes:
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def spec_example(now: int = NOW) -> Any:
    """The request the spec's message description builds: symbols interned once, "" first; a counter
    with metadata and an exemplar; a native histogram."""
    request = v2.Request()
    request.symbols.extend(
        ["", "__name__", "http_requests_total", "job", "api", "Requests served.", "trace_id", "abc123",
         "http_request_duration_seconds", "Latency.", "seconds"]
    )  # fmt: skip
    counter = request.timeseries.add(labels_refs=[1, 2, 3, 4], created_timestamp=now - 3_600_000)
    counter.samples.add(value=10, timestamp=now - 15_000)
    counter.samples.add(value=12, timestamp=now)
    counter.exemplars.add(labels_refs=[6, 7], value=0.25, timestamp=now - 100)
    counter.metadata.type = 1
    counter.metadata.help_ref = 5
    latency = request.timeseries.add(labels_refs=[1, 8, 3, 4])
    h = latency.histograms.add(count_int=3, sum=0.75, schema=2, zero_count_int=0, timestamp=now)
    h.positive_spans.add(offset=-1, length=2)
    h.positive_deltas.extend([1, 1])
    latency.metadata.type = 3
    latency.metadata.help_ref = 9
    latency.metadata.unit_ref = 10
    return request


def test_the_spec_example_decodes_to_every_shape():
    decoded = v2.decode(body(spec_example()), limits())
    counter = (("__name__", "http_requests_total"), ("job", "api"))
    latency = (("__name__", "http_request_duration_seconds"), ("job", "api"))
    assert decoded.series == {counter: ([NOW - 15_000, NOW], [10.0, 12.0])}
    assert decoded.samples == 2 and decoded.histogram_samples == 1 and decoded.exemplar_count == 1
    assert decoded.histograms == {
        latency: ([NOW], [Histogram(count=3, sum=0.75, schema=2, positive_spans=((-1, 2),), positive=(1, 1))])
    }
    assert decoded.exemplars == {counter: [Exemplar((("trace_id", "abc123"),), 0.25, NOW - 100)]}
    assert decoded.families == {
        "http_requests_total": Metadata("counter", "Requests served.", ""),
        "http_request_duration_seconds": Metadata("histogram", "Latency.", "seconds"),
    }
    assert decoded.created == {counter: NOW - 3_600_000}
    assert decoded.dropped == {}


def broken(change):
    request = spec_example()
    change(request)
    return body(request)


def _add_histogram(r):
    r.timeseries[0].histograms.add(count_int=1, schema=0, timestamp=NOW)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.symbols.__setitem__(0, "x"), "symbols[0] must be the empty string"),
        (lambda r: r.timeseries[0].labels_refs.append(99), "odd number of label references"),
        (lambda r: r.timeseries[0].labels_refs.extend([99, 1]), "refers to symbol 99, the request has 11"),
        (lambda r: r.timeseries[0].labels_refs.__setitem__(slice(None), [3, 4, 1, 2]), "not sorted by label name"),
        (lambda r: r.timeseries[0].labels_refs.__setitem__(slice(None), [1, 2, 1, 4]), "repeats the label name"),
        (lambda r: r.timeseries[0].labels_refs.__setitem__(slice(None), [1, 2, 3, 0]), "empty label name or value"),
        (lambda r: r.timeseries[0].labels_refs.__setitem__(slice(None), [0, 2]), "empty label name or value"),
        (lambda r: r.timeseries[0].ClearField("labels_refs"), "has no labels_refs"),
        (_add_histogram, "both samples and histograms"),
        (lambda r: r.timeseries[0].ClearField("samples"), "neither samples nor histograms"),
        (lambda r: r.timeseries[0].samples[0].__setattr__("timestamp", NOW + 1), "not in timestamp order"),
        (lambda r: r.timeseries[0].exemplars[0].__setattr__("timestamp", 0), "exemplar of series 0 has no timestamp"),
        (lambda r: r.timeseries[0].exemplars[0].labels_refs.append(1), "odd number of exemplar label references"),
        (lambda r: r.timeseries[0].metadata.__setattr__("unit_ref", 11), "metadata refers to a symbol"),
        (lambda r: r.timeseries[1].histograms[0].__setattr__("count_int", 1), "buckets hold 3"),
        (lambda r: r.timeseries[1].histograms[0].__setattr__("schema", 60), "unknown schema 60"),
        (lambda r: r.timeseries[1].histograms[0].positive_counts.append(1.0), "integer histogram carries float"),
        (lambda r: r.ClearField("symbols"), "has series but no symbols"),
    ],
)
def test_every_violation_of_the_spec_is_a_wire_error_with_the_reason(change, reason):
    with pytest.raises(WireError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        v2.decode(broken(change), limits())


def test_a_1_0_body_labelled_as_2_0_is_refused_not_read_as_empty():
    one = rw.encode({(("__name__", "up"),): ([NOW], [1.0])})[0]
    with pytest.raises(WireError, match=r"prometheus\.WriteRequest"):
        v2.decode(one, limits())


def test_malformed_protobuf_snappy_and_bombs():
    with pytest.raises(WireError, match=r"not an io\.prometheus\.write\.v2\.Request"):
        v2.decode(bytes(cramjam.snappy.compress_raw(b"\x22\x05ab")), limits())
    with pytest.raises(WireError, match=r"not an io\.prometheus\.write\.v2\.Request"):
        v2.decode(bytes(cramjam.snappy.compress_raw(b"\x22\x02\xff\xfe")), limits())  # symbol not UTF-8
    with pytest.raises(WireError, match="snappy"):
        v2.decode(b"\x05garbage", limits())
    with pytest.raises(TooLarge):
        v2.decode(bytes([0x80, 0x80, 0x80, 0x80, 0x04]) + b"\0" * 7, limits(max_decompressed_bytes=1 << 20))


def test_receiver_limits_drop_and_count_instead_of_refusing():
    request = v2.Request()
    request.symbols.extend(["", "__name__", "a", "b", "x" * 200])
    old = request.timeseries.add(labels_refs=[1, 2])
    old.samples.add(value=1, timestamp=NOW - 7_200_000)
    old.samples.add(value=2, timestamp=NOW)
    old.samples.add(value=3, timestamp=NOW + 3_600_000)
    long = request.timeseries.add(labels_refs=[1, 3, 4, 4])
    long.samples.add(value=1, timestamp=NOW)
    wide = request.timeseries.add(labels_refs=[1, 3])
    h = wide.histograms.add(count_int=2, schema=0, timestamp=NOW)
    h.positive_spans.add(offset=0, length=2)
    h.positive_deltas.extend([1, 0])
    decoded = v2.decode(body(request), limits(max_label_bytes=100, max_histogram_buckets=1))
    assert decoded.series == {(("__name__", "a"),): ([NOW], [2.0])}
    assert decoded.dropped == {"too_old": 1, "too_far_in_future": 1, "labels_too_long": 1, "too_many_buckets": 1}


def test_an_empty_request_is_fine():
    assert v2.decode(body(v2.Request()), limits()).samples == 0
    assert v2.decode(v2.encode()[0], limits()).samples == 0


@st.composite
def payloads(draw):
    series, histograms, exemplars, created = {}, {}, {}, {}
    for i in range(draw(st.integers(0, 5))):
        labels = (("__name__", f"m{i}"), ("job", draw(st.sampled_from(["a", "b", "ünï"]))))
        n = draw(st.integers(1, 4))
        series[labels] = ([NOW - 1000 * (n - k) for k in range(n)], draw(st.lists(st.floats(), min_size=n, max_size=n)))
        if draw(st.booleans()):
            exemplars[labels] = [Exemplar((("trace_id", f"t{i}"),), draw(st.floats(allow_nan=False)), NOW - 5)]
        if draw(st.booleans()):
            created[labels] = NOW - 86_400_000
    for i in range(draw(st.integers(0, 3))):
        runs = draw(histogram_runs(max_size=4))
        histograms[(("__name__", f"h{i}"),)] = ([NOW - 1000 * (len(runs) - k) for k in range(len(runs))], runs)
    metadata = {"m0": Metadata("gauge", "Help ünï.", "bytes"), "h0": Metadata("histogram", "", "seconds")}
    return series, histograms, exemplars, created, metadata


@given(payloads(), st.sampled_from([0, 1, 3, 1000]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_what_the_encoder_writes_the_decoder_reads_back(payload, per_request):
    series, histograms, exemplars, created, metadata = payload
    bodies = v2.encode(series, histograms, metadata, exemplars, created, max_samples_per_request=per_request)
    got_series: SeriesMap = {}
    got_hist: HistogramSeriesMap = {}
    got_ex: ExemplarMap = {}
    got_created: dict[Labels, int] = {}
    got_meta: MetadataMap = {}
    for b in bodies:
        decoded = v2.decode(b, limits())
        assert decoded.dropped == {}
        for labels, (ts, vals) in decoded.series.items():
            got_series.setdefault(labels, ([], []))
            got_series[labels][0].extend(ts)
            got_series[labels][1].extend(vals)
        for labels, (ts, hs) in decoded.histograms.items():
            got_hist.setdefault(labels, ([], []))
            got_hist[labels][0].extend(ts)
            got_hist[labels][1].extend(hs)
        for labels, exs in decoded.exemplars.items():
            got_ex.setdefault(labels, []).extend(exs)
        got_created.update(decoded.created)
        got_meta.update(decoded.families)
    assert got_series.keys() == series.keys()
    for labels, (ts, vals) in series.items():
        assert got_series[labels][0] == ts
        assert [v.hex() for v in got_series[labels][1]] == [v.hex() for v in vals]
    assert {labels: (ts, [key(h) for h in hs]) for labels, (ts, hs) in got_hist.items()} == {
        labels: (ts, [key(h) for h in hs]) for labels, (ts, hs) in histograms.items()
    }
    assert got_ex == exemplars and got_created == created
    wanted_meta = {
        name: m for name, m in metadata.items() if any(dict(lb)["__name__"] == name for lb in [*series, *histograms])
    }
    assert got_meta == wanted_meta
    if per_request:
        assert len(bodies) >= (sum(len(ts) for ts, _ in [*series.values(), *histograms.values()]) - 1) // per_request


@given(st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_requests_are_wire_errors_or_valid_never_anything_else(data):
    raw = damaged(data, spec_example().SerializeToString(), 6)
    try:
        decoded = v2.decode(bytes(cramjam.snappy.compress_raw(raw)), limits())
    except WireError:
        return
    for labels in [*decoded.series, *decoded.histograms]:
        names = [n for n, _ in labels]
        assert names == sorted(set(names)) and all(names) and all(v for _, v in labels)
