"""A batch passes as structure, not bytes: the agent's transport encodes its body once (after any table
rewrite), the collector decodes it once and hands the chunk frames to its forward spool without
building a batch body again, even for chunks that came by table reference."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.uplink.remote_write import RemoteWriteTransport
from agent.uplink.transport import HttpTransport
from backhaul.wire import batch as batchfmt
from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap
from collector.app import Collector
from tests.forward.conftest import ScriptedReceiver
from tests.forward.test_collector_forwarding import TOKEN, forwarded, settings

Start = Callable[..., Awaitable[ScriptedReceiver]]
BY_REFERENCE = "backhaul_collector_chunks_by_table_reference_total"


@pytest.fixture
def codings(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often a batch body is encoded and decoded, anywhere in this process."""
    calls: Counter[str] = Counter()
    encode, decode = batchfmt.encode, batchfmt.decode

    def counted_encode(*args: Any) -> bytes:
        calls["encode"] += 1
        return encode(*args)

    def counted_decode(*args: Any) -> tuple[BatchHeader, list[bytes]]:
        calls["decode"] += 1
        return decode(*args)

    monkeypatch.setattr(batchfmt, "encode", counted_encode)
    monkeypatch.setattr(batchfmt, "decode", counted_decode)
    return calls


def scrape(now: int, k: int) -> SeriesMap:
    return {(("__name__", f"m{i}"),): ([now + 1000 * k], [float(k + i)]) for i in range(20)}


async def test_each_batch_is_encoded_once_and_decoded_once_on_its_way_to_a_forward_target(
    tmp_path: Path, scripted_receiver: Start, codings: Counter[str]
) -> None:
    receiver = await scripted_receiver()
    now = int(time.time() * 1000)
    async with Collector(settings(tmp_path, receiver.url)) as collector:
        transport = HttpTransport(f"http://127.0.0.1:{collector.port}/api/v1/batches", TOKEN, 5)
        try:
            for seq in range(1, 6):
                header = BatchHeader(device="edge-1", buffer_id="buf", seq=seq, sent_at_ms=now, samples=20)
                codings.clear()
                reply = await transport.send(header, [Codec().encode(scrape(now, seq))])
                assert reply.ok, reply.text
                # one encode by the transport, one decode by the collector: none for table references
                # (the agent) or for the forward spool (the collector)
                assert codings == {"encode": 1, "decode": 1}, f"batch {seq}"
        finally:
            await transport.close()
        by_reference = collector.registry.get_sample_value(BY_REFERENCE) or 0
        assert by_reference >= 1  # batches 3 to 5 went by table reference: the rewrite was exercised
        got = await forwarded(receiver, 100)
    assert sum(len(ts) for ts, _ in got.values()) == 100


async def test_the_remote_write_transport_never_touches_a_batch_body(
    scripted_receiver: Start, codings: Counter[str]
) -> None:
    receiver = await scripted_receiver()
    transport = RemoteWriteTransport(receiver.url, "", 5, "edge-9")
    header = BatchHeader(device="edge-9", buffer_id="b", seq=1, sent_at_ms=0, samples=20)
    try:
        assert (await transport.send(header, [Codec().encode(scrape(0, 1))])).ok
    finally:
        await transport.close()
    assert codings == {}
    assert receiver.statuses == [204]
