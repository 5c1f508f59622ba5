"""Series tables sent by reference.

A device sends the same series over and over; in small batches the series table is most of the
bytes. A collector that keeps tables (it says so in a reply header) lets the agent send a chunk
without its table, naming the table by digest in the batch header (docs/wire-format.md).

A chunk sent without its table is the chunk with ``table_len`` 0 and no table bytes; everything
else (header, counts, kinds, columns, sections; ``chunk.header``) stays as it is. The digest is the
first 128 bits of the SHA-256 of the table bytes, as 32 hex characters.
"""

from __future__ import annotations

import hashlib

from backhaul.wire.chunk.header import HEADER, MAGIC, TABLED, U32
from backhaul.wire.errors import WireError

TABLE_DIGEST_CHARS = 32


def table_digest(table: bytes) -> str:
    """The name a series table goes by: the first 128 bits of its SHA-256, in hex."""
    return hashlib.sha256(table).hexdigest()[:TABLE_DIGEST_CHARS]


def table_of(raw: bytes) -> bytes:
    """The series table of an uncompressed version 2 or 3 chunk (a slice: nothing else is copied)."""
    if len(raw) < HEADER.size + U32.size or raw[:3] != MAGIC or raw[3] not in TABLED:
        raise WireError("chunk: not a version 2 or 3 chunk, its table cannot be split off")
    (table_len,) = U32.unpack_from(raw, HEADER.size)
    start = HEADER.size + U32.size
    if start + table_len > len(raw):
        raise WireError("chunk: series table runs past the chunk")
    return raw[start : start + table_len]


def split_table(raw: bytes) -> tuple[bytes, bytes]:
    """``(table, chunk without it)`` of an uncompressed version 2 or 3 chunk; the rest is left as it is."""
    table = table_of(raw)
    start = HEADER.size + U32.size
    return table, raw[: HEADER.size] + U32.pack(0) + raw[start + len(table) :]


def join_table(stripped: bytes, table: bytes) -> bytes:
    """The inverse of :func:`split_table`: put ``table`` back into a chunk sent without it."""
    if len(stripped) < HEADER.size + U32.size or stripped[:3] != MAGIC or stripped[3] not in TABLED:
        raise WireError("chunk: a chunk sent without its table is not a version 2 or 3 chunk")
    if U32.unpack_from(stripped, HEADER.size)[0] != 0:
        raise WireError("chunk: a chunk sent by table reference still carries a table")
    start = HEADER.size + U32.size
    return stripped[: HEADER.size] + U32.pack(len(table)) + table + stripped[start:]
