"""Prometheus remote write 1.0: snappy-compressed protobuf ``WriteRequest``.

One module per concern:

- ``messages``: the protobuf message classes (built at import time from field lists, no ``_pb2``),
  their fields, and Prometheus' stale marker.
- ``negotiation``: the ``Content-Type`` a request carries, telling 1.0 from 2.0 (``remote_write_v2``).
- ``decoding``: a body to :class:`Decoded` within the receiver's :class:`Limits`.
- ``labelcache``: label sets decoded once and looked up by their raw bytes.
- ``encoding``: samples to bodies, split into requests the way Prometheus sends them.

Callers import this package (``from backhaul.wire import remote_write as rw``); the names below are
its API.
"""

from backhaul.wire.remote_write.decoding import (
    MAX_ABS_TIMESTAMP_MS,
    Decoded,
    LabelCache,
    Limits,
    decode,
    decode_histograms,
    decompress,
    snappy_uncompressed_length,
    unknown_field_numbers,
)
from backhaul.wire.remote_write.encoding import encode
from backhaul.wire.remote_write.labelcache import label_problem
from backhaul.wire.remote_write.messages import STALE_NAN_BYTES, WriteRequest, is_stale_marker
from backhaul.wire.remote_write.negotiation import ACCEPTED, CONTENT_TYPE, Message, header_problem, negotiate

__all__ = [
    "ACCEPTED",
    "CONTENT_TYPE",
    "MAX_ABS_TIMESTAMP_MS",
    "STALE_NAN_BYTES",
    "Decoded",
    "LabelCache",
    "Limits",
    "Message",
    "WriteRequest",
    "decode",
    "decode_histograms",
    "decompress",
    "encode",
    "header_problem",
    "is_stale_marker",
    "label_problem",
    "negotiate",
    "snappy_uncompressed_length",
    "unknown_field_numbers",
]
