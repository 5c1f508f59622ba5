"""The usual remote-write request is read in bulk (``decoding._take_bulk``): whatever a request holds,
it decodes to exactly what the series-by-series reading gives, on a cold cache and a warm one."""

from __future__ import annotations

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backhaul.wire import WireError
from backhaul.wire import remote_write as rw
from backhaul.wire.remote_write import decoding
from backhaul.wire.remote_write.messages import LabelBytes, WriteRequestRawLabels

NOW = 1_700_000_000_000
LO, HI = NOW - 3_600_000, NOW + 600_000

_text = st.sampled_from([b"", b"__name__", b"job", b"a", b"b", b"node", b"x" * 30, b"\xff\xfe", b"dev"])
_pair = st.tuples(_text, _text)


@st.composite
def _label_item(draw: st.DrawFn) -> bytes:
    """A serialized Label: usually a plain one, sometimes two run together (a legal message whose
    last fields win), sometimes bytes that are no Label at all."""
    name, value = draw(_pair)
    item: bytes = LabelBytes(name=name, value=value).SerializeToString()
    kind = draw(st.sampled_from(["plain"] * 8 + ["doubled", "broken"]))
    if kind == "doubled":
        other, more = draw(_pair)
        item += LabelBytes(name=other, value=more).SerializeToString()
    elif kind == "broken":
        item = b"\x0a\x7f" + item  # a length past the end
    return item


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    request = WriteRequestRawLabels()
    # Series mostly from a small set of label sets, so that the same series comes more than once.
    job = LabelBytes(name=b"job", value=b"node").SerializeToString()
    known = [[LabelBytes(name=b"__name__", value=v).SerializeToString(), job] for v in (b"up", b"load", b"temp")]
    for _ in range(draw(st.integers(1, 6))):
        ts = request.timeseries.add()
        if draw(st.integers(0, 3)):
            ts.labels.extend(draw(st.sampled_from(known)))
        else:
            ts.labels.extend(draw(st.lists(_label_item(), max_size=5)))
        stamps = st.one_of(st.integers(NOW - 60_000, NOW), st.integers(LO - 2, LO + 2), st.integers(HI - 2, HI + 2))
        count = draw(st.sampled_from([1] * 6 + [0, 2]))  # one sample per series, as Prometheus sends
        for t in draw(st.lists(stamps, min_size=count, max_size=count)):
            ts.samples.add(timestamp=t, value=draw(st.floats(allow_nan=False)))
        if draw(st.integers(0, 9)) == 0:
            ts.exemplars.add(value=1.0, timestamp=NOW).labels.add(name="trace_id", value="abc")
    if draw(st.integers(0, 9)) == 0:
        request.metadata.add(type=1, metric_family_name="up", help="up or not")
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


_limits = st.builds(
    rw.Limits,
    max_labels_per_series=st.sampled_from([128, 2]),
    max_label_bytes=st.sampled_from([16 * 1024, 12]),
    min_timestamp_ms=st.just(LO),
    max_timestamp_ms=st.just(HI),
    device_label=st.sampled_from(["", "dev"]),
)


def _series_by_series(body: bytes, limits: rw.Limits) -> rw.Decoded | str:
    try:
        raw = decoding.decompress(body, limits.max_decompressed_bytes)
        out = rw.Decoded()
        decoding._take(decoding._parse(raw), out, limits, rw.LabelCache(), True, True)
    except WireError as exc:
        return f"WireError: {exc}"
    return out


def _decoded(body: bytes, limits: rw.Limits, cache: rw.LabelCache) -> rw.Decoded | str:
    try:
        return rw.decode(body, limits, cache, histograms=True, exemplars=True)
    except WireError as exc:
        return f"WireError: {exc}"


@settings(max_examples=600, deadline=None)
@given(st.lists(_requests(), min_size=1, max_size=3), _limits)
def test_a_request_decodes_in_bulk_as_it_does_series_by_series(bodies: list[bytes], limits: rw.Limits) -> None:
    cache = rw.LabelCache()
    for body in bodies + bodies:  # the second time round, every series' labels are cached
        assert _decoded(body, limits, cache) == _series_by_series(body, limits)


def _body(*series: tuple[list[tuple[str, str]], int]) -> bytes:
    request = rw.WriteRequest()
    for pairs, t in series:
        ts = request.timeseries.add()
        for name, value in pairs:
            ts.labels.add(name=name, value=value)
        ts.samples.add(timestamp=t, value=1.0)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def test_the_usual_request_is_read_in_bulk_and_a_series_twice_keeps_both_samples(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up = [("__name__", "up"), ("job", "node")]
    body = _body((up, NOW - 10_000), ([("__name__", "load")], NOW), (up, NOW))
    limits = rw.Limits(min_timestamp_ms=LO, max_timestamp_ms=HI)
    monkeypatch.setattr(decoding, "_take", lambda *a: pytest.fail("read series by series"))
    decoded = rw.decode(body, limits, rw.LabelCache())
    assert decoded.series == {
        (("__name__", "up"), ("job", "node")): ([NOW - 10_000, NOW], [1.0, 1.0]),
        (("__name__", "load"),): ([NOW], [1.0]),
    }
    assert decoded.samples == 3 and not decoded.dropped
