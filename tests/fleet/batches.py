"""Raw backhaul batches, built as an agent builds them, for tests that play a whole fleet."""

from __future__ import annotations

import time
from typing import Any

from backhaul.wire import batch as batchfmt
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, sample_count


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
