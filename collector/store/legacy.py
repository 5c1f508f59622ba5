"""Converting a store that kept a row per sample (``series`` and ``samples``, collector/store before
chunks) into chunks, without losing a sample.

Both back ends convert at open, after the schema migration that created the chunk tables: device
by device, one transaction each (the device's chunks in, its rows out), so an interrupted conversion
goes on where it stopped at the next open; the empty row tables are dropped at the end. A device's
samples become one chunk per hour of data (:data:`WINDOW_MS`), its series labels turn back into
what the agent sent (the device label taken off, an ``exported_<label>`` renamed back), so the
export shows exactly what it showed before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from backhaul.wire.chunk import Codec
from backhaul.wire.series import Labels, SeriesMap
from collector.store import records
from collector.store.chunks import NewChunk, from_series

log = logging.getLogger(__name__)

WINDOW_MS = 3_600_000
# A window's chunk is split when it would hold more samples than this (bounded memory per step).
MAX_CHUNK_SAMPLES = 100_000


def agent_labels(stored: str, device_label: str) -> tuple[str, Labels] | None:
    """``(device, labels as the agent sent them)`` of a row store's series, None without a device."""
    pairs = [(n, v) for n, v in json.loads(stored)]
    device = next((v for n, v in pairs if n == device_label), None)
    if device is None:
        return None
    exported = f"exported_{device_label}"
    rest = [(device_label if n == exported else n, v) for n, v in pairs if n != device_label]
    return device, tuple(sorted(rest))


def window_chunks(
    rows: Iterable[tuple[Labels, int, int]], codec: Codec, max_samples: int = MAX_CHUNK_SAMPLES
) -> list[NewChunk]:
    """Chunks of ``(labels, ts, bits)`` rows (in series and time order) of one device and window."""
    chunks: list[NewChunk] = []
    series: dict[Labels, tuple[list[int], list[int]]] = {}
    held = 0
    for labels, ts, bits in rows:
        entry = series.get(labels)
        if entry is None:
            if held >= max_samples:
                chunks += from_series(_floats(series), codec)
                series, held = {}, 0
            entry = series[labels] = ([], [])
        entry[0].append(ts)
        entry[1].append(bits)
        held += 1
    chunks += from_series(_floats(series), codec)
    return chunks


def _floats(series: dict[Labels, tuple[list[int], list[int]]]) -> SeriesMap:
    return {labels: (stamps, records.from_bits(bits)) for labels, (stamps, bits) in series.items()}
