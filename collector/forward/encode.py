"""A device's chunks as remote-write requests, written as protobuf bytes directly.

The general path (:func:`backhaul.remote_write_sender.chunk_series` then
:func:`backhaul.wire.remote_write.encode`) builds a dict of every series, relabels each one and adds
every label and sample to protobuf message objects: at a few samples per series per batch (an
agent's 10 s batches hold two) that costs ten times what storing the batch does. Here the labels of
a table's series are encoded once, with the device label, and kept per (device, table); a batch
then costs the decoding of its value columns (collector/store/chunks.py) and a few bytes written per
sample. Chunks holding native histograms or metadata take the general path (:func:`encode` answers
None for them).

The requests hold the same samples as the general path's, split the same way (at most
``max_samples`` samples per request, a series split across requests where it does not fit); a
series that comes in several chunks is sent as several ``TimeSeries`` entries with the same labels,
which remote write allows.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable

import cramjam

from backhaul.errors import WireError
from backhaul.remote_write_sender import Request
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.chunk.header import HISTOGRAM_KIND, TABLED, U32
from backhaul.wire.series import Labels, with_device_label
from backhaul.wire.varint import varint
from collector.store.cache import BoundedCache
from collector.store.chunks import all_values, scan

# Encoded label sets kept, counted in series (a few hundred bytes each).
_CACHED_SERIES = 200_000
_SAMPLE_TAG = b"\x12"  # TimeSeries.samples (field 2, length-delimited)
_VALUE_TAG = b"\x09"  # Sample.value (field 1, double)
_TS_TAG = b"\x10"  # Sample.timestamp (field 2, varint)
# Timestamps whose varint has six bytes; the encoded timestamps one request keeps at most.
_SIX_BYTES, _SEVEN_BYTES = 2**35, 2**42
_CACHED_STAMPS = 100_000


def _field(tag: int, data: bytes) -> bytes:
    n = len(data)
    if n < 128:
        return bytes((tag, n)) + data
    if n < 16384:
        return bytes((tag, n & 127 | 128, n >> 7)) + data
    return bytes((tag,)) + varint(n) + data


def _labels(labels: Labels) -> bytes:
    """A series' Label entries (TimeSeries field 1), each ``Label{name=1, value=2}``."""
    return b"".join(_field(0x0A, _field(0x0A, n.encode()) + _field(0x12, v.encode())) for n, v in labels)


class ChunkEncoder:
    """Args: device_label (added to every series, "" for none; an existing one becomes
    ``exported_<label>``, as :func:`backhaul.wire.series.with_device_label` does), max_samples per
    request. Not thread-safe: one forwarder uses it from one worker thread at a time."""

    def __init__(self, device_label: str, max_samples: int) -> None:
        self.device_label = device_label
        self.max_samples = max_samples
        self._tables: BoundedCache[tuple[str, str], list[bytes]] = BoundedCache(_CACHED_SERIES, len)

    def encode(self, parts: Iterable[tuple[str, list[bytes]]], limit: int) -> list[Request] | None:
        """``(device, chunk frames)`` parts as requests, in order; None when a chunk holds native
        histograms or metadata (or is a version 1 chunk): the caller encodes them the general way."""
        codec = chunkfmt.Codec()  # one per call: zstd objects must not be shared by two threads
        requests: list[Request] = []
        body: list[bytes] = []
        in_request = 0
        room = self.max_samples or 2**62
        around: dict[int, tuple[bytes, bytes]] = {}
        for device, frames in parts:
            for frame in frames:
                raw = codec.decompress(frame, limit)
                if len(raw) < 4 or raw[3] not in TABLED:
                    return None
                table, stripped = chunkfmt.split_table(raw)
                found = scan(stripped)
                if found.version != chunkfmt.VERSION and (
                    HISTOGRAM_KIND in found.kinds or len(stripped) > found.floats_at + 8 * found.n_floats + 2 * U32.size
                ):
                    return None
                labels = self._encoded(device, table)
                if len(labels) != found.n_series:
                    raise WireError(f"chunk: {found.n_series} series, but its table holds {len(labels)}")
                samples = _samples(found.stamps, array("d", all_values(stripped, found)).tobytes(), around)
                if in_request + found.samples < room:  # the whole chunk fits in the request: no splits
                    body += [
                        _field(0x0A, series + b"".join(samples[at : at + count]))
                        for series, at, count in zip(labels, found.starts, found.counts, strict=True)
                    ]
                    in_request += found.samples
                    continue
                at = 0
                for series, count in zip(labels, found.counts, strict=True):
                    end = at + count
                    while at < end:
                        take = min(end - at, room - in_request)
                        body.append(_field(0x0A, series + b"".join(samples[at : at + take])))
                        at += take
                        in_request += take
                        if in_request >= room:
                            requests.append(Request(_compress(body), in_request))
                            body, in_request = [], 0
        if in_request:
            requests.append(Request(_compress(body), in_request))
        return requests

    def _encoded(self, device: str, table: bytes) -> list[bytes]:
        """The encoded labels of each series of ``table`` as sent for ``device``."""
        key = (device, chunkfmt.table_digest(table))
        found = self._tables.get(key)
        if found is None:
            entries = json.loads(table)
            found = []
            for flat in entries:
                labels: Labels = tuple(zip(flat[0::2], flat[1::2], strict=True))
                if self.device_label:
                    (labels,) = with_device_label({labels: ([], [])}, self.device_label, device)
                found.append(_labels(labels))
            self._tables.put(key, found)
        return found


def _samples(stamps: list[int], doubles: bytes, around: dict[int, tuple[bytes, bytes]]) -> list[bytes]:
    """Each sample as a ``Sample{value=1 double, timestamp=2 varint}`` entry (TimeSeries field 2).

    ``around``: what goes before and after a timestamp's value, by timestamp (a batch's series share
    their scrape times, so most are found there)."""
    if len(around) > _CACHED_STAMPS:
        around.clear()
    for ts in set(stamps).difference(around):
        if _SIX_BYTES <= ts < _SEVEN_BYTES:  # milliseconds since 1971 until 2109: written inline
            t = bytes((ts & 127 | 128, ts >> 7 & 127 | 128, ts >> 14 & 127 | 128, ts >> 21 & 127 | 128))
            t += bytes((ts >> 28 & 127 | 128, ts >> 35))
        else:
            t = varint(ts)
        around[ts] = (_SAMPLE_TAG + bytes((10 + len(t),)) + _VALUE_TAG, _TS_TAG + t)
    return [pre + doubles[8 * k : 8 * k + 8] + post for k, (pre, post) in enumerate(map(around.__getitem__, stamps))]


def _compress(body: list[bytes]) -> bytes:
    return bytes(cramjam.snappy.compress_raw(b"".join(body)))
