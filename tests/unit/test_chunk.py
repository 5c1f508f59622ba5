import math
import random
import struct

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from backhaul.wire import TooLarge, WireError, chunk
from backhaul.wire.chunk import container
from backhaul.wire.chunk.columns import decimal_of
from backhaul.wire.series import SeriesMap

STALE = struct.unpack("<d", (0x7FF0000000000002).to_bytes(8, "little"))[0]


def bits(values):
    return [struct.pack("<d", v) for v in values]


def random_series(rng: random.Random, n_series: int = 50, n_samples: int = 20) -> SeriesMap:
    out: SeriesMap = {}
    for i in range(n_series):
        start = rng.randrange(1_600_000_000_000, 1_800_000_000_000)
        stamps = [start + k * 5000 + rng.randrange(-3, 4) for k in range(n_samples)]
        rng.shuffle(stamps) if i % 7 == 0 else None  # out-of-order within a series must survive too
        values = [
            rng.choice([rng.random() * 1e6, float(rng.randrange(100)), -0.0, math.inf, STALE]) for _ in range(n_samples)
        ]
        out[(("__name__", f"m{i}"), ("job", "node"), ("ünï", "cödé"))] = (stamps, values)
    return out


def test_round_trip_keeps_every_timestamp_and_value_bit():
    series = random_series(random.Random(1))
    decoded = chunk.decode(chunk.encode(series))
    assert decoded.keys() == series.keys()
    for labels, (stamps, values) in series.items():
        assert decoded[labels][0] == stamps
        assert bits(decoded[labels][1]) == bits(values)


def test_codec_round_trip_and_compresses_regular_scrapes():
    stamps = [1_700_000_000_000 + 5000 * k for k in range(720)]
    series: SeriesMap = {
        (("__name__", f"node_metric_{i}"), ("instance", "a:9100")): (stamps, [float(i)] * 720) for i in range(100)
    }
    codec = chunk.Codec()
    frame = codec.encode(series)
    assert codec.decode(frame, limit=10**8) == series
    # 72,000 constant, regularly spaced samples: far below a byte each.
    assert len(frame) / 72_000 < 0.2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:5], "shorter than a chunk header"),
        (lambda b: b"XXX" + b[3:], "bad magic"),
        (lambda b: b[:3] + bytes([9]) + b[4:], "unsupported version"),
        (lambda b: b[:-1], "header announces"),
        (lambda b: b + b"\0", "header announces"),
    ],
)
def test_malformed_chunks_are_refused_with_a_reason(mutate, message):
    data = chunk.encode({(("__name__", "up"),): ([1, 2], [1.0, 1.0])})
    with pytest.raises(WireError, match=message):
        chunk.decode(mutate(data))


def test_a_corrupt_series_table_is_refused():
    data = bytearray(chunk.encode({(("__name__", "up"),): ([1], [1.0])}))
    table_start = 4 + 8 + 4
    data[table_start] = ord("{")
    with pytest.raises(WireError, match="series table"):
        chunk.decode(bytes(data))


def test_decompression_is_capped_whatever_the_frame_claims():
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (50 * 1024 * 1024))
    assert len(bomb) < 10_000
    with pytest.raises(TooLarge):
        chunk.Codec().decompress(bomb, limit=1024 * 1024)


def test_garbage_is_not_a_zstd_frame():
    with pytest.raises(WireError, match="zstd"):
        chunk.Codec().decompress(b"definitely not zstd", limit=1000)


# A version 1 chunk as the previous encoder wrote it (one XOR'd value column): buffers and batches
# written by an older agent must stay readable after an upgrade.
V1_CHUNK = bytes.fromhex(
    "42484b0102000000050000003a0000005b5b225f5f6e616d655f5f222c227570222c226a6f62222c226e6f6465225d2c5b225f5f"
    "6e616d655f5f222c226e6f64655f6c6f616431225d5d0300000002000000008803639a68ab00c53ae51a00ff00cf3000ff008b74"
    "00ff0001fe00ff0000ff00ff0000ff00ff00000000000000000000000000000000000000000000000000000000000000f0f0f020"
    "203f3f3f0040"
)


def test_version_1_chunks_still_decode():
    assert chunk.decode(V1_CHUNK) == {
        (("__name__", "up"), ("job", "node")): ([1700000000000, 1700000005000, 1700000010003], [1.0, 0.0, 1.0]),
        (("__name__", "node_load1"),): ([1700000000001, 1700000005001], [0.25, math.inf]),
    }


