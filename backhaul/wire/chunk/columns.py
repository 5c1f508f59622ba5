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
from itertools import compress
from operator import not_

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


def decimal_of(v: float) -> tuple[int, int] | None:
    """``(k, n)`` with ``v == n / 10^k`` for the fewest digits k, or None: :func:`decimal_scale` of one
    value that is not an integer, read from ``repr`` instead of tried digit by digit.

    repr prints the shortest digits that read back as ``v``. A decimal n / 10^k that is ``v`` once
    correctly rounded reads back as ``v`` too, with no more significant digits than its k digits after
    the point and the same ones before it (rounding is monotonic), so no k below repr's can hold ``v``,
    and repr's own digits at its k do. decimal_scale takes that k only if ``v x 10^k`` rounds to them
    (the product is inexact): checked, and anything else is left to it. A true float (17 digits) costs
    one repr here instead of sixteen tries; a value of 9 digits, ten.
    """
    text = repr(v)
    point = text.find(".")
    if point > 0 and "e" not in text:  # not NaN, an infinity or an exponent form
        k = len(text) - point - 1
        if k > MAX_DECIMALS:
            return None
        n = int(text[:point] + text[point + 1 :])
        if -MAX_SCALED < n < MAX_SCALED and round(v * 10**k) == n:
            return k, n
    k_least = decimal_scale([v])
    return None if k_least is None else (k_least, round(v * 10**k_least))


_NEG_ZERO = array("d", [-0.0]).tobytes()


def _negative_zeros(values: list[float]) -> list[int]:
    """Where ``values`` hold -0.0."""
    raw = array("d", values).tobytes()
    found = []
    at = raw.find(_NEG_ZERO)
    while at != -1:
        if at % 8 == 0:
            found.append(at // 8)
        at = raw.find(_NEG_ZERO, at + 1)
    return found


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
    if 0 in ns and _negative_zeros(values):
        return None  # -0.0 == 0.0, but its sign bit must survive
    return k, ns


def single_columns(values: list[float]) -> tuple[bytearray, list[int], list[float]]:
    """Each value's kind byte, then the integer and the float column, for series of one sample each
    (a commit of remote-write requests: every series once), a column at a time rather than series by
    series; the same bytes as :func:`scaled_integers` and :func:`zigzag_deltas` give each value alone."""
    integral = list(map(float.is_integer, values))  # False for fractions, NaN and infinities
    scaled = [int(v) if whole else 0 for v, whole in zip(values, integral, strict=True)]
    kinds = bytearray(integral)  # 1: a decimal of no digits after the point; 0: a float (FLOAT_KIND)
    if scaled and (max(scaled) >= MAX_SCALED or min(scaled) <= -MAX_SCALED):  # a byte counter past 2^52
        for at in [at for at, n in enumerate(scaled) if not -MAX_SCALED < n < MAX_SCALED]:
            kinds[at] = 0
    if 0 in scaled:
        for at in _negative_zeros(values):  # -0.0 == 0.0, but its sign bit must survive
            kinds[at] = 0
    for at in compress(range(len(values)), map(not_, integral)):  # only the values that are not integers
        decimal = decimal_of(values[at])
        if decimal is not None:
            kinds[at] = 1 + decimal[0]
            scaled[at] = decimal[1]
    integers = [(n << 1) ^ (n >> 63) for n in compress(scaled, kinds)]  # each series starts from 0
    return kinds, integers, list(compress(values, map(not_, kinds)))


def zigzag_deltas(ints: list[int]) -> list[int]:
    return [((b - a) << 1) ^ ((b - a) >> 63) for a, b in zip([0, *ints], ints, strict=False)]
