"""The chunk's value columns: timestamps as delta-of-delta, values as scaled decimals or XOR'd floats.

Each column is a run of u64 (or i64) words, byte-shuffled: all first bytes, then all second bytes,
and so on (little-endian words):

    times      n_samples x i64: the timestamp column (series after series) as delta-of-delta; the
               first entry is the first timestamp itself
    integers   u64 per sample of the decimal series (kind 1 + k): zigzag-encoded differences of the
               scaled integers (value x 10^k), each series starting from 0
    floats     u64 per sample of the float series (kind 0): each value's IEEE-754 bits XOR the
               previous value's bits in that column

Why two value columns: exporters print most values as short decimals (integer counters and gauges,
CPU seconds in hundredths, temperatures in thousandths, durations in nanoseconds), and the
difference of two such values as an integer is a few significant bits, where the XOR of their
IEEE-754 forms scatters bits across the mantissa. Values that are not short decimals (sums of floats,
ratios, NaN, infinities, -0.0) keep the XOR encoding. Either way every value keeps its exact bits:
a decimal n x 10^-k is decoded as the correctly rounded quotient n / 10^k, which is the value the
encoder verified. Regular scrapes make delta-of-delta zero, and byte-shuffling puts the bytes that
do vary next to each other, so zstd (the stored and sent form) squeezes every column hard.
"""

from __future__ import annotations

import math
import sys
from array import array

from backhaul.wire.errors import WireError

LITTLE = sys.byteorder == "little"
MAX_DECIMALS = 15
# Scaled integers stay well inside the range where a float holds every integer exactly.
MAX_SCALED = 2**52


def sample_counts(data: bytes, pos: int, n_series: int, n_samples: int) -> array:  # type: ignore[type-arg]
    """The chunk's per-series sample counts (u32 each, from ``pos``); WireError unless each is at least
    one and they add up to ``n_samples``."""
    counts = array("I")
    counts.frombytes(data[pos : pos + 4 * n_series])
    if not LITTLE:
        counts.byteswap()
    if sum(counts) != n_samples or 0 in counts:
        raise WireError(f"chunk: per-series counts do not add up to {n_samples} samples")
    return counts


def shuffle(column: array) -> bytes:  # type: ignore[type-arg]
    if not LITTLE:
        column.byteswap()
    raw = column.tobytes()
    return b"".join(raw[i::8] for i in range(8))


def unshuffle(data: bytes, typecode: str) -> array:  # type: ignore[type-arg]
    n = len(data) // 8
    raw = bytearray(len(data))
    for i in range(8):
        raw[i::8] = data[i * n : (i + 1) * n]
    column = array(typecode)
    column.frombytes(bytes(raw))
    if not LITTLE:
        column.byteswap()
    return column


def decimal_scale(values: list[float]) -> int | None:
    """The fewest fractional digits k that hold every value exactly as n / 10^k, or None.

    None for NaN, infinities, -0.0 and values that are not short decimals (their exact bits would not
    survive). Exactness is checked, not assumed: n / 10^k is Python's correctly rounded integer
    division, the same one the decoder does.
    """
    k = 0
    scale = 1
    for v in values:
        while True:
            try:
                n = round(v * scale)
            except (ValueError, OverflowError):  # NaN or infinity
                return None
            if -MAX_SCALED < n < MAX_SCALED and n / scale == v:
                if n == 0 and math.copysign(1.0, v) < 0:
                    return None  # -0.0 == 0.0, but its sign bit must survive
                break
            k += 1
            if k > MAX_DECIMALS:
                return None
            scale *= 10
    # A value that fitted an earlier, smaller k must hold at the final one too (v x 10^k may have
    # outgrown the range where the product is exact).
    for v in values:
        n = round(v * scale)
        if not -MAX_SCALED < n < MAX_SCALED or n / scale != v:
            return None
    return k


_NEG_ZERO = array("d", [-0.0]).tobytes()


def _has_negative_zero(values: list[float]) -> bool:
    raw = array("d", values).tobytes()
    at = raw.find(_NEG_ZERO)
    while at != -1:
        if at % 8 == 0:
            return True
        at = raw.find(_NEG_ZERO, at + 1)
    return False


def scaled_integers(values: list[float]) -> tuple[int, list[int]] | None:
    """``(k, [v x 10^k ...])`` for the fewest digits k that hold every value exactly, or None.

    The same answer as :func:`decimal_scale`, computed a column at a time (list operations run in C)
    instead of value by value, since the encoder runs this for every series of every chunk.
    """
    try:
        if all(map(float.is_integer, values)):
            k, ns = 0, list(map(int, values))
        else:
            k0 = decimal_scale(values[:8])  # a few values tell the likely k, or that these are floats
            if k0 is None:
                return None
            scale = 10**k0
            ns = [round(v * scale) for v in values]
            if [n / scale for n in ns] != values:
                k1 = decimal_scale(values)  # some later value needs more digits (or is no decimal)
                if k1 is None:
                    return None
                scale = 10**k1
                k0, ns = k1, [round(v * scale) for v in values]
            k = k0
    except TypeError:  # an int among the values (float.is_integer wants floats)
        return scaled_integers([float(v) for v in values])
    except (ValueError, OverflowError):  # NaN or infinity
        return None
    if ns and (max(ns) >= MAX_SCALED or min(ns) <= -MAX_SCALED):
        return None
    if 0 in ns and _has_negative_zero(values):
        return None  # -0.0 == 0.0, but its sign bit must survive
    return k, ns


def zigzag_deltas(ints: list[int]) -> list[int]:
    return [((b - a) << 1) ^ ((b - a) >> 63) for a, b in zip([0, *ints], ints, strict=False)]
