"""Chunks as the store keeps them: the agent's chunk (docs/wire-format.md) without its series table,
still zstd-compressed, with the table kept once per device and digest.

Nothing here touches a database. The endpoints prepare what they hand the store on a worker thread
(:func:`prepare`: split the table off, read the header and the timestamp column -- never the values,
which is what keeps ingest cheap); the store's index keeps what :class:`Scan` found (time range,
samples, the most samples of one series); the export decodes only the series a selector chose
(:func:`read_series`), from the columns as they are, without the table in the chunk.

A stored chunk is always version 2 or 3 with ``table_len`` 0. Version 1 chunks (older agents) are
converted to version 2 once, at ingest. Native histograms (version 3, kind 0x80) are kept as they
came; :func:`read_series` leaves them out (the export's format has no place for them).

A series whose labels break the rules (:mod:`backhaul.labels`) is found once per table, when the
table is parsed; a chunk with such a series is decoded and encoded again without it (rare: an agent
checks the same rules before it sends).
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate, compress

from backhaul.errors import WireError
from backhaul.labels import LabelRules
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.chunk.columns import MAX_DECIMALS, sample_counts, unshuffle
from backhaul.wire.chunk.header import (
    FLOAT_KIND,
    HEADER,
    HISTOGRAM_KIND,
    MAGIC,
    MAX_ABS_TIMESTAMP_MS,
    TABLED,
    U32,
    VERSION_HISTOGRAMS,
)
from backhaul.wire.series import Labels, SeriesMap

# (the table and the fleet page's series names were defined here first: importable from here still)
from collector.store.tables import FLEET_SERIES as FLEET_SERIES
from collector.store.tables import MODEL_INFO as MODEL_INFO
from collector.store.tables import ROUTED as ROUTED
from collector.store.tables import TableInfo as TableInfo

# Elements per C call in the long loops (see _stamps).
_SLICE = 65536
# bytes.translate tables: a kinds column to a 0/1 mask of float (histogram) series.
_IS_FLOAT = bytes([1] + [0] * 255)
_IS_HISTOGRAM = bytes(1 if k == HISTOGRAM_KIND else 0 for k in range(256))


@dataclass
class Scan:
    """What the header and the timestamp column of a stored (table-less, uncompressed) chunk say.

    Args:
        version: 2 or 3.
        counts: samples per series, in table order; kinds: each series' value kind.
        stamps: every timestamp, series after series (``starts[i]`` is where series i begins).
        min_ts, max_ts: its time range; max_per_series: the most samples of one series.
        ints_at, floats_at: where the integer and the float value columns begin.
    """

    version: int
    counts: array  # type: ignore[type-arg]
    kinds: bytes
    stamps: list[int]
    starts: list[int]
    min_ts: int
    max_ts: int
    max_per_series: int
    ints_at: int
    n_ints: int
    floats_at: int
    n_floats: int

    @property
    def n_series(self) -> int:
        return len(self.counts)

    @property
    def samples(self) -> int:
        return len(self.stamps)

    def series_stamps(self, i: int) -> list[int]:
        return self.stamps[self.starts[i] : self.starts[i] + self.counts[i]]


def scan(raw: bytes) -> Scan:
    """Read a table-less version 2 or 3 chunk's header and timestamps; checks every length.

    Raises :class:`WireError` naming what is wrong.
    """
    if len(raw) < HEADER.size + U32.size:
        raise WireError(f"chunk: {len(raw)} bytes is shorter than a chunk header")
    magic, version, n_series, n_samples = HEADER.unpack_from(raw)
    if magic != MAGIC or version not in TABLED:
        raise WireError("chunk: not a version 2 or 3 chunk")
    (table_len,) = U32.unpack_from(raw, HEADER.size)
    if table_len:
        raise WireError("chunk: a stored chunk carries no series table")
    pos = HEADER.size + U32.size
    if len(raw) < pos + 5 * n_series + 8 * n_samples:
        raise WireError(f"chunk: {len(raw)} bytes is shorter than its header announces")
    counts = sample_counts(raw, pos, n_series, n_samples)
    pos += 4 * n_series
    kinds = raw[pos : pos + n_series]
    # Set and byte-string operations run in C: this runs for every chunk stored.
    odd = {k for k in set(kinds) if k > 1 + MAX_DECIMALS}
    if odd and (odd != {HISTOGRAM_KIND} or version < VERSION_HISTOGRAMS):
        raise WireError(f"chunk: a value kind is above {1 + MAX_DECIMALS} and not a histogram")
    pos += n_series
    stamps = _stamps(unshuffle(raw[pos : pos + 8 * n_samples], "q"))
    pos += 8 * n_samples
    n_floats = sum(compress(counts, kinds.translate(_IS_FLOAT))) if FLOAT_KIND in kinds else 0
    n_hist = sum(compress(counts, kinds.translate(_IS_HISTOGRAM))) if odd else 0
    n_ints = n_samples - n_floats - n_hist
    end = pos + 8 * (n_ints + n_floats)
    if version < VERSION_HISTOGRAMS:
        if len(raw) != end:
            raise WireError(f"chunk: {len(raw)} bytes, but its header announces {end}")
    else:
        for what in ("histogram", "metadata"):
            if end + U32.size > len(raw):
                raise WireError(f"chunk: the {what} section's length is missing")
            end += U32.size + U32.unpack_from(raw, end)[0]
        if end != len(raw):
            raise WireError("chunk: its sections do not end where the chunk does")
    low, high = (min(stamps), max(stamps)) if stamps else (0, 0)
    # As the chunk decoder: beyond +-2**53 ms no date, and the index's columns are signed 64-bit.
    if low < -MAX_ABS_TIMESTAMP_MS or high > MAX_ABS_TIMESTAMP_MS:
        bad = low if low < -MAX_ABS_TIMESTAMP_MS else high
        raise WireError(f"chunk: timestamp {bad} is outside +-2**53 ms")
    return Scan(
        version=version,
        counts=counts,
        kinds=kinds,
        stamps=stamps,
        starts=list(accumulate(counts[:-1], initial=0)) if n_series else [],
        min_ts=low,
        max_ts=high,
        max_per_series=max(counts) if n_series else 0,
        ints_at=pos,
        n_ints=n_ints,
        floats_at=pos + 8 * n_ints,
        n_floats=n_floats,
    )


def _stamps(dod: array) -> list[int]:  # type: ignore[type-arg]
    """The timestamps of a delta-of-delta column, a slice at a time: each C call stays short, so a
    huge chunk on a worker thread never holds the GIL long enough to stall the event loop."""
    if len(dod) <= _SLICE:
        return list(accumulate(accumulate(dod)))
    stamps: list[int] = []
    delta = ts = 0
    for i in range(0, len(dod), _SLICE):
        deltas = list(accumulate(dod[i : i + _SLICE], initial=delta))
        delta = deltas[-1]
        part = list(accumulate(deltas[1:], initial=ts))
        ts = part[-1]
        stamps += part[1:]
    return stamps


@dataclass
class NewChunk:
    """One chunk as an endpoint hands it to the store.

    Args:
        table: its series table.
        frame: the stored form: zstd of the chunk without its table.
        scan: what its header and timestamps say.
        fleet: samples of the series the fleet page reads: (name, labels, timestamp, value).
        dropped: samples of series refused for their labels, by reason.
        sent: when series were refused, the table the chunk came with (``table`` is then the table
            of what is kept, and ``sent_frame`` the chunk as it came, zstd, its table in it).
    """

    table: TableInfo
    frame: bytes
    scan: Scan
    fleet: list[tuple[str, Labels, int, float]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    sent: TableInfo | None = None

    @property
    def sent_table(self) -> TableInfo:
        """The table the agent sent (and refers to from then on)."""
        return self.sent or self.table


def prepare(
    raw: bytes, frame: bytes, table: TableInfo | None, codec: chunkfmt.Codec, rules: LabelRules | None = None
) -> NewChunk:
    """A chunk as the store keeps it, from its decompressed bytes and the frame they came in.

    ``table``: the table a chunk sent by reference named (its frame is then kept as it came); None
    when the chunk carries its own (split off, the rest compressed again). ``rules``: the label
    rules a new table is checked against (a table given was checked when it was parsed); series that
    break them are left out (:attr:`NewChunk.dropped`). On a worker thread: this is the CPU of ingest.
    """
    if len(raw) > 3 and raw[3] not in TABLED:  # version 1: converted once to the current version
        raw, table = chunkfmt.encode(chunkfmt.decode(raw)), None
    if table is None:
        data, stripped = chunkfmt.split_table(raw)
        table = TableInfo.parse(data, rules=rules)
        frame = codec.compress(stripped)
    else:
        stripped = raw
    found = scan(stripped)
    if found.n_series != table.n_series:
        raise WireError(f"chunk: {found.n_series} series, but its table holds {table.n_series}")
    if table.refused:
        return _without_refused(stripped, table, codec)
    fleet: list[tuple[str, Labels, int, float]] = []
    if table.fleet:
        wanted = {i: (name, labels) for i, name, labels in table.fleet}
        for i, (stamps, values) in read_series(stripped, found, wanted).items():
            name, labels = wanted[i]
            fleet.extend((name, labels, t, v) for t, v in zip(stamps, values, strict=True))
    return NewChunk(table, frame, found, fleet)


def _without_refused(stripped: bytes, table: TableInfo, codec: chunkfmt.Codec) -> NewChunk:
    """The chunk encoded again without the series its table refused."""
    assert table.data is not None  # the caller keeps a refusing table's bytes (a cache, its summary)
    entries = table.entries if table.entries is not None else TableInfo.parse(table.data, table.digest).entries
    assert entries is not None
    contents = chunkfmt.decode_contents(chunkfmt.join_table(stripped, table.data))
    dropped: dict[str, int] = {}
    for i, reason in table.refused:
        labels = entries[i]
        taken = contents.series.pop(labels, None) or contents.histograms.pop(labels, None)
        if taken is not None:
            dropped[reason] = dropped.get(reason, 0) + len(taken[0])
    kept = prepare(chunkfmt.encode(contents.series, contents.histograms, contents.metadata), b"", None, codec)
    kept.dropped, kept.sent = dropped, table
    return kept


def read_series(raw: bytes, found: Scan, wanted: Iterable[int]) -> dict[int, tuple[list[int], list[float]]]:
    """The float samples of the ``wanted`` series (table indices) of a stored chunk, in chunk order;
    native-histogram series are left out. Only the wanted series' values are decoded."""
    want = sorted(set(wanted))
    if not want:
        return {}
    int_offsets: dict[int, int] = {}
    float_offsets: dict[int, int] = {}
    at_int = at_float = 0
    for i, (count, kind) in enumerate(zip(found.counts, found.kinds, strict=True)):
        if kind == FLOAT_KIND:
            float_offsets[i] = at_float
            at_float += count
        elif kind != HISTOGRAM_KIND:
            int_offsets[i] = at_int
            at_int += count
    ints: array | None = None  # type: ignore[type-arg]
    floats: list[float] | None = None
    out: dict[int, tuple[list[int], list[float]]] = {}
    counts, kinds, starts, stamps = found.counts, found.kinds, found.starts, found.stamps
    for i in want:
        if i >= found.n_series:
            continue
        count, kind = counts[i], kinds[i]
        values: list[float]
        if kind == HISTOGRAM_KIND:
            continue
        if kind == FLOAT_KIND:
            if floats is None:
                column = unshuffle(raw[found.floats_at : found.floats_at + 8 * found.n_floats], "Q")
                floats = _xor_floats(
                    column, max(float_offsets[j] + found.counts[j] for j in want if j in float_offsets)
                )
            at = float_offsets[i]
            values = floats[at : at + count]
        else:
            if ints is None:
                ints = unshuffle(raw[found.ints_at : found.ints_at + 8 * found.n_ints], "Q")
            at = int_offsets[i]
            scale = 10 ** (kind - 1)
            if count == 1:  # one sample per series (a scrape per batch): the common case
                z = ints[at]
                values = [((z >> 1) ^ -(z & 1)) / scale]
            else:
                scaled = accumulate((z >> 1) ^ -(z & 1) for z in ints[at : at + count])
                values = [float(n) for n in scaled] if scale == 1 else [n / scale for n in scaled]
        start = starts[i]
        out[i] = (stamps[start : start + count], values)
    return out


