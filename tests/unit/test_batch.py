import json
import struct
from typing import Any

import pytest

from backhaul.wire import WireError, batch


def header(**kw):
    base: dict[str, Any] = {"device": "dev-1", "buffer_id": "abc", "seq": 7, "sent_at_ms": 1, "samples": 3}
    base.update(kw)
    return batch.BatchHeader(**base)


def test_round_trip():
    body = batch.encode(header(evicted_samples=5), [b"one", b"chunk-two"])
    h, chunks = batch.decode(body)
    assert chunks == [b"one", b"chunk-two"]
    assert (h.device, h.seq, h.evicted_samples, h.chunk_sizes) == ("dev-1", 7, 5, [3, 9])


def raw(head: object, tail: bytes = b"") -> bytes:
    data = json.dumps(head).encode()
    return struct.pack("<3sBI", b"BHB", 1, len(data)) + data + tail


GOOD = {"device": "dev-1", "buffer_id": "b", "seq": 1, "sent_at_ms": 0, "chunk_sizes": [2]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "shorter"),
        (b"NOPE" + b"\0" * 8, "bad magic"),
        (struct.pack("<3sBI", b"BHB", 2, 0), "unsupported version"),
        (struct.pack("<3sBI", b"BHB", 1, 500) + b"{}", "runs past"),
        (raw({"device": "dev-1"}), "not a valid batch header"),
        (raw({**GOOD, "device": "../etc"}, b"xx"), "device"),
        (raw({**GOOD, "seq": -1}, b"xx"), "seq"),
        (raw({**GOOD, "chunk_sizes": [0]}, b""), "chunk_sizes"),
        (raw(GOOD, b"x"), "chunk sizes add up"),
        (raw([1, 2], b"xx"), "not a valid batch header"),
    ],
)
def test_malformed_batches_are_refused_with_a_reason(body, message):
    with pytest.raises(WireError, match=message):
        batch.decode(body)


def test_header_fields_a_newer_agent_adds_are_ignored():
    body = raw({**GOOD, "added_by_a_newer_agent": {"x": 1}}, b"xx")
    header, chunks = batch.decode(body)
    assert header.device == GOOD["device"]
    assert chunks == [b"xx"]


def test_table_refs_name_one_table_or_nothing_per_chunk():
    header, _ = batch.decode(raw({**GOOD, "table_refs": ["0123456789abcdef0123456789abcdef"]}, b"xx"))
    assert header.table_refs == ["0123456789abcdef0123456789abcdef"]
    assert batch.decode(raw({**GOOD, "table_refs": [""]}, b"xx"))[0].table_refs == [""]
    for bad in (["", ""], ["not-a-digest"], [7], "abc"):
        with pytest.raises(WireError, match="table_refs"):
            batch.decode(raw({**GOOD, "table_refs": bad}, b"xx"))
