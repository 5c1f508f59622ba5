"""Issue 12, exhaustion: what one request costs is bounded before it is decoded (finding 6), memory
that used to grow with every new series reaches a plateau, and a request that can never fit gets
413 with the real reason (finding 9). Real processes on 127.0.0.1; memory is read from the kernel
(``VmHWM``, the process's peak resident set, and ``VmRSS``).
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path
from typing import Any

import cramjam
import pytest
import zstandard

from backhaul.wire import batch as batchfmt
from backhaul.wire import remote_write as rw
from backhaul.wire.series import SeriesMap
from backhaul.wire.varint import varint
from tests.support import TOKEN, QuietHandler, http, metric_value, push

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MB = 1024 * 1024
PROTO = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}
BATCH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": batchfmt.CONTENT_TYPE}


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def zero_chunk(samples: int) -> bytes:
    """A valid version 2 chunk of one series whose columns are all zeros: tiny once compressed."""
    table = b'[["__name__","zeros"]]'
    head = b"BHK" + struct.pack("<BII", 2, 1, samples) + struct.pack("<I", len(table)) + table
    head += struct.pack("<I", samples) + b"\x00"  # counts, kinds (float)
    compressor = zstandard.ZstdCompressor(level=3)
    writer = compressor.compressobj()
    parts = [writer.compress(head)]
    zeros = b"\0" * MB
    left = 16 * samples
    while left:
        take = min(left, MB)
        parts.append(writer.compress(zeros[:take]))
        left -= take
    parts.append(writer.flush())
    return b"".join(parts)


def zero_batch(samples: int, announced: int, seq: int = 1) -> bytes:
    chunk = zero_chunk(samples)
    header = batchfmt.BatchHeader(device="dev-1", buffer_id="b", seq=seq, sent_at_ms=int(time.time() * 1000))
    header.samples = announced
    return batchfmt.encode(header, [chunk])


def test_an_8kb_batch_cannot_cost_the_collector_gigabytes(start_collector: Any) -> None:
    """Finding 6: 256 MiB of zeros in a valid chunk, announcing 1 sample, then announcing all of them,
    then three devices at once: each refused before it is decoded, the peak RSS stays low."""
    collector = start_collector()
    pid = collector.proc.pid
    n = (256 * MB - 64) // 16  # just under max_decompressed_bytes
    lying = zero_batch(n, announced=1)
    assert len(lying) < 64 * 1024
    before = memory_mb(pid)
    status, text, _ = http("POST", f"{collector.url}/api/v1/batches", lying, BATCH, timeout=60)
    assert status == 400 and b"announces 1 samples" in text, text
    honest = zero_batch(n, announced=n, seq=2)
    status, text, _ = http("POST", f"{collector.url}/api/v1/batches", honest, BATCH, timeout=60)
    assert status == 413 and b"decoded" in text, text

    answers: list[int] = []

    def send(seq: int) -> None:
        answers.append(http("POST", f"{collector.url}/api/v1/batches", zero_batch(n, n, seq), BATCH, timeout=60)[0])

    threads = [threading.Thread(target=send, args=(seq,)) for seq in (3, 4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [413, 413, 413]
    # was ~1.4 GB for one such batch and 4.4 GB for three
    assert memory_mb(pid) - before < 100, memory_mb(pid)
    assert collector.proc.popen is not None and collector.proc.popen.poll() is None


def empty_samples_body(series: int, per_series: int) -> bytes:
    """Remote write with ``per_series`` empty Sample messages per series (2 bytes each on the wire)."""
    parts = []
    for i in range(series):
        name = f"s{i}".encode()
        label = b"\x0a\x08__name__\x12" + varint(len(name)) + name
        ts = b"\x0a" + varint(len(label)) + label + b"\x12\x00" * per_series
        parts.append(b"\x0a" + varint(len(ts)) + ts)
    return bytes(cramjam.snappy.compress_raw(b"".join(parts)))


def test_a_6mb_snappy_body_cannot_cost_the_agent_a_gigabyte(start_agent: Any) -> None:
    """Finding 6 at the agent: 120 MiB of empty samples in a 6 MB body: 413, the peak stays bounded."""
    agent = start_agent(None)
    pid = agent.proc.pid
    body = empty_samples_body(60, 1_000_000)
    assert len(body) < 7 * MB
    before = memory_mb(pid)
    status, text, _ = http("POST", f"{agent.url}/api/v1/write", body, PROTO, timeout=60)
    assert status == 413, text
    # was a 1.08 GB peak; bounded now by the decompressed body (128 MiB) and twice that decoded
    assert memory_mb(pid) - before < 450, memory_mb(pid)
    assert push(agent.url, {(("__name__", "still_ok"),): ([int(time.time() * 1000)], [1.0])}) == [204]


def test_one_request_larger_than_max_pending_samples_gets_413_with_the_reason(start_agent: Any) -> None:
    """Finding 9: it used to get an endless 503 saying "0 samples already wait"."""
    agent = start_agent(None, buffer={"max_pending_samples": 1000})
    now = int(time.time() * 1000)
    series: SeriesMap = {(("__name__", "m"), ("i", str(i))): ([now], [1.0]) for i in range(1500)}
    (body,) = rw.encode(series)
    status, text, _ = http("POST", f"{agent.url}/api/v1/write", body, PROTO)
    assert status == 413, text
    assert b"1500 samples" in text and b"max_pending_samples" in text
    assert metric_value(agent.url, "backhaul_ingest_requests_total", 'code="413"') == 1


@pytest.mark.timeout(400)
def test_the_label_cache_reaches_a_plateau_under_series_churn(start_agent: Any) -> None:
    """Finding 9: series that each appear once (pod churn, five labels of their own each). The
    interned label pairs used to grow without end (65 -> 377 MB over 800k series); now the cache
    stays within its bounds and the agent's RSS stays within a fraction of what the churn would cost."""
    # Compaction off: merging chunks of 100k distinct series holds the buffer's thread for seconds
    # (a matter of its own), and this test is about the label cache.
    agent = start_agent(None, buffer={"budget_bytes": "512MiB", "maintenance_interval": "PT1H"})
    pid = agent.proc.pid
    now = int(time.time() * 1000)
    rss: list[float] = []
    pairs: list[float] = []
    started = time.monotonic()
    for step in range(30):
        series: SeriesMap = {
            (
                ("__name__", "container_cpu"),
                ("container_id", f"{step:03d}{i:05d}deadbeef"),
                ("ip", f"10.{step}.{i // 256}.{i % 256}"),
                ("namespace", "prod"),
                ("pod", f"web-{step}-{i:05d}-abcdefgh"),
                ("uid", f"{step:04d}-{i:06d}-0000-1111"),
                ("url", f"/api/{step}/{i}"),
            ): ([now], [float(i)])
            for i in range(10_000)
        }
        assert set(push(agent.url, series, per_request=2000)) == {204}
        if step % 5 == 4:
            rss.append(memory_mb(pid, "VmRSS"))
            pairs.append(metric_value(agent.url, "backhaul_ingest_label_cache_entries", 'kind="pairs"'))
    print(f"agent RSS (MB), interned pairs every 50k new series ({time.monotonic() - started:.0f} s):", rss, pairs)
    assert max(pairs) <= 400_000  # 1.5M pairs went through it
    assert metric_value(agent.url, "backhaul_ingest_label_cache_entries", 'kind="sets"') <= 100_000
    # 300k series of 7 labels: ~1 KB each of interned pairs alone on main (300 MB); bounded now
    assert max(rss) < 400, rss


