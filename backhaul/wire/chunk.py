"""The columnar chunk: backhaul's unit of storage in the agent's buffer and of transfer in batches.

Layout of an uncompressed chunk, version 1 (all integers little-endian; see docs/wire-format.md):

    magic      b"BHK"          3 bytes
    version    u8              1
    n_series   u32
    n_samples  u32
    table_len  u32, then a UTF-8 JSON array with one flat array [name, value, name, value, ...]
               per series, label names sorted
    counts     n_series x u32, samples per series, in table order
    times      n_samples x i64, byte-shuffled: the timestamp column (series after series) as
               delta-of-delta; the first entry is the first timestamp itself
    values     n_samples x u64, byte-shuffled: each value's IEEE-754 bits XOR the previous
               value's bits in the column

Regular scrapes make delta-of-delta zero and unchanged values XOR to zero, and byte-shuffling puts the
bytes that do vary next to each other, so zstd (the stored and sent form) squeezes both columns hard.
Values keep their exact bits: NaN payloads, Prometheus stale markers and -0.0 survive a round trip.
"""

from __future__ import annotations

import io
import json
import operator
import struct
import sys
from array import array
from itertools import accumulate

import zstandard

from backhaul.wire.errors import TooLarge, WireError
from backhaul.wire.series import Labels, SeriesMap

MAGIC = b"BHK"
VERSION = 1
_HEADER = struct.Struct("<3sBII")
_U32 = struct.Struct("<I")
_LITTLE = sys.byteorder == "little"


def _shuffle(column: array) -> bytes:  # type: ignore[type-arg]
    if not _LITTLE:
        column.byteswap()
    raw = column.tobytes()
    return b"".join(raw[i::8] for i in range(8))


def _unshuffle(data: bytes, typecode: str) -> array:  # type: ignore[type-arg]
    n = len(data) // 8
    raw = bytearray(len(data))
    for i in range(8):
        raw[i::8] = data[i * n : (i + 1) * n]
    column = array(typecode)
    column.frombytes(bytes(raw))
    if not _LITTLE:
        column.byteswap()
    return column


def encode(series: SeriesMap) -> bytes:
    """Encode samples into an uncompressed chunk (use :func:`compress` for the stored form)."""
    table: list[list[str]] = []
    counts = array("I")
    stamps: list[int] = []
    values: list[float] = []
    for labels, (ts, vals) in series.items():
        if len(ts) != len(vals):
            raise ValueError(f"series {labels!r}: {len(ts)} timestamps but {len(vals)} values")
        if not ts:
            continue
        table.append([part for pair in labels for part in pair])
        counts.append(len(ts))
        stamps.extend(ts)
        values.extend(vals)

    deltas = [b - a for a, b in zip([0, *stamps], stamps, strict=False)]
    dod = array("q", [b - a for a, b in zip([0, *deltas], deltas, strict=False)])
    bits = array("Q", array("d", values).tobytes())
    xored = array("Q", [b ^ a for a, b in zip([0, *bits], bits, strict=False)])
    if not _LITTLE:
        counts.byteswap()
    table_bytes = json.dumps(table, separators=(",", ":"), ensure_ascii=False).encode()
    return b"".join(
        (
            _HEADER.pack(MAGIC, VERSION, len(table), len(stamps)),
            _U32.pack(len(table_bytes)),
            table_bytes,
            counts.tobytes(),
            _shuffle(dod),
            _shuffle(xored),
        )
    )


def decode(data: bytes) -> SeriesMap:
    """Decode an uncompressed chunk; raises :class:`WireError` naming what is malformed."""
    if len(data) < _HEADER.size + _U32.size:
        raise WireError(f"chunk: {len(data)} bytes is shorter than a chunk header")
    magic, version, n_series, n_samples = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError(f"chunk: bad magic {magic!r}")
    if version != VERSION:
        raise WireError(f"chunk: unsupported version {version} (this build reads {VERSION})")
    (table_len,) = _U32.unpack_from(data, _HEADER.size)
    pos = _HEADER.size + _U32.size
    expected = pos + table_len + 4 * n_series + 16 * n_samples
    if len(data) != expected:
        raise WireError(f"chunk: {len(data)} bytes, but its header announces {expected}")
    try:
        table = json.loads(data[pos : pos + table_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"chunk: series table is not JSON ({exc})") from exc
    if not isinstance(table, list) or len(table) != n_series:
        raise WireError(f"chunk: series table does not hold {n_series} series")
    pos += table_len
    counts = array("I")
    counts.frombytes(data[pos : pos + 4 * n_series])
    if not _LITTLE:
        counts.byteswap()
    if sum(counts) != n_samples or 0 in counts:
        raise WireError(f"chunk: per-series counts do not add up to {n_samples} samples")
    pos += 4 * n_series
    dod = _unshuffle(data[pos : pos + 8 * n_samples], "q")
    xored = _unshuffle(data[pos + 8 * n_samples :], "Q")
    stamps = list(accumulate(accumulate(dod)))
    bits = array("Q", accumulate(xored, operator.xor))
    values = array("d", bits.tobytes()).tolist()

    out: SeriesMap = {}
    start = 0
    for flat, count in zip(table, counts, strict=True):
        labels = _labels(flat)
        end = start + count
        entry = out.get(labels)
        if entry is None:
            out[labels] = (stamps[start:end], values[start:end])
        else:  # the same series twice in one chunk is legal, if wasteful
            entry[0].extend(stamps[start:end])
            entry[1].extend(values[start:end])
        start = end
    return out


def _labels(flat: object) -> Labels:
    if not isinstance(flat, list) or not flat or len(flat) % 2 or not all(isinstance(part, str) for part in flat):
        raise WireError("chunk: a series entry is not a non-empty list of label name/value strings")
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


class Codec:
    """zstd compression of chunks, with a hard cap on what decompression may produce.

    Args:
        level: zstd level for :meth:`compress` (3 is zstd's default; higher trades CPU for bytes).
    """

    def __init__(self, level: int = 3) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def compress(self, chunk: bytes) -> bytes:
        return bytes(self._compressor.compress(chunk))

    def decompress(self, frame: bytes, limit: int) -> bytes:
        """Decompress one zstd frame; more than ``limit`` bytes of output raises :class:`TooLarge`.

        Streaming with a bounded read means a decompression bomb costs at most ``limit`` bytes of
        memory, whatever size its frame header claims.
        """
        try:
            with self._decompressor.stream_reader(io.BytesIO(frame)) as reader:
                out = reader.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise WireError(f"zstd: {exc}") from exc
        if len(out) > limit:
            raise TooLarge("decompressed chunk", limit)
        return bytes(out)

    def encode(self, series: SeriesMap) -> bytes:
        return self.compress(encode(series))

    def decode(self, frame: bytes, limit: int) -> SeriesMap:
        return decode(self.decompress(frame, limit))
