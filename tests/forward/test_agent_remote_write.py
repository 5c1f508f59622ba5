"""The agent's remote-write transport: a batch becomes several requests, the batch counts as sent only
when every one was acknowledged, and a retry resumes at the first one that was not."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agent.uplink.remote_write import RemoteWriteTransport
from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, merge_into
from tests.forward.conftest import ScriptedReceiver

Start = Callable[..., Awaitable[ScriptedReceiver]]


def body(data: SeriesMap, seq: int) -> tuple[BatchHeader, list[bytes]]:
    """A batch as the uploader hands it to a transport: its header and its chunk frames."""
    samples = sum(len(ts) for ts, _ in data.values())
    # two chunks, as a sealed batch of several chunks would carry
    items = list(data.items())
    chunks = [Codec().encode(dict(items[:1])), Codec().encode(dict(items[1:]))]
    return BatchHeader(device="edge-9", buffer_id="b1", seq=seq, sent_at_ms=0, samples=samples), chunks


async def test_a_batch_is_acknowledged_only_when_every_request_was(scripted_receiver: Start) -> None:
    receiver = await scripted_receiver((204, {}, ""), (500, {}, "boom"), (204, {}, ""))
    transport = RemoteWriteTransport(receiver.url, "tok", 5, "edge-9", "device_id", max_samples_per_request=4)
    data: SeriesMap = {(("__name__", f"m{i}"),): ([1, 2, 3, 4], [0.5, 1.5, 2.5, float(i)]) for i in range(3)}
    try:
        first = await transport.send(*body(data, 7))
        assert first.status == 500  # the uploader keeps the batch and retries it
        second = await transport.send(*body(data, 7))
        assert 200 <= second.status < 300
    finally:
        await transport.close()
    assert receiver.statuses == [204, 500, 204, 204]  # resumed at the refused request, the first not repeated
    assert receiver.headers[0]["Authorization"] == "Bearer tok"
    got: SeriesMap = {}
    for status, part in zip(receiver.statuses, receiver.received, strict=True):
        if status == 204:
            merge_into(got, part)
    assert got == {(("__name__", f"m{i}"), ("device_id", "edge-9")): v for i, v in enumerate(data.values())}


async def test_another_batch_starts_from_its_first_request(scripted_receiver: Start) -> None:
    receiver = await scripted_receiver((204, {}, ""), (400, {}, "out of bounds"), (204, {}, ""))
    transport = RemoteWriteTransport(receiver.url, "", 5, "edge-9", "", max_samples_per_request=4)
    data: SeriesMap = {(("__name__", f"m{i}"),): ([1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0]) for i in range(2)}
    try:
        assert (await transport.send(*body(data, 1))).status == 400
        # the uploader split the refused batch: a new sequence number is a new batch
        assert (await transport.send(*body(data, 2))).status == 204
    finally:
        await transport.close()
    assert receiver.statuses == [204, 400, 204, 204]
    assert "Authorization" not in receiver.headers[0]
    assert receiver.received[0] == {(("__name__", "m0"),): ([1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0])}  # no device label


async def test_a_batch_that_only_reports_losses_sends_nothing(scripted_receiver: Start) -> None:
    receiver = await scripted_receiver()
    transport = RemoteWriteTransport(receiver.url, "", 5, "edge-9")
    empty = BatchHeader(device="edge-9", buffer_id="b1", seq=3, sent_at_ms=0, evicted_samples=5)
    try:
        assert (await transport.send(empty, [])).status == 204
    finally:
        await transport.close()
    assert receiver.statuses == []


async def test_victoria_metrics_wrong_path_answer_reads_as_404(scripted_receiver: Start) -> None:
    text = 'remoteAddr: "127.0.0.1:1"; requestURI: /api/v1/wrong; unsupported path requested: "/api/v1/wrong"'
    receiver = await scripted_receiver((400, {}, text))
    transport = RemoteWriteTransport(receiver.url, "", 5, "edge-9")
    data: SeriesMap = {(("__name__", "m"),): ([1], [1.0])}
    try:
        # 404 is what the uploader keeps the batch for (a wrong URL); a 400 would have it dropped
        assert (await transport.send(*body({**data, (("__name__", "n"),): ([1], [2.0])}, 1))).status == 404
    finally:
        await transport.close()
