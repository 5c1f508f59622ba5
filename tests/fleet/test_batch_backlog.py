"""The batch header's optional backlog fields: older agents' batches (without them) still decode."""

from __future__ import annotations

import json
import struct

import pytest

from backhaul.wire import WireError
from backhaul.wire import batch as batchfmt


def body_with(header: dict[str, object]) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<3sBI", b"BHB", 1, len(head)) + head


OLD_AGENT = {"device": "d", "buffer_id": "b", "seq": 1, "sent_at_ms": 1, "chunk_sizes": [], "agent_version": "0.0.9"}


def test_a_header_without_backlog_fields_decodes_with_zeros() -> None:
    header, chunks = batchfmt.decode(body_with(OLD_AGENT))
    assert (header.backlog_bytes, header.backlog_oldest_ms, chunks) == (0, 0, [])


def test_backlog_fields_round_trip() -> None:
    header = batchfmt.BatchHeader(
        device="d", buffer_id="b", seq=1, sent_at_ms=1, backlog_bytes=4096, backlog_oldest_ms=1_700_000_000_000
    )
    decoded, _ = batchfmt.decode(batchfmt.encode(header, []))
    assert (decoded.backlog_bytes, decoded.backlog_oldest_ms) == (4096, 1_700_000_000_000)


@pytest.mark.parametrize("field", ["backlog_bytes", "backlog_oldest_ms"])
@pytest.mark.parametrize("value", [-1, "12", 1.5, True])
def test_bad_backlog_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(WireError, match=field):
        batchfmt.decode(body_with({**OLD_AGENT, field: value}))
