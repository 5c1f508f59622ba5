"""The collector SIGKILLed again and again while the agent uploads a steady stream.

The collector answers 200 only after the batch's samples and its identity are durably committed. If
it ever answered first, a kill between the answer and the commit would lose a batch the agent has
already deleted: acknowledged samples would be missing at the end. If it stored a batch and died
before answering, the agent re-sends the batch after the restart and the collector must recognise it
instead of storing it twice.

Kills at random moments rarely land in the short gap between the commit and the answer, so every
other kill is aimed there: a watcher process spins on the collector's SQLite wal-index header (the
first 48 bytes of ``collector.db-shm``; https://www.sqlite.org/walformat.html) and sends SIGKILL the
moment a new commit becomes visible, which SQLite does only after the WAL has been fsynced.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_pipeline import assert_delivered_exactly
from tests.support import Proc, Sender, metric_value, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

KILLS = 12  # half at random moments, half right after a commit
MORE_AIMED_KILLS = 10  # only if none of the aimed kills caught a batch stored but not yet answered

# Spins on the wal-index header until it shows a new commit (mxFrame, at offset 16, non-zero: a
# header with mxFrame 0 is the WAL being restarted at the start of a transaction), then SIGKILLs.
WATCHER = r"""
import mmap, os, signal, sys, time
shm, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with open(shm, "rb") as f, mmap.mmap(f.fileno(), 4096, access=mmap.ACCESS_READ) as mm:
    before = mm[:48]
    deadline = time.monotonic() + limit
    spins = 0
    while True:
        head = mm[:48]
        if head != before and head[16:20] != bytes(4):
            os.kill(pid, signal.SIGKILL)
            print("killed", flush=True)
            break
        spins += 1
        if spins % 4096 == 0 and time.monotonic() > deadline:
            print("no commit", flush=True)
            break
"""

UPLINK = {"batch_max_bytes": "64KiB", "batch_interval": 0.1, "backoff_min": 0.05, "backoff_max": 0.5}


def kill_right_after_a_commit(proc: Proc, shm: Path) -> bool:
    """SIGKILL the collector as soon as its next transaction commits; False if none came in time."""
    assert proc.popen is not None
    watcher = subprocess.run(
        [sys.executable, "-c", WATCHER, str(shm), str(proc.popen.pid), "5"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    proc.kill()  # reaps it (or kills it, if no commit came)
    return watcher.stdout.strip() == "killed"


def duplicates(collector_url: str) -> float:
    """Repeats recognised by this life of the collector (the counter starts at 0 with each process)."""
    return metric_value(collector_url, "backhaul_collector_batches_total", 'outcome="duplicate"')


def stored_batches(db: Path) -> list[tuple[str, int, int]]:
    """(buffer_id, seq, samples) of every batch the stopped collector stored for dev-1."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT buffer_id, seq, samples FROM batches WHERE device = 'dev-1' ORDER BY buffer_id, seq"
        ).fetchall()
    finally:
        conn.close()


def test_collector_sigkilled_again_and_again_stores_everything_once(start_collector, start_agent, tmp_path):
    collector = start_collector()
    agent = start_agent(collector.url, uplink=UPLINK, buffer={"budget_bytes": "256MiB"})
    sender = Sender(agent.url, series=300, interval=0.02)
    sender.start()
    rng = random.Random(11)
    shm = tmp_path / "collector.db-shm"
    recognised = 0.0  # repeats recognised, summed over the collector's lives (a lower bound)
    aimed = caught = 0  # kills aimed right after a commit; of them, re-sent and recognised after restart
    started = time.monotonic()
    kill = 0
    while kill < KILLS or (caught == 0 and kill < KILLS + MORE_AIMED_KILLS):
        time.sleep(rng.uniform(0.2, 1.2))
        recognised += duplicates(collector.url)
        at_commit = kill % 2 == 1 or kill >= KILLS
        if at_commit:
            aimed += kill_right_after_a_commit(collector.proc, shm)
        else:
            collector.proc.kill()
        kill += 1
        time.sleep(rng.uniform(0.0, 0.3))
        collector.proc.start()
        collector.proc.wait_healthy(collector.url)
        if at_commit:
            # The agent's first request to the new process: the batch it was waiting for if it never
            # heard the answer (recognised as a repeat), else the next one.
            wait_until(
                lambda: metric_value(collector.url, "backhaul_collector_requests_total", 'code="200"') >= 1,
                10,
                "the agent's first upload after the restart",
                0.02,
            )
            caught += duplicates(collector.url) >= 1
    time.sleep(1)
    sender.stop()
    assert_delivered_exactly(sender, collector.url, timeout=20)
    recognised += duplicates(collector.url)
    elapsed = time.monotonic() - started

    assert sender.refused == []
    wait_until(lambda: metric_value(agent.url, "backhaul_buffer_samples") == 0, 10, "the agent to hear every ack")
    assert metric_value(agent.url, "backhaul_buffer_evicted_samples_total") == 0
    assert metric_value(agent.url, "backhaul_buffer_expired_samples_total") == 0
    assert metric_value(agent.url, "backhaul_uplink_failures_total", 'reason="connection"') > 0
    acked_batches = metric_value(agent.url, "backhaul_uplink_batches_total", 'outcome="ok"')
    # a sender's retry of a request the agent had committed would be stored once, counted here (0 expected)
    resent_samples = metric_value(collector.url, "backhaul_collector_device_duplicate_samples_total")
    collector.proc.stop()
    rows = stored_batches(tmp_path / "collector.db")
    # one buffer, its batches numbered without gaps, each stored once and each acknowledged once
    assert len({buffer_id for buffer_id, _, _ in rows}) == 1
    assert [seq for _, seq, _ in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == acked_batches
    assert sum(n for _, _, n in rows) == len(sender.acked) + resent_samples
    # some batch was stored, its answer lost with the process, and the re-sent copy recognised
    assert caught >= 1, f"none of {aimed} kills right after a commit caught a batch before its answer"
    assert recognised >= caught
    print(
        f"\n{kill} kills in {elapsed:.1f} s ({aimed} right after a commit, {caught} of them before the answer);"
        f" {len(rows)} batches, {len(sender.acked)} samples; repeats recognised >= {recognised:.0f}"
    )
