"""A damaged table in a running collector's SQLite store is trouble with the store, not a bug: the
upload is answered 503 with ``Retry-After`` (the agent keeps the batch and retries), never 500, and the
collector keeps running and serves again once the table is back."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Running
from tests.fleet.batches import batch_body, headers, series_for
from tests.support import TOKEN, http


def upload(collector: Running, seq: int) -> tuple[int, dict[str, str]]:
    body = batch_body("dev-1", seq, series_for("dev-1", seq))
    status, _, answer_headers = http("POST", f"{collector.url}/api/v1/batches", body, headers(TOKEN))
    return status, answer_headers


def rename_table(db: Path, old: str, new: str) -> None:
    """From another process, as a damaged file or a stray hand with the sqlite3 shell would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
    finally:
        conn.close()


# registry: the token check (DeviceAuth.device_for) reads it first; batches: the de-duplication read (seen).
@pytest.mark.integration
@pytest.mark.parametrize("table", ["registry", "batches"])
def test_a_damaged_table_is_a_503_with_retry_after_and_the_collector_keeps_running(
    table: str, start_collector: Callable[..., Running], tmp_path: Path
) -> None:
    collector = start_collector()
    assert upload(collector, 1)[0] == 200

    rename_table(tmp_path / "collector.db", table, f"{table}_away")
    status, answer_headers = upload(collector, 2)
    assert status == 503, (tmp_path / "collector.log").read_text()
    assert int(answer_headers["Retry-After"]) >= 1
    assert collector.proc.popen is not None and collector.proc.popen.poll() is None
    assert http("GET", f"{collector.url}/healthz")[0] == 200

    rename_table(tmp_path / "collector.db", f"{table}_away", table)
    assert upload(collector, 2)[0] == 200
    assert upload(collector, 2)[0] == 200  # and recognised as a repeat: the store is whole again
