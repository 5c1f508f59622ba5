import math
import random
import struct

import pytest
import zstandard

from backhaul.wire import TooLarge, WireError, chunk

STALE = struct.unpack("<d", (0x7FF0000000000002).to_bytes(8, "little"))[0]


def bits(values):
    return [struct.pack("<d", v) for v in values]


def random_series(rng: random.Random, n_series: int = 50, n_samples: int = 20):
    out = {}
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
    series = {
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