def all_values(raw: bytes, found: Scan) -> list[float]:
    """Every float sample's value of a stored chunk without native histograms, series after series
    (aligned with ``found.stamps``)."""
    ints = unshuffle(raw[found.ints_at : found.ints_at + 8 * found.n_ints], "Q")
    floats = _xor_floats(unshuffle(raw[found.floats_at : found.floats_at + 8 * found.n_floats], "Q"), found.n_floats)
    out: list[float] = []
    at_int = at_float = 0
    for count, kind in zip(found.counts, found.kinds, strict=True):
        if kind == FLOAT_KIND:
            out += floats[at_float : at_float + count]
            at_float += count
            continue
        scale = 10 ** (kind - 1)
        if count == 1:
            z = ints[at_int]
            out.append(((z >> 1) ^ -(z & 1)) / scale)
        else:
            out += [n / scale for n in accumulate((z >> 1) ^ -(z & 1) for z in ints[at_int : at_int + count])]
        at_int += count
    return out


def _xor_floats(column: array, upto: int) -> list[float]:  # type: ignore[type-arg]
    """The first ``upto`` values of an XOR'd float column, a slice at a time (see _stamps)."""
    out: list[float] = []
    bits = 0
    for i in range(0, upto, _SLICE):
        part = array("Q", accumulate(column[i : min(i + _SLICE, upto)], operator.xor, initial=bits))
        bits = part[-1]
        out += array("d", part[1:].tobytes()).tolist()
    return out


def from_series(series: SeriesMap, codec: chunkfmt.Codec) -> list[NewChunk]:
    """Samples that came as a :data:`SeriesMap` (plain remote write), encoded once into a chunk."""
    if not any(ts for ts, _ in series.values()):
        return []
    return [prepare(chunkfmt.encode(series), b"", None, codec)]
