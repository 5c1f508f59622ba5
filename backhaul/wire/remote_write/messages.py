"""Remote write 1.0's protobuf messages, built at import time, and Prometheus' stale marker.

The message classes are built from field lists written out below (the fields of Prometheus'
``prompb/types.proto`` and ``remote.proto`` that remote write 1.0 uses, see ``protodesc``), so no
generated ``_pb2`` module ties us to one protobuf release. Parsing runs in protobuf's C backend (upb).

Message fields (package ``prometheus``)::

    WriteRequest    timeseries 1 (repeated TimeSeries), metadata 3 (repeated MetricMetadata)
    TimeSeries      labels 1 (repeated Label), samples 2, exemplars 3, histograms 4 (all repeated)
    Label           name 1 (string), value 2 (string)
    Sample          value 1 (double), timestamp 2 (int64, ms)
    Exemplar        labels 1 (repeated Label), value 2 (double), timestamp 3 (int64, ms)
    MetricMetadata  type 1 (int32), metric_family_name 2, help 4, unit 5 (strings)
    Histogram       protodesc.histogram_messages
    KeyRequest      timeseries 1 (repeated KeySeries): a request read only for its label cache keys
    KeySeries       labels 1, exemplars 3, histograms 4 (repeated bytes)

A body is one snappy block (no framing) of a serialized ``WriteRequest``. A stale marker is the
float sample whose bits are 0x7ff0000000000002, a NaN Prometheus writes when a series vanishes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from backhaul.wire import protodesc
from backhaul.wire.protodesc import Field, T


def _build_messages() -> dict[str, Any]:
    label = [Field("name", 1, T.TYPE_STRING), Field("value", 2, T.TYPE_STRING)]
    sample = [Field("value", 1, T.TYPE_DOUBLE), Field("timestamp", 2, T.TYPE_INT64)]
    exemplar = [
        Field("labels", 1, T.TYPE_MESSAGE, repeated=True, message="Label"),
        Field("value", 2, T.TYPE_DOUBLE),
        Field("timestamp", 3, T.TYPE_INT64),
    ]
    metadata = [
        Field("type", 1, T.TYPE_INT32),
        Field("metric_family_name", 2, T.TYPE_STRING),
        Field("help", 4, T.TYPE_STRING),
        Field("unit", 5, T.TYPE_STRING),
    ]

    def series(labels: Field) -> list[Field]:
        return [
            labels,
            Field("samples", 2, T.TYPE_MESSAGE, repeated=True, message="Sample"),
            Field("exemplars", 3, T.TYPE_MESSAGE, repeated=True, message="Exemplar"),
            Field("histograms", 4, T.TYPE_MESSAGE, repeated=True, message="Histogram"),
        ]

    def request(series_type: str) -> list[Field]:
        return [
            Field("timeseries", 1, T.TYPE_MESSAGE, repeated=True, message=series_type),
            Field("metadata", 3, T.TYPE_MESSAGE, repeated=True, message="MetricMetadata"),
        ]

    return protodesc.build(
        "backhaul_prompb.proto",
        "prometheus",
        {
            "Label": label,
            # A Label with its strings as bytes: tells a label whose only fault is bad UTF-8 (the series
            # is dropped and counted) from a malformed message (the request is refused).
            "LabelBytes": [Field("name", 1, T.TYPE_BYTES), Field("value", 2, T.TYPE_BYTES)],
            "Sample": sample,
            "Exemplar": exemplar,
            **protodesc.histogram_messages(),
            "TimeSeries": series(Field("labels", 1, T.TYPE_MESSAGE, repeated=True, message="Label")),
            "MetricMetadata": metadata,
            "WriteRequest": request("TimeSeries"),
            # The same messages for parsing, with a series' labels read as raw bytes: a
            # length-delimited Label on the wire is also a valid `bytes` field, and a series' raw
            # label bytes are the key of the label cache, so a series seen before costs one dict
            # lookup instead of a Python object per label name and value.
            "TimeSeriesRawLabels": series(Field("labels", 1, T.TYPE_BYTES, repeated=True)),
            "WriteRequestRawLabels": request("TimeSeriesRawLabels"),
            # A request's series as keys of the label cache: parsed, stripped of what they do not
            # declare (samples, unknown fields), each series serializes to its labels exactly as
            # they came, and to its exemplars and histograms if it has any.
            "KeySeries": [
                Field("labels", 1, T.TYPE_BYTES, repeated=True),
                Field("exemplars", 3, T.TYPE_BYTES, repeated=True),
                Field("histograms", 4, T.TYPE_BYTES, repeated=True),
            ],
            "KeyRequest": [Field("timeseries", 1, T.TYPE_MESSAGE, repeated=True, message="KeySeries")],
        },
    )


_MESSAGES = _build_messages()
WriteRequest = _MESSAGES["WriteRequest"]
WriteRequestRawLabels = _MESSAGES["WriteRequestRawLabels"]
Label = _MESSAGES["Label"]
LabelBytes = _MESSAGES["LabelBytes"]
KeySeries = _MESSAGES["KeySeries"]
KeyRequest = _MESSAGES["KeyRequest"]


def is_stale_marker(value: float) -> bool:
    """Prometheus marks a vanished series with this one NaN bit pattern (0x7ff0000000000002)."""
    return math.isnan(value) and struct.pack("<d", value) == STALE_NAN_BYTES


STALE_NAN_BYTES = (0x7FF0000000000002).to_bytes(8, "little")