@pytest.mark.parametrize(
    ("values", "scale"),
    [
        ([0.0, 1.0, 42.0, -7.0], 0),
        ([327.416, 1357.029, 0.5], 3),
        ([1795966.612, 0.000164831], 9),
        ([1.795966612e09, 0.000164831], None),  # 1.8e18 at 9 digits: beyond exact float products
        ([1e-15, 2e-15], 15),
        ([0.1 + 0.2], None),  # 0.30000000000000004: 17 digits
        ([1.0, math.nan], None),
        ([math.inf], None),
        ([-0.0], None),  # equal to 0.0, but the sign bit must survive
        ([2.0**60], None),  # beyond the integers a float holds exactly
        ([9621.669682929169], None),  # a float sum, as client libraries accumulate histograms
    ],
)
def test_decimal_scale_is_the_fewest_digits_that_hold_every_value(values, scale):
    assert chunk.decimal_scale(values) == scale
    # The column-at-a-time version the encoder uses gives the same answer, and the integers.
    scaled = chunk.scaled_integers(values)
    if scale is None:
        assert scaled is None
    else:
        assert scaled is not None and scaled[0] == scale
        assert [n / 10**scale for n in scaled[1]] == values


def test_scaled_integers_notices_a_later_value_that_needs_more_digits():
    values = [1.0] * 8 + [2.5, 3.25, -0.125]
    assert chunk.scaled_integers(values) == (3, [1000] * 8 + [2500, 3250, -125])
    assert chunk.scaled_integers([1.5] * 8 + [1 / 3]) is None
    assert chunk.scaled_integers([0.0, 1.0, -0.0]) is None
    assert chunk.scaled_integers([1, 2, 3]) == (0, [1, 2, 3])  # ints, as a sender's code may pass


def test_short_decimals_round_trip_exactly_and_cost_less_than_their_float_bits():
    rng = random.Random(7)
    stamps = [1_700_000_000_000 + 5000 * k for k in range(360)]
    series: SeriesMap = {}
    for i, digits in enumerate([0, 1, 2, 3, 6, 9, 12, 15] * 4):
        value = round(rng.uniform(-1e3, 1e3), digits)
        values = []
        for _ in stamps:  # a counter-like walk of short decimals, as an exporter prints them
            value = round(value + rng.randrange(0, 500) / 10**digits, digits)
            values.append(value)
        series[(("__name__", f"m{i}"), ("digits", str(digits)))] = (stamps, values)
    data = chunk.encode(series)
    decoded = chunk.decode(data)
    for labels, (ts, values) in series.items():
        assert decoded[labels][0] == ts
        assert bits(decoded[labels][1]) == bits(values)
    # The same values with their bits perturbed by one ulp are floats, not decimals: XOR'd bits.
    as_floats: SeriesMap = {k: (ts, [math.nextafter(v, math.inf) for v in vs]) for k, (ts, vs) in series.items()}
    zstd = zstandard.ZstdCompressor()
    assert len(zstd.compress(data)) < 0.6 * len(zstd.compress(chunk.encode(as_floats)))


def test_a_value_kind_out_of_range_is_refused():
    data = bytearray(chunk.encode({(("__name__", "up"),): ([1], [1.0])}))
    kinds_at = 4 + 8 + 4 + len(b'[["__name__","up"]]') + 4
    assert data[kinds_at] == 1  # an integer: decimal with 0 fractional digits
    data[kinds_at] = 99
    with pytest.raises(WireError, match="value kind"):
        chunk.decode(bytes(data))


def test_mixed_magnitudes_and_digits_in_one_series_round_trip_exactly():
    rng = random.Random(11)
    for trial in range(300):
        values: list[float] = []
        for _ in range(rng.randrange(1, 12)):
            digits = rng.randrange(0, 16)
            magnitude = 10 ** rng.randrange(0, 13)
            values.append(round(rng.uniform(-1, 1) * magnitude, digits))
        stamps = list(range(len(values)))
        series: SeriesMap = {(("__name__", f"m{trial}"),): (stamps, values)}
        decoded = chunk.decode(chunk.encode(series))
        assert bits(decoded[(("__name__", f"m{trial}"),)][1]) == bits(values), values


def test_a_chunk_without_its_table_decodes_once_the_table_is_put_back():
    series = random_series(random.Random(3), n_series=20, n_samples=5)
    raw = chunk.encode(series)
    table, stripped = chunk.split_table(raw)
    assert len(stripped) == len(raw) - len(table)
    assert table.startswith(b"[[") and chunk.table_digest(table) == chunk.table_digest(bytes(table))
    assert len(chunk.table_digest(table)) == chunk.TABLE_DIGEST_CHARS
    with pytest.raises(WireError):
        chunk.decode(stripped)  # alone it is not a chunk
    assert chunk.join_table(stripped, table) == raw
    with pytest.raises(WireError, match="still carries a table"):
        chunk.join_table(raw, table)
    with pytest.raises(WireError, match="version 2"):
        chunk.split_table(V1_CHUNK)


