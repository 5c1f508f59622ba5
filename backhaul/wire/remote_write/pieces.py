"""A large ``WriteRequest`` cut into smaller ones, so that decoding it never holds more than one piece's
protobuf objects at a time and can stop as soon as its decoded memory passes the request's bound.

A ``WriteRequest`` is nothing but its top-level fields one after another (``timeseries`` 1,
``metadata`` 3), so any run of whole top-level fields is itself a valid ``WriteRequest``: the pieces
are slices of the body at field boundaries, each at most ``piece_bytes`` unless one field alone is
larger. Walking the top level costs one step per series, not per sample.
"""

from __future__ import annotations

from collections.abc import Iterator

from backhaul.wire.errors import WireError

# 2.0's symbols and timeseries: a 2.0 Request sent as 1.0.
V2_FIELDS = frozenset((4, 5))


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(raw):
            raise WireError("protobuf: not a WriteRequest (truncated varint)")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireError("protobuf: not a WriteRequest (varint longer than 10 bytes)")


def pieces(raw: bytes, piece_bytes: int) -> Iterator[tuple[bytes, set[int]]]:
    """Slices of ``raw`` at top-level field boundaries, each with the field numbers it holds."""
    start = pos = 0
    numbers: set[int] = set()
    while pos < len(raw):
        key, at = _varint(raw, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("protobuf: not a WriteRequest (field number 0)")
        if wire_type == 0:
            _, end = _varint(raw, at)
        elif wire_type == 1:
            end = at + 8
        elif wire_type == 2:
            length, at = _varint(raw, at)
            end = at + length
        elif wire_type == 5:
            end = at + 4
        else:
            raise WireError(f"protobuf: not a WriteRequest (wire type {wire_type})")
        if end > len(raw):
            raise WireError("protobuf: not a WriteRequest (a field runs past the body)")
        if end - start > piece_bytes and pos > start:
            yield raw[start:pos], numbers
            start, numbers = pos, set()
        numbers.add(number)
        pos = end
    if pos > start:
        yield raw[start:pos], numbers
