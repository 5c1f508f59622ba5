"""Chunks forwarded as remote write written directly (collector/forward/encode.py) hold exactly what
the general path (decode, relabel, protobuf messages) sends: the same samples, bit for bit, with the
same labels, split into requests of the same sizes."""

from __future__ import annotations

import math
import struct

from backhaul.remote_write_sender import RemoteWriteSender, Request, chunk_series
from backhaul.wire import remote_write as rw
from backhaul.wire.chunk import Codec
from backhaul.wire.histogram import Histogram
from backhaul.wire.metadata import Metadata
from backhaul.wire.series import SeriesMap
from collector.forward.encode import ChunkEncoder

NOW = 1_795_968_124_054
LIMIT = 1 << 26
STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]  # Prometheus' stale marker


def workload(n: int, per: int, offset: int = 0) -> SeriesMap:
    series: SeriesMap = {
        (("__name__", f"m_{i % 7}"), ("job", "node"), ("series", str(i))): (
            [NOW + offset + 5000 * k for k in range(per)],
            [float(i) * 1.5 + k if i % 3 else float(i + k) for k in range(per)],  # decimals and floats
        )
        for i in range(n)
    }
    series[(("__name__", "stale"), ("device_id", "claimed"))] = ([NOW, NOW + 1], [STALE, math.inf])
    series[(("__name__", "old"),)] = ([-5, 0, 2**45], [1.0, -0.0, 3.0])  # varints of other lengths
    return series


def content(requests: list[Request]) -> dict[tuple[tuple[str, str], ...], list[tuple[int, bytes]]]:
    """Every sample sent, by labels, with its value's bits."""
    out: dict[tuple[tuple[str, str], ...], list[tuple[int, bytes]]] = {}
    for request in requests:
        decoded = rw.decode(request.body, rw.Limits(max_decompressed_bytes=LIMIT))
        for labels, (stamps, values) in decoded.series.items():
            out.setdefault(labels, []).extend((t, struct.pack("<d", v)) for t, v in zip(stamps, values, strict=True))
    return {labels: sorted(samples) for labels, samples in out.items()}


def test_direct_requests_hold_what_the_general_path_sends() -> None:
    codec = Codec()
    frames = [codec.encode(workload(771, 2)), codec.encode(workload(300, 7, 10_000))]
    parts = [("edge-1", frames), ("edge-2", frames[:1])]
    for label, size in (("device_id", 2000), ("device_id", 0), ("", 500)):
        direct = ChunkEncoder(label, size).encode(parts, LIMIT)
        sender = RemoteWriteSender("http://127.0.0.1:1", 1, "test", device_label=label, max_samples_per_request=size)
        general = sender.requests((device, chunk_series(f, LIMIT)) for device, f in parts)
        assert direct is not None
        assert [r.samples for r in direct] == [r.samples for r in general]
        assert content(direct) == content(general)
        if label:  # a device label the series carried is kept as exported_device_id
            assert ("exported_device_id", "claimed") in next(k for k in content(direct) if ("__name__", "stale") in k)
    assert ChunkEncoder("device_id", 2000).encode([], LIMIT) == []


def test_chunks_with_histograms_or_metadata_take_the_general_path() -> None:
    codec = Codec()
    histogram = Histogram(count=1, sum=2.0, schema=0, positive_spans=((0, 1),), positive=(1,))
    with_histograms = codec.encode(workload(3, 1), {(("__name__", "h"),): ([NOW], [histogram])})
    with_metadata = codec.encode(workload(3, 1), metadata={"m_0": Metadata("gauge", "help", "")})
    encoder = ChunkEncoder("device_id", 2000)
    assert encoder.encode([("edge-1", [codec.encode(workload(3, 1)), with_histograms])], LIMIT) is None
    assert encoder.encode([("edge-1", [with_metadata])], LIMIT) is None
