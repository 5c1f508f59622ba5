"""Power cuts, simulated faithfully: everything the agent wrote but did not fsync is lost.

A SIGKILL keeps the page cache, so the SIGKILL tests in tests/integration cannot tell a buffer that
fsyncs before answering 204 from one that does not. Here the agent runs with the LD_PRELOAD shim of
tests/faults/powercut (see docs/power-cut.md), and a power cut is: SIGKILL, then the data directory
becomes exactly what was fsynced, then restart.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backhaul.wire.chunk import Codec
from tests.faults.powercut import CutReport, LossyDisk, build_library
from tests.support import Proc, Sender, agent_config, exported_samples, free_port, metric_value, toml_text, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

log = logging.getLogger(__name__)
Key = tuple[tuple[tuple[str, str], ...], int]
NOWHERE = "http://127.0.0.1:9"  # nothing listens on the discard port: the uplink is down


@pytest.fixture(scope="session")
def lossy_fs_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library(tmp_path_factory.mktemp("lossy_fs"))


@dataclass
class LossyAgent:
    """An agent whose buffer lives on a :class:`LossyDisk`."""

    proc: Proc
    url: str
    disk: LossyDisk

    @property
    def db(self) -> Path:
        return self.disk.dir / "buffer.db"

    def power_cut(self, rng: random.Random | None = None) -> CutReport:
        """Now, wherever the agent is."""
        self.proc.kill()
        report = self.disk.power_cut(rng)
        log.info("power cut %d: %s", len(self.disk.cuts), report)
        return report

    def power_cut_in_sync(self, n: int, rng: random.Random | None = None, timeout: float = 10) -> bool:
        """Start the agent so that the power goes while its ``n``-th fsync/fdatasync is in flight.

        Returns whether it did; without ``n`` syncs within ``timeout`` the power goes then instead.
        """
        self.proc.env["LOSSY_FS_KILL_AT_SYNC"] = str(n)
        log_start = self.proc.log.stat().st_size if self.proc.log.exists() else 0
        try:
            self.proc.start()
            popen = self.proc.popen
            assert popen is not None
            deadline = time.monotonic() + timeout
            while popen.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            del self.proc.env["LOSSY_FS_KILL_AT_SYNC"]
        in_sync = popen.returncode is not None
        if in_sync:
            with self.proc.log.open("rb") as f:
                f.seek(log_start)
                said = f.read().decode(errors="replace")
            assert f"sync #{n} of " in said, f"the agent exited ({popen.returncode}), not in sync #{n}"
        else:
            self.proc.kill()
        report = self.disk.power_cut(rng)
        log.info("power cut %d, %s: %s", len(self.disk.cuts), f"in sync #{n}" if in_sync else "timer", report)
        return in_sync

    def damaged(self) -> list[str]:
        """Files the agent moved aside because it found its buffer damaged."""
        return sorted(p.name for p in self.disk.dir.iterdir() if ".corrupt-" in p.name)

    def restart(self, intact: bool = True) -> None:
        self.proc.start()
        self.proc.wait_healthy(self.url)
        if intact:
            assert not self.damaged(), f"the agent found its buffer damaged after a power cut: {self.damaged()}"


@pytest.fixture
def lossy_agent(tmp_path: Path, lossy_fs_library: Path) -> Iterator[Callable[..., LossyAgent]]:
    started: list[Proc] = []

    def start(collector_url: str, synchronous: str = "FULL", **uplink: object) -> LossyAgent:
        disk = LossyDisk(tmp_path / "agent", lossy_fs_library)
        port = free_port()
        config = tmp_path / "agent.toml"
        buffer = {"synchronous": synchronous}
        config.write_text(
            toml_text(agent_config(port, disk.dir / "buffer.db", collector_url, buffer=buffer, uplink=uplink))
        )
        proc = Proc("backhaul-agent", config, tmp_path / "agent.log", env=disk.env())
        started.append(proc)
        agent = LossyAgent(proc, f"http://127.0.0.1:{port}", disk)
        agent.restart()
        return agent

    yield start
    for proc in started:
        proc.kill()


def buffered(db: Path, scratch: Path) -> set[Key]:
    """Samples in the buffer files at ``db``, read from a copy so that the disk is left untouched."""
    copy = scratch / "copy"
    if copy.exists():
        shutil.rmtree(copy)
    copy.mkdir(parents=True)
    for suffix in ("", "-wal"):
        if Path(f"{db}{suffix}").exists():
            shutil.copyfile(f"{db}{suffix}", copy / f"buffer.db{suffix}")
    if not (copy / "buffer.db").exists():
        return set()
    codec = Codec()
    found: set[Key] = set()
    conn = sqlite3.connect(copy / "buffer.db")
    try:
        for (blob,) in conn.execute("SELECT data FROM chunks"):
            for labels, (stamps, _) in codec.decode(blob, 1 << 30).items():
                found.update((labels, t) for t in stamps)
    finally:
        conn.close()
    return found


def assert_shim_saw_the_syncs(disk: LossyDisk) -> dict[str, int]:
    stats = disk.stats()
    assert stats.get("errors", 0) == 0, stats
    assert stats.get("fdatasync", 0) + stats.get("fsync", 0) > 0, f"the shim intercepted no sync at all: {stats}"
    assert stats.get("snapshots", 0) > 0, f"the shim recorded nothing durable: {stats}"
    return stats


SHIM_EXERCISE = r"""
import os, sqlite3, sys
d = sys.argv[1]
def put(name, data, sync=None):
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, data)
    if sync:
        getattr(os, sync)(fd)
    os.close(fd)
