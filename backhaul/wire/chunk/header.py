"""The chunk's header, its versions and the value kinds of its series.

Layout of an uncompressed chunk, version 2 (all integers little-endian; see docs/wire-format.md):

    magic      b"BHK"          3 bytes
    version    u8              2
    n_series   u32
    n_samples  u32
    table_len  u32, then a UTF-8 JSON array with one flat array [name, value, name, value, ...]
               per series, label names sorted
    counts     n_series x u32, samples per series, in table order
    kinds      n_series x u8: 0 = the series' values are stored as floats, 1 + k = every value is a
               decimal with at most k fractional digits (k <= 15), stored as the integer value x 10^k
    times      n_samples x i64, byte-shuffled, delta-of-delta         (layout: chunk.columns)
    integers   u64 per sample of the decimal series, byte-shuffled   (layout: chunk.columns)
    floats     u64 per sample of the float series, byte-shuffled     (layout: chunk.columns)

Version 3 is version 2 plus native histograms and metadata: a series of kind 0x80 holds native
histograms (its timestamps in the times column like any other series, its histograms in a histogram
section after the floats column), and a metadata section follows:

    hist_len   u32, then the histogram section (layout: chunk.histograms)
    meta_len   u32, then UTF-8 JSON {family: [type, help, unit], ...} (backhaul.wire.metadata)

``n_samples`` counts float and histogram samples. The encoder writes version 2 whenever a chunk has
neither histograms nor metadata, so such chunks stay readable by older collectors.

Version 1 chunks (one XOR'd value column, no kinds) are still decoded: buffers written by an older
agent, and batches from one, stay readable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from backhaul.wire.errors import WireError

MAGIC = b"BHK"
VERSION = 2  # written for chunks of float samples only, which every reader so far takes
VERSION_HISTOGRAMS = 3  # written when a chunk also holds native histograms or metadata
READABLE = (1, 2, 3)
TABLED = (VERSION, VERSION_HISTOGRAMS)  # versions whose series table can be sent by reference
HEADER = struct.Struct("<3sBII")
U32 = struct.Struct("<I")
FLOAT_KIND = 0
# Timestamps (ms) a chunk may hold: a date, and well inside a signed 64-bit column.
MAX_ABS_TIMESTAMP_MS = 2**53
HISTOGRAM_KIND = 0x80  # version 3: the series' samples are native histograms


@dataclass(frozen=True)
class Shape:
    """What a chunk's first bytes declare, read before anything else is decompressed or decoded.

    Args:
        version: the chunk version.
        n_series, n_samples: the counts in the header.
        table_len: bytes of its series table (0 in a chunk sent by table reference).
        min_len: the fewest bytes such a chunk can have (its exact length for versions 1 and 2).
    """

    version: int
    n_series: int
    n_samples: int
    table_len: int
    min_len: int


PREFIX_LEN = HEADER.size + U32.size


def shape(prefix: bytes) -> Shape:
    """The :class:`Shape` of a chunk from its first :data:`PREFIX_LEN` bytes; WireError if they are not a chunk's."""
    if len(prefix) < PREFIX_LEN:
        raise WireError(f"chunk: {len(prefix)} bytes is shorter than a chunk header")
    magic, version, n_series, n_samples = HEADER.unpack_from(prefix)
    if magic != MAGIC:
        raise WireError(f"chunk: bad magic {magic!r}")
    if version not in READABLE:
        raise WireError(f"chunk: unsupported version {version} (this build reads {', '.join(map(str, READABLE))})")
    (table_len,) = U32.unpack_from(prefix, HEADER.size)
    if version < VERSION_HISTOGRAMS:
        kinds = n_series if version >= 2 else 0
        min_len = PREFIX_LEN + table_len + 4 * n_series + kinds + 16 * n_samples
    else:
        min_len = PREFIX_LEN + table_len + 5 * n_series + 8 * n_samples + 8
    return Shape(version, n_series, n_samples, table_len, min_len)
