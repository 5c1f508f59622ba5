"""The collector keeps what agents report they corrected (the batch header's ``corrected_samples``),
per buffer and summed per device, the same on both store back ends; and the header field is checked
and optional."""

from __future__ import annotations

import pytest

from backhaul.errors import WireError
from backhaul.wire import batch as batchfmt
from backhaul.wire.batch import BatchHeader
from backhaul.wire.series import Labels
from collector.metrics import DeviceCollector
from collector.store.postgres import PostgresStore
from collector.store.sqlite import SqliteStore
from tests.fleet.batches import put

LABELS: Labels = (("__name__", "temp"), ("room", "a"))


def header(buffer_id: str, seq: int, corrected: int) -> BatchHeader:
    return BatchHeader(
        device="dev-1", buffer_id=buffer_id, seq=seq, sent_at_ms=1, samples=1, corrected_samples=corrected
    )


@pytest.mark.parametrize("backend", ["postgres", "embedded"])
async def test_corrected_samples_are_kept_per_buffer_and_summed_per_device(backend: str, pg_dsn: str, tmp_path) -> None:
    store = PostgresStore(pg_dsn, pool_size=3) if backend == "postgres" else SqliteStore(tmp_path / "c.db", "FULL")
    await store.open()
    try:
        for buffer_id, seq, corrected in (("b1", 1, 40), ("b1", 2, 55), ("b1", 3, 50), ("b2", 1, 7)):
            await put(store, "dev-1", {LABELS: ([seq * 1000], [1.0])}, seq, header(buffer_id, seq, corrected))
        (state,) = [s for s in await store.device_states() if s.device == "dev-1"]
        assert state.corrected_samples == 55 + 7  # the newest (largest) per buffer, summed
        families = {f.name: f for f in DeviceCollector(lambda: {"dev-1": state}).collect()}
        (sample,) = families["backhaul_collector_device_corrected_samples"].samples
        assert sample.value == 62
    finally:
        await store.close()


def test_the_header_field_is_optional_and_checked() -> None:
    old = batchfmt.encode(BatchHeader(device="d", buffer_id="b", seq=1, sent_at_ms=1), [])
    assert batchfmt.decode(old)[0].corrected_samples == 0
    body = batchfmt.encode(BatchHeader(device="d", buffer_id="b", seq=1, sent_at_ms=1, corrected_samples=-1), [])
    with pytest.raises(WireError, match="corrected_samples"):
        batchfmt.decode(body)
