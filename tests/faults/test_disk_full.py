"""A really full filesystem: the agent's buffer on a small tmpfs mounted by the test (root needed).

The agent must keep running, answer 503 (so senders retry) instead of crashing, recover by itself when
space frees, and respect its free-space floor by evicting (counted) before the disk fills."""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import Sender, http, metric_value, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture
def small_fs(tmp_path: Path):
    """A tmpfs of a few MB: real ENOSPC, real statvfs figures."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()

    def mount(size_mb: int) -> Path:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mountpoint)], capture_output=True, text=True
        )
        if result.returncode != 0:
            reason = f"cannot mount a tmpfs for the disk-full tests ({result.stderr.strip()}); run as root"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        return mountpoint

    yield mount
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


class NoisySender(Sender):
    """Random values barely compress, so a few MB fill quickly."""

    def scrape(self):
        batch = super().scrape()
        rng = random.Random(self.scrapes)
        return {labels: (ts, [rng.random() for _ in vals]) for labels, (ts, vals) in batch.items()}


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, leave: int) -> Path:
    filler = path / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free_bytes(path) - leave))
    return filler


def test_full_disk_answers_503_and_recovers_by_itself(small_fs, start_collector, start_agent):
    fs = small_fs(24)
    collector = start_collector()
    agent = start_agent("http://127.0.0.1:9", buffer={"path": str(fs / "buffer.db"), "min_free_bytes": 0})
    filler = fill(fs, leave=256 * 1024)
    sender = NoisySender(agent.url, series=1000, interval=0)
    sender.start()
    wait_until(
        lambda: metric_value(agent.url, "backhaul_ingest_requests_total", 'code="503"') > 0,
        30,
        "the agent to answer 503 on a full disk",
    )
    time.sleep(1)
    assert agent.proc.popen.poll() is None, "the agent died on a full disk"
    assert http("GET", f"{agent.url}/healthz")[0] == 200
    acked_while_full = len(sender.acked)
    filler.unlink()  # space frees: the agent recovers without a restart
    wait_until(lambda: len(sender.acked) > acked_while_full + 5000, 30, "ingest to resume")
    sender.stop()
    assert sender.refused == [], "a full disk must never be answered with a 4xx"
    held = metric_value(agent.url, "backhaul_buffer_samples")
    evicted = metric_value(agent.url, "backhaul_buffer_evicted_samples_total")
    assert held + evicted == len(sender.acked), "acknowledged = buffered + evicted, even through ENOSPC"
    # and the backlog drains to a collector once there is one
    agent.proc.stop()
    agent = start_agent(
        collector.url,
        port=int(agent.url.rsplit(":", 1)[1]),
        buffer={"path": str(fs / "buffer.db"), "min_free_bytes": 0},
    )
    wait_until(
        lambda: (
            metric_value(collector.url, "backhaul_collector_device_received_samples_total", 'device="dev-1"') == held
        ),
        60,
        "the backlog at the collector",
    )


def test_free_space_floor_is_kept_by_evicting(small_fs, start_agent):
    fs = small_fs(16)
    floor = 8 * 1024 * 1024
    agent = start_agent("http://127.0.0.1:9", buffer={"path": str(fs / "buffer.db"), "min_free_bytes": floor})
    sender = NoisySender(agent.url, series=1000, interval=0)
    sender.start()
    lowest = free_bytes(fs)
    deadline = time.monotonic() + 60
    while metric_value(agent.url, "backhaul_buffer_evicted_samples_total") == 0 and time.monotonic() < deadline:
        lowest = min(lowest, free_bytes(fs))
        time.sleep(0.05)
    for _ in range(40):  # keep pushing a while after evictions began
        lowest = min(lowest, free_bytes(fs))
        time.sleep(0.05)
    sender.stop()
    evicted = metric_value(agent.url, "backhaul_buffer_evicted_samples_total")
    assert evicted > 0, "the floor was never reached: the test proved nothing"
    # The WAL (up to ~4 MB between checkpoints) and page overhead sit outside the payload budget, so
    # allow them below the floor, but nowhere near a full disk.
    assert lowest > floor - 5 * 1024 * 1024, f"free space fell to {lowest} bytes, floor {floor}"
    assert sender.refused == []
    held = metric_value(agent.url, "backhaul_buffer_samples")
    assert held + evicted == len(sender.acked)
    assert metric_value(agent.url, "backhaul_buffer_filesystem_floor_bytes") == floor