def test_the_proxys_model_label_cannot_grow_without_bound(start_agent: Any) -> None:
    """Finding 9: the model names come from the upstream's answers; a new name on every answer once
    meant a new series on every answer. Now: the first 20 names, then ``other``."""
    import json
    from http.server import ThreadingHTTPServer

    from tests.support import free_port, parse_metrics

    served = [0]

    class Upstream(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            served[0] += 1
            body = json.dumps({"model": f"model-{served[0]}", "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
            self.answer(body.encode(), "application/json")

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = free_port()
        upstream = f"http://127.0.0.1:{server.server_address[1]}"
        agent = start_agent(None, proxy={"enabled": True, "host": "127.0.0.1", "port": port, "upstream": upstream})
        chat = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}]}).encode()
        for _ in range(60):
            status, _, _ = http(
                "POST", f"http://127.0.0.1:{port}/v1/chat/completions", chat, {"Content-Type": "application/json"}
            )
            assert status == 200
        _, page, _ = http("GET", f"{agent.url}/metrics")
        models = {
            key.split('model="', 1)[1].split('"', 1)[0]
            for key in parse_metrics(page.decode())
            if key.startswith("backhaul_proxy_prompt_tokens_total{")
        }
        assert len(models) == 21 and "other" in models, sorted(models)
    finally:
        server.shutdown()
        server.server_close()