def test_chunks_that_share_a_series_table_keep_their_own_values_and_a_bad_table_is_still_refused():
    """Decoded tables are reused by their exact bytes (issue 16: commit after commit the agent merges
    chunks with the same table); only the labels are shared, and a table that differs in one byte is
    judged on its own."""
    rng = random.Random(7)
    first = random_series(rng, n_series=30, n_samples=1)
    second = {labels: ([ts[0] + 5000], [v[0] + 1.5]) for labels, (ts, v) in first.items()}
    a, b = chunk.encode(first), chunk.encode(second)
    table_start = 4 + 8 + 4
    assert a[table_start : table_start + 200] == b[table_start : table_start + 200]  # the same table

    def exact(series: SeriesMap) -> dict[object, object]:  # NaN (staleness) never equals itself: compare bits
        return {labels: (ts, bits(v)) for labels, (ts, v) in series.items()}

    assert exact(chunk.decode(a)) == exact(first)
    assert exact(chunk.decode(b)) == exact(second)
    bad = bytearray(b)
    bad[table_start + 2] = ord("7")  # '[["__name__"...' -> '[[7__name__...': not a list of strings
    with pytest.raises(WireError, match="series"):
        chunk.decode(bytes(bad))
    assert exact(chunk.decode(a)) == exact(first)  # the good table is still served


def test_a_decoded_series_table_holds_one_tuple_per_distinct_label_pair():
    # 10k series of one page repeat a few hundred pairs; one tuple per use was 8x the memory (issue 16)
    series: SeriesMap = {
        (("__name__", "m"), ("cpu", str(i % 4)), ("job", "node"), ("n", str(i))): ([1000], [float(i)])
        for i in range(200)
    }
    decoded = chunk.decode(chunk.encode(series))
    assert decoded.keys() == series.keys()
    pairs = [pair for labels in decoded for pair in labels]
    assert len(pairs) == 800 and len({id(pair) for pair in pairs}) == len(set(pairs)) == 1 + 4 + 1 + 200


def test_a_series_table_seen_twice_is_decoded_once_more_however_big():
    # a 10k series table is ~1 MB: it used to be too big to keep, and was decoded at every merge
    series: SeriesMap = {
        (("__name__", "m"), ("n", f"{i:08d}"), ("path", "/var/lib/" + "x" * 80)): ([1000], [1.0]) for i in range(3000)
    }
    raw = chunk.encode(series)
    decoded = [list(chunk.decode(raw)) for _ in range(3)]
    assert len(raw) > 256 << 10 and decoded[0] == decoded[1] == decoded[2] == list(series)
    assert decoded[0][0] is not decoded[1][0]  # seen once: not kept
    assert all(a is b for a, b in zip(decoded[1], decoded[2], strict=True))  # seen twice: kept


# Values as exporters and senders give them: short decimals of every size, float sums, integers past
# 2^52, -0.0, NaN, infinities, stale markers.
_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.builds(round, st.floats(-1e12, 1e12), st.integers(0, 15)),
    st.integers(-(2**60), 2**60).map(float),
    st.sampled_from([-0.0, 0.0, STALE, 2.0**52, -(2.0**52), 1e-5, 1e16]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_VALUES, min_size=1, max_size=40))
def test_the_column_at_a_time_encode_of_single_samples_equals_the_series_by_series_one(values):
    series: SeriesMap = {(("__name__", f"m{i}"),): ([1_700_000_000_000 + i], [v]) for i, v in enumerate(values)}
    assert container._single_sample_columns(list(series.items())) == container._columns(list(series.items()))
    decoded = chunk.decode(chunk.encode(series))
    assert [bits(v) for _, v in decoded.values()] == [bits(v) for _, v in series.values()]


@settings(max_examples=2000, deadline=None)
@given(_VALUES.filter(lambda v: not v.is_integer()))
def test_a_decimal_read_from_repr_is_the_one_decimal_scale_finds(value):
    k = chunk.decimal_scale([value])
    assert decimal_of(value) == (None if k is None else (k, round(value * 10**k)))


@settings(max_examples=1000, deadline=None)
@given(st.lists(_VALUES, min_size=1, max_size=20))
def test_scaled_integers_of_a_series_are_decimal_scale_and_its_integers(values):
    k = chunk.decimal_scale(values)
    assert chunk.scaled_integers(values) == (None if k is None else (k, [round(v * 10**k) for v in values]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_VALUES, min_size=1, max_size=3), min_size=1, max_size=30))
def test_a_chunk_of_single_and_longer_series_keeps_each_series_samples(series_values):
    series: SeriesMap = {
        (("__name__", f"m{i}"),): ([1_700_000_000_000 + i * 10 + k for k in range(len(vs))], vs)
        for i, vs in enumerate(series_values)
    }
    decoded = chunk.decode(chunk.encode(series))
    assert decoded.keys() == series.keys()
    for labels, (stamps, values) in series.items():
        assert decoded[labels][0] == stamps and bits(decoded[labels][1]) == bits(values)