put("a", b"durable", "fsync"); put("a", b"+lost")
put("b", b"never synced")
put("c", b"c", "fdatasync"); os.rename(os.path.join(d, "c"), os.path.join(d, "c2"))
put("d", b"d", "fsync"); os.unlink(os.path.join(d, "d"))
put("e", b"e", "fsync"); put("f", b"f"); os.replace(os.path.join(d, "f"), os.path.join(d, "e"))
os.mkdir(os.path.join(d, "sub")); put("sub/g", b"g", "fsync")
db = sqlite3.connect(os.path.join(d, "t.db"), isolation_level=None)
db.execute("PRAGMA journal_mode = WAL"); db.execute("PRAGMA synchronous = FULL")
db.execute("CREATE TABLE t (x)"); db.execute("INSERT INTO t VALUES ('synced')")
db.execute("PRAGMA synchronous = OFF"); db.execute("INSERT INTO t VALUES ('not synced')")
put("h", b"1", "fsync"); put("h", b"2", "fsync")  # dies here under LOSSY_FS_KILL_AT_SYNC
os.kill(os.getpid(), 9)
"""


def run_exercise(disk: LossyDisk, **env: str) -> int:
    return subprocess.run(
        [sys.executable, "-c", SHIM_EXERCISE, str(disk.dir)], env={**os.environ, **disk.env(), **env}, check=False
    ).returncode


def rows(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT x FROM t ORDER BY rowid")]
    finally:
        conn.close()


def test_the_shim_keeps_exactly_what_was_synced(tmp_path, lossy_fs_library):
    """The harness itself: files, renames and SQLite (through the system libsqlite3) after a cut."""
    disk = LossyDisk(tmp_path / "plain", lossy_fs_library)
    assert run_exercise(disk) == -9
    report = disk.power_cut()
    files = {p.relative_to(disk.dir).as_posix(): p.read_bytes() for p in disk.dir.rglob("*") if p.is_file()}
    assert {k: v for k, v in files.items() if not k.startswith("t.db")} == {
        "a": b"durable",  # what was written after the fsync is gone
        "c2": b"c",  # the durable copy follows a rename
        "sub/g": b"g",
        "h": b"12",
    }, report  # b never synced, d unlinked, e replaced by a file never synced
    assert rows(disk.dir / "t.db") == ["synced"]
    stats = disk.stats()
    assert stats["fsync"] == 6 and stats["fdatasync"] >= 2 and stats["renames"] == 2 and stats["errors"] == 0

    # the power goes during the last sync (the second of "h"): that sync never became durable
    disk = LossyDisk(tmp_path / "in-sync", lossy_fs_library)
    file_syncs = stats["fsync"] + stats["fdatasync"] - stats["dir_syncs"]
    assert run_exercise(disk, LOSSY_FS_KILL_AT_SYNC=str(file_syncs)) == -9
    disk.power_cut()
    assert (disk.dir / "h").read_bytes() == b"1"

    # mixed mode with every file written back: the page cache's content, files never synced included
    disk = LossyDisk(tmp_path / "written-back", lossy_fs_library)
    assert run_exercise(disk) == -9
    disk.power_cut(random.Random(0), writeback=1.0)
    assert (disk.dir / "a").read_bytes() == b"durable+lost"
    assert (disk.dir / "b").read_bytes() == b"never synced"
    assert rows(disk.dir / "t.db") == ["synced", "not synced"]


def test_power_cuts_lose_nothing_acknowledged_with_synchronous_full(start_collector, lossy_agent):
    """Default settings (synchronous = FULL). Power cuts while a sender pushes and the uploader seals,
    sends and deletes batches: every acknowledged sample reaches the collector.

    Cuts alternate between a random moment (SIGKILL after a random time: during ingest, upload, or
    idle) and an fsync in flight (the shim kills the agent inside its n-th sync, before that sync is
    durable; two of these fall in startup). Half the cuts of each kind are in mixed mode, where each
    file may instead keep everything its page cache held.
    """
    collector = start_collector()
    agent = lossy_agent(collector.url, batch_max_bytes="64KiB")
    sender = Sender(agent.url, series=300, interval=0.005)
    sender.start()
    rng = random.Random(20240503)  # the schedule: when, and in which sync
    mixed = random.Random(20240504)  # which files keep their page cache, in mixed mode
    in_sync = 0
    for i in range(6):
        time.sleep(rng.uniform(0.2, 1.0))
        agent.power_cut(mixed if i % 2 else None)
        time.sleep(rng.uniform(0.0, 0.2))
        # the power comes back, and goes again while the agent's n-th sync is in flight: the first two
        # times in its 1st and 2nd sync (while it opens the buffer), then in a random one
        n = i + 1 if i < 2 else rng.randint(3, 60)
        in_sync += agent.power_cut_in_sync(n, None if i % 2 else mixed)
        agent.restart()
    time.sleep(1.0)
    sender.stop()
    stats = assert_shim_saw_the_syncs(agent.disk)
    log.info("shim counters: %s", stats)
    assert sender.retries > 0, "no request was ever interrupted: the cuts did not test anything"
    assert sender.refused == [], "the agent refused requests (4xx): the sender counts them as acknowledged"
    assert in_sync == 6, "some cuts meant to fall in a sync did not"

    def complete():
        got = exported_samples(collector.url, '{job="sender"}')
        flat = {(labels, t): v for labels, points in got.items() for t, v in points.items()}
        return flat if len(flat.keys() & sender.acked.keys()) == len(sender.acked) else None

    try:
        flat = wait_until(complete, 30, f"{len(sender.acked)} acknowledged samples at the collector", 0.5)
    except AssertionError:
        agent.proc.kill()  # a crash keeps every commit: what is not in the files now was never committed
        got = exported_samples(collector.url, '{job="sender"}')
        at_collector = {(labels, t) for labels, points in got.items() for t in points}
        waiting = sender.acked.keys() - at_collector
        missing = waiting - buffered(agent.db, agent.disk.dir.parent / "check")
        pytest.fail(
            f"{len(waiting)} acknowledged samples not at the collector, {len(missing)} of them not in the "
            f"buffer either (lost across power cuts), e.g. {sorted(missing or waiting)[:3]}"
        )
    extra = flat.keys() - sender.acked.keys() - sender.unacknowledged
    assert not extra, f"{len(extra)} samples nobody acknowledged, e.g. {sorted(extra)[:3]}"
    wrong = [k for k, v in sender.acked.items() if flat[k] != v]
    assert not wrong, f"{len(wrong)} values changed on the way, e.g. {wrong[:3]}"
    stored = metric_value(collector.url, "backhaul_collector_device_received_samples_total", 'device="dev-1"')
    assert stored == len(flat), "the collector stored some sample twice"


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL", "OFF"])
def test_power_cut_right_after_a_burst_of_acknowledged_writes(lossy_agent, tmp_path, synchronous):
    """The same harness, deterministic, for each synchronous level. Burst A of acknowledged writes, a
    clean restart (closing the buffer checkpoints it), burst B, a crash (SIGKILL: the page cache keeps
    everything), then a power cut right after B.

    - FULL: nothing acknowledged is lost, by crash or power cut.
    - OFF (the control, showing that the harness detects loss): the crash loses nothing, the power cut
      loses acknowledged samples, even those of A (a checkpoint without fsync makes nothing durable).
    - NORMAL: in WAL mode the WAL is synced only at checkpoints: A survives (checkpointed at close),
      the commits of B since the last checkpoint may be lost, but only the newest ones: what survives
      is a prefix of what was acknowledged.
    """
    agent = lossy_agent(NOWHERE, synchronous=synchronous)
    sender = Sender(agent.url, series=200, interval=0)
    sender.start()
    wait_until(lambda: len(sender.acked) >= 10_000, 20, "burst A")
    sender.stop()
    assert sender.unacknowledged == set() and sender.refused == []
    burst_a = list(sender.acked)
    assert agent.proc.stop() == 0
    agent.restart()
    sender = Sender(agent.url, series=200, interval=0, start_ms=sender.next_ms)
    sender.start()
    wait_until(lambda: len(sender.acked) >= 10_000, 20, "burst B")
    sender.stop()
    assert sender.unacknowledged == set() and sender.refused == []
    acked = burst_a + list(sender.acked)  # in the order they were acknowledged (one request at a time)

    # A crash is not a power cut: whatever the level, the page cache keeps every commit.
    agent.proc.kill()
    after_crash = buffered(agent.db, tmp_path / "crash")
    assert set(acked) <= after_crash, f"a mere crash lost {len(set(acked) - after_crash)} acknowledged samples"

    report = agent.disk.power_cut()
    agent.restart(intact=synchronous != "OFF")  # OFF may corrupt the database; the agent copes
    held = metric_value(agent.url, "backhaul_buffer_samples")
    assert agent.proc.stop() == 0
    after_cut = buffered(agent.db, tmp_path / "cut")
    assert held == len(after_cut)
    lost = [k for k in acked if k not in after_cut]
    lost_a = sum(1 for k in burst_a if k not in after_cut)
    # With OFF, SQLite never syncs at all: there is nothing for the shim to see.
    stats = agent.disk.stats() if synchronous == "OFF" else assert_shim_saw_the_syncs(agent.disk)
    print(
        f"\nsynchronous={synchronous}: {len(acked)} acknowledged ({len(burst_a)} before the clean restart); "
        f"the power cut lost {len(lost)} ({lost_a} of them from before the restart)\n  cut: {report}\n"
        f"  moved aside as damaged: {agent.damaged()}\n  shim: {stats}"
    )

    if synchronous == "FULL":
        assert not lost, f"{len(lost)} acknowledged samples lost by a power cut, e.g. {lost[:3]}"
    elif synchronous == "OFF":
        # the control: this harness does see acknowledged writes that never reached the disk
        assert lost, "synchronous = OFF lost nothing in a power cut: the harness cannot detect loss"
    else:
        assert lost_a == 0, "NORMAL lost commits that a checkpoint had made durable"
        first = acked.index(lost[0]) if lost else len(acked)
        assert set(lost) == set(acked[first:]), "NORMAL lost a commit older than one it kept"
