"""Series tables by reference: once the collector keeps a device's series table, small batches go
without it (named by digest); a collector that lost its tables asks for them (409) and gets the
batch again in full at once. Every sample arrives exactly once either way."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.integration.test_pipeline import assert_delivered_exactly
from tests.support import Sender, metric_value, wait_until

pytestmark = pytest.mark.integration

BY_REFERENCE = "backhaul_collector_chunks_by_table_reference_total"


def test_small_batches_go_without_their_table_and_a_lost_table_is_sent_again(tmp_path, start_collector, start_agent):
    collector = start_collector()
    agent = start_agent(collector.url)  # 0.2 s batches: each would carry the same table
    sender = Sender(agent.url, series=300, interval=0.05)
    sender.start()
    wait_until(lambda: metric_value(collector.url, BY_REFERENCE) >= 5, 30, "chunks sent by table reference")

    # The collector loses every table it kept (a restored backup, say): the agent must recover.
    with sqlite3.connect(tmp_path / "collector.db") as db:
        db.execute("DELETE FROM series_tables")
    collector.proc.stop()  # and its memory of them
    collector.proc.start()
    collector.proc.wait_healthy(collector.url)
    wait_until(lambda: metric_value(collector.url, BY_REFERENCE) >= 5, 30, "references again after the loss")
    unknown = metric_value(collector.url, "backhaul_collector_batches_total", 'outcome="unknown_table"')
    time.sleep(0.5)
    sender.stop()
    assert_delivered_exactly(sender, collector.url)
    assert sender.refused == []
    assert unknown >= 1, "the collector never answered 409: the lost table was not exercised"
