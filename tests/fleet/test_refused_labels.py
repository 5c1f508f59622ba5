"""The label rules (backhaul/labels.py) on the chunk store: a series a table refuses is left out of
the stored chunk and of what is forwarded, whether the table came in the chunk, by reference from
the table cache, or by reference from the store after a restart; the rest of the chunk is kept."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from backhaul.wire import batch as batchfmt
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, sample_count
from tests.conftest import Running
from tests.support import TOKEN, export, http, wait_until

pytestmark = [pytest.mark.integration]

GOOD = (("__name__", "kept_metric"), ("job", "a"))
BAD = (("__name__", "kept_metric"), ("bad-name!", "x"))  # an invalid label name


def post(url: str, seq: int, now: int, by_reference: bool) -> dict[str, object]:
    """Batch ``seq`` of dev-1: a good and a bad series, the table in the chunk (the agent asking the
    collector to keep it) or by its digest."""
    series: SeriesMap = {GOOD: ([now + seq], [float(seq)]), BAD: ([now + seq], [-1.0])}
    codec = Codec()
    raw = chunkfmt.encode(series)
    table, stripped = chunkfmt.split_table(raw)
    frame = codec.compress(stripped if by_reference else raw)
    head = batchfmt.BatchHeader(
        device="dev-1",
        buffer_id="buf-1",
        seq=seq,
        sent_at_ms=now,
        samples=sample_count(series),
        table_refs=[chunkfmt.table_digest(table) if by_reference else ""],
    )
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": batchfmt.CONTENT_TYPE}
    status, body, _ = http("POST", f"{url}/api/v1/batches", batchfmt.encode(head, [frame]), headers)
    assert status == 200, body
    answer = json.loads(body)
    assert isinstance(answer, dict)
    return answer


def values(url: str) -> dict[str, list[float]]:
    """Exported values by the series' label names (sorted, the device's own labels left out)."""
    out: dict[str, list[float]] = {}
    for line in export(url):
        names = ",".join(sorted(k for k in line["metric"] if not k.endswith("device_id")))
        out.setdefault(names, []).extend(float(v) for v in line["values"])
    return out


def test_a_refused_series_stays_out_of_chunks_sent_inline_by_reference_and_after_a_restart(
    start_collector: Callable[..., Running],
) -> None:
    downstream = start_collector(name="downstream")
    forward = [{"name": "down", "url": f"{downstream.url}/api/v1/write", "bearer_token": TOKEN}]
    upstream = start_collector(name="upstream", forward=forward)
    now = int(time.time() * 1000) - 60_000
    for seq, by_reference in ((1, False), (2, True)):
        answer = post(upstream.url, seq, now, by_reference)
        assert answer["samples"] == 1 and answer["dropped"] == {"invalid_label_name": 1}, answer
    upstream.proc.stop()
    upstream = start_collector(port=int(upstream.url.rsplit(":", 1)[1]), name="upstream", forward=forward)
    answer = post(upstream.url, 3, now, True)  # the table from the store, parsed again
    assert answer["samples"] == 1 and answer["dropped"] == {"invalid_label_name": 1}, answer
    assert values(upstream.url) == {"__name__,job": [1.0, 2.0, 3.0]}
    wait_until(lambda: sum(map(len, values(downstream.url).values())) >= 3, 30, "the forwarded samples")
    assert values(downstream.url) == {"__name__,job": [1.0, 2.0, 3.0]}
