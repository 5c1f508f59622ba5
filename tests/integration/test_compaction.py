"""Compaction of a large backlog never holds remote write up: the agent merges one run of small
chunks per call on its database thread, so a group commit waits for one merge at most."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from agent.buffer.store import BufferStore
from backhaul.wire import remote_write as rw
from backhaul.wire.series import SeriesMap
from tests.support import http, metric_value

pytestmark = pytest.mark.integration

RW_HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}


def test_remote_write_is_answered_while_a_backlog_is_compacted(tmp_path, start_agent):
    # 300 small chunks of noisy floats (costly to merge): an offline agent's buffer after a while.
    rng = random.Random(5)
    now_ms = int(time.time() * 1000)
    store = BufferStore(tmp_path / "agent.db", 1 << 30, "OFF", target_samples=100_000)
    store.open()
    try:
        for c in range(300):
            ts = now_ms - 3_600_000 + c * 10_000
            series: SeriesMap = {
                (("__name__", "noise"), ("i", str(i))): ([ts, ts + 5000], [rng.random(), rng.random()])
                for i in range(5000)
            }
            store.append(series, 0, ts)
    finally:
        store.close()

    agent = start_agent(None, buffer={"budget_bytes": "1GiB", "maintenance_interval": 0.5})
    compacted = []
    slowest = 0.0
    for k in range(25):
        compacted.append(metric_value(agent.url, "backhaul_buffer_compacted_chunks_total"))
        body = rw.encode({(("__name__", "fresh"), ("k", str(k))): ([now_ms + k], [float(k)])})[0]
        started = time.monotonic()
        status, answer, _ = http("POST", f"{agent.url}/api/v1/write", body, RW_HEADERS, timeout=60)
        slowest = max(slowest, time.monotonic() - started)
        assert status == 204, answer
        time.sleep(0.2)
    compacted.append(metric_value(agent.url, "backhaul_buffer_compacted_chunks_total"))
    # The pushes overlapped the compaction: it made progress between them, and was not done at once.
    overlapping = [b > a for a, b in itertools.pairwise(compacted)]
    assert sum(overlapping) >= 3, f"compaction did not run alongside the pushes: {compacted}"
    # One merge of ~100k samples takes well under a second here; the whole backlog, many seconds.
    assert slowest < 3, f"a push waited {slowest:.1f} s behind compaction"
