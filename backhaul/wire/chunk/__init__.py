"""The columnar chunk: backhaul's unit of storage in the agent's buffer and of transfer in batches.

One module per part of the format, each with its byte layout:

- ``header``: the container -- magic, version, counts, series table, kinds -- and the versions.
- ``columns``: the timestamp column and the two value columns (scaled decimals, XOR'd floats).
- ``histograms``: the native-histogram section of a version 3 chunk.
- ``container``: :class:`Contents` to uncompressed chunk bytes and back, with the metadata section.
- ``codec``: the stored and sent form, one zstd frame (:class:`Codec`).
- ``tables``: series tables sent by reference (:func:`table_digest`, :func:`split_table`, ...).

Callers import this package (``from backhaul.wire import chunk``); the names below are its API.
"""

from backhaul.wire.chunk.codec import Codec
from backhaul.wire.chunk.columns import MAX_DECIMALS, decimal_scale, scaled_integers
from backhaul.wire.chunk.container import Contents, decode, decode_contents, encode
from backhaul.wire.chunk.header import (
    FLOAT_KIND,
    HISTOGRAM_KIND,
    MAGIC,
    MAX_ABS_TIMESTAMP_MS,
    VERSION,
    VERSION_HISTOGRAMS,
    Shape,
    shape,
)
from backhaul.wire.chunk.tables import TABLE_DIGEST_CHARS, join_table, split_table, table_digest, table_of

__all__ = [
    "FLOAT_KIND",
    "HISTOGRAM_KIND",
    "MAGIC",
    "MAX_ABS_TIMESTAMP_MS",
    "MAX_DECIMALS",
    "TABLE_DIGEST_CHARS",
    "VERSION",
    "VERSION_HISTOGRAMS",
    "Codec",
    "Contents",
    "Shape",
    "decimal_scale",
    "decode",
    "decode_contents",
    "encode",
    "join_table",
    "scaled_integers",
    "shape",
    "split_table",
    "table_digest",
    "table_of",
]
