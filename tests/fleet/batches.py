"""Raw backhaul batches, built as an agent builds them, for tests that play a whole fleet; samples
into a store and out of it, as the endpoints and the export hand them over."""

from __future__ import annotations

import time
from typing import Any

from backhaul.selector import Selector
from backhaul.wire import batch as batchfmt
from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, sample_count
from collector.store import IngestResult, Store
from collector.store.chunks import from_series
from collector.store.reader import Reader


def series_for(
    device: str, seq: int, n_series: int = 20, per_series: int = 5, start_ms: int | None = None
) -> SeriesMap:
    """Samples unique to (device, seq): batch ``seq`` covers its own time range."""
    base = (start_ms or int(time.time() * 1000) - 3_600_000) + seq * per_series * 1000
    return {
        (("__name__", f"fleet_metric_{i % 4}"), ("series", str(i))): (
            [base + k * 1000 for k in range(per_series)],
            [float(seq * 1000 + i * 10 + k) for k in range(per_series)],
        )
        for i in range(n_series)
    }


def batch_body(device: str, seq: int, series: SeriesMap, buffer_id: str = "buf-1", **header: Any) -> bytes:
    chunk = Codec().encode(series)
    head = batchfmt.BatchHeader(
        device=device,
        buffer_id=buffer_id,
        seq=seq,
        sent_at_ms=int(time.time() * 1000),
        samples=sample_count(series),
        **header,
    )
    return batchfmt.encode(head, [chunk])


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": batchfmt.CONTENT_TYPE}


async def put(
    store: Store, device: str, series: SeriesMap, now_ms: int, batch: BatchHeader | None = None
) -> IngestResult:
    """Samples into the store as an endpoint hands them over: encoded into a chunk."""
    return await store.ingest(device, from_series(series, Codec()), now_ms, batch)


async def read(
    store: Store, selector: str, start_ms: int = 0, end_ms: int = 2**62
) -> dict[str, tuple[dict[str, str], list[int], list[float]]]:
    """What the store holds for ``selector``: {device: (labels, timestamps, values)}, through the reader."""
    reader = Reader(store, "device_id")
    out: dict[str, tuple[dict[str, str], list[int], list[float]]] = {}
    async for group in reader.read(await reader.plan([Selector.parse(selector)], start_ms, end_ms)):
        for chosen, stamps, values in group:
            out[chosen.device] = (chosen.labels, stamps, values)
    return out
