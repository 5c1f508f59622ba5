"""Encoding samples as remote write 1.0 bodies, split into requests the way Prometheus sends them.

Each body is one snappy block of a ``WriteRequest`` (fields in ``remote_write.messages``).
"""

from __future__ import annotations

from typing import Any

import cramjam

from backhaul.wire import histogram as hist
from backhaul.wire.metadata import MetadataMap
from backhaul.wire.remote_write.messages import WriteRequest
from backhaul.wire.series import Labels, SeriesMap


def encode(
    series: SeriesMap,
    max_samples_per_request: int = 0,
    histograms: hist.HistogramSeriesMap | None = None,
    metadata: MetadataMap | None = None,
) -> list[bytes]:
    """Encode samples as snappy-compressed ``WriteRequest`` bodies, the way Prometheus sends them.

    With ``max_samples_per_request`` > 0 the samples are split into requests of at most that many
    samples (Prometheus 2.42 sends 500 per request, later releases 2,000), one series entry per
    request and series, as Prometheus' shards do. Native histograms follow the float samples (each
    counts as one sample for the split); metadata, per family, goes in the first request.
    """
    bodies: list[bytes] = []
    request = WriteRequest()
    for name, meta in (metadata or {}).items():
        request.metadata.add(type=meta.type_number, metric_family_name=name, help=meta.help, unit=meta.unit)
    in_request = 0
    items: list[tuple[Labels, list[int], list[Any], bool]] = [
        (labels, stamps, values, False) for labels, (stamps, values) in series.items()
    ]
    items += [(labels, stamps, values, True) for labels, (stamps, values) in (histograms or {}).items()]
    for labels, stamps, values, is_histogram in items:
        start = 0
        while start < len(stamps):
            room = len(stamps) - start
            if max_samples_per_request:
                room = min(room, max_samples_per_request - in_request)
            entry = request.timeseries.add()
            for name, value in labels:
                entry.labels.add(name=name, value=value)
            if is_histogram:
                for i in range(start, start + room):
                    hist.fill_proto(values[i], entry.histograms.add(), stamps[i])
            else:
                for i in range(start, start + room):
                    entry.samples.add(value=values[i], timestamp=stamps[i])
            start += room
            in_request += room
            if max_samples_per_request and in_request >= max_samples_per_request:
                bodies.append(_compress(request))
                request = WriteRequest()
                in_request = 0
    if in_request or not bodies:
        bodies.append(_compress(request))
    return bodies


def _compress(request: Any) -> bytes:
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
