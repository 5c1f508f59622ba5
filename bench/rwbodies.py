"""Remote-write request bodies for the ingest benchmark, built the way Prometheus' queue manager does.

Prometheus shards series by hash, so each series always travels through the same connection and
stays in order; every sample is its own ``TimeSeries`` entry (labels repeated), and a shard sends
when it holds ``max_samples_per_send`` samples. Encoding millions of samples through the protobuf
library is slow in Python, so the serialized labels of each series are computed once and the
samples are spliced in as bytes; :func:`check_against_protobuf` proves the result byte-identical to
what ``backhaul.wire.remote_write.WriteRequest`` serializes.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import cramjam

from backhaul.wire import remote_write as rw
from backhaul.wire.series import Labels
from backhaul.wire.varint import varint
from bench.workload import INTERVAL_MS, Workload

_DOUBLE = struct.Struct("<d")


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + varint(len(payload)) + payload


def _label_bytes(labels: Labels) -> bytes:
    out = b""
    for name, value in labels:
        label = (_field(0x0A, name.encode()) if name else b"") + (_field(0x12, value.encode()) if value else b"")
        out += _field(0x0A, label)
    return out


@dataclass
class Plan:
    """The ingest workload held compactly: values and timestamps per round, series split in shards."""

    n_series: int
    n_rounds: int
    shards: list[list[int]]  # series indices per shard, in workload order
    target_of: list[int]  # series index -> target index (timestamps are per target)
    stamps: list[array]  # type: ignore[type-arg]  # per round: timestamp per target
    values: list[array]  # type: ignore[type-arg]  # per round: value per series
    prefix_value: list[bytes]  # per series: TimeSeries header + labels + Sample header (value set)
    prefix_zero: list[bytes]  # the same for value +0.0, which proto3 leaves out


def plan(workload: Workload, rounds: int, shards: int) -> Plan:
    """Record ``rounds`` scrape rounds of ``workload`` and assign each series to a shard."""
    index = {labels: i for i, labels in enumerate(workload.labels)}
    target_keys: dict[tuple[str, str], int] = {}
    target_of = []
    for labels in workload.labels:
        d = dict(labels)
        target_of.append(target_keys.setdefault((d["job"], d["instance"]), len(target_keys)))
    by_shard: list[list[int]] = [[] for _ in range(shards)]
    for i, labels in enumerate(workload.labels):
        by_shard[zlib.crc32(repr(labels).encode()) % shards].append(i)
    stamps, values = [], []
    for _base, series in workload.rounds(rounds):
        ts_row = array("q", [0] * len(target_keys))
        val_row = array("d", [0.0] * workload.n_series)
        for labels, (ts, vals) in series.items():
            i = index[labels]
            ts_row[target_of[i]] = ts[0]
            val_row[i] = vals[0]
        stamps.append(ts_row)
        values.append(val_row)
    prefix_value: list[bytes] = []
    prefix_zero: list[bytes] = []
    for labels in workload.labels:
        lb = _label_bytes(labels)
        # Sample = value (tag 0x09, 8 bytes) + timestamp (tag 0x10, 6-byte varint for today's ms).
        for with_value, out in ((True, prefix_value), (False, prefix_zero)):
            sample_len = (9 if with_value else 0) + 7
            entry_len = len(lb) + 2 + sample_len
            out.append(
                b"\x0a" + varint(entry_len) + lb + b"\x12" + bytes([sample_len]) + (b"\x09" if with_value else b"")
            )
    return Plan(workload.n_series, len(stamps), by_shard, target_of, stamps, values, prefix_value, prefix_zero)


def _ts_bytes(ts: int) -> bytes:
    raw = varint(ts)
    if len(raw) != 6:  # keeps prefix lengths fixed; true for ms timestamps from 2004 to 2109
        raise ValueError(f"timestamp {ts} does not encode in 6 varint bytes")
    return b"\x10" + raw


def shard_bodies(
    p: Plan, shard: int, first: int, last: int, shift_ms: int, per_request: int
) -> Iterator[tuple[int, bytes]]:
    """``(samples, snappy body)`` for ``shard`` over rounds ``first..last-1``, timestamps moved by ``shift_ms``."""
    members = p.shards[shard]
    pv, pz, target_of = p.prefix_value, p.prefix_zero, p.target_of
    parts: list[bytes] = []
    n = 0
    pack = _DOUBLE.pack
    for r in range(first, last):
        ts_row = [_ts_bytes(t + shift_ms) for t in p.stamps[r]]
        vals = p.values[r]
        for i in members:
            v = vals[i]
            packed = pack(v)
            if packed == b"\x00" * 8:
                parts.append(pz[i])
            else:
                parts.append(pv[i])
                parts.append(packed)
            parts.append(ts_row[target_of[i]])
            n += 1
            if n == per_request:
                yield n, bytes(cramjam.snappy.compress_raw(b"".join(parts)))
                parts, n = [], 0
    if n:
        yield n, bytes(cramjam.snappy.compress_raw(b"".join(parts)))


def check_against_protobuf(p: Plan, labels: list[Labels], per_request: int = 50) -> None:
    """Raise unless the spliced bodies equal what the protobuf library serializes for the same samples."""
    for shard in range(len(p.shards)):
        first = next(shard_bodies(p, shard, 0, 1, 0, per_request), None)
        if first is None:
            continue
        body = first[1]
        req = rw.WriteRequest()
        for i in p.shards[shard][:per_request]:
            entry = req.timeseries.add()
            for name, value in labels[i]:
                entry.labels.add(name=name, value=value)
            entry.samples.add(value=p.values[0][i], timestamp=p.stamps[0][p.target_of[i]])
        raw = bytes(cramjam.snappy.decompress_raw(body))
        if raw != req.SerializeToString():
            raise AssertionError(f"spliced remote-write body differs from protobuf's for shard {shard}")
        parsed = rw.decode(body, rw.Limits())
        if parsed.samples != min(per_request, len(p.shards[shard])):
            raise AssertionError("spliced remote-write body does not decode to its samples")


def loop_shift_ms(p: Plan) -> int:
    """How far each replay of the recorded rounds moves timestamps so series stay in order."""
    return p.n_rounds * INTERVAL_MS
