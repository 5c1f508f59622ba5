"""A simulated power cut for one directory (see docs/power-cut.md).

A SIGKILL is not a power cut: the page cache outlives the process, so a crash keeps every write the
process made. A power cut keeps only what was made durable. ``lossy_fs.c`` (preloaded into the
process under test) records, at every successful fsync/fdatasync of a file in the watched directory,
the file's whole content in a *shadow* directory, and mirrors unlink and rename there.
:meth:`LossyDisk.power_cut` then makes the watched directory exactly the shadow: every write that was
not followed by a sync is gone.
"""

from __future__ import annotations

import filecmp
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("lossy_fs.c")
TMP_MARK = ".lossy-tmp."  # a shadow copy the kill interrupted; never part of the durable state


def build_library(out_dir: Path) -> Path:
    """Compile the shim; skip loudly without a C compiler (fail under CI=true, where one must exist)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the power-cut shim needs Linux (/proc/self/fd, LD_PRELOAD, glibc)")
    compiler = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if compiler is None:
        reason = (
            "no C compiler (cc/gcc/clang): the power-cut tests need one to build their LD_PRELOAD shim "
            "tests/faults/powercut/lossy_fs.c; apt-get install gcc libc6-dev"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    library = out_dir / "lossy_fs.so"
    cmd = [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(library), str(SOURCE), "-ldl", "-lpthread"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"building the power-cut shim failed: {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    return library


@dataclass
class CutReport:
    """What one power cut did to each file (relative path -> bytes it had in the page cache)."""

    vanished: dict[str, int] = field(default_factory=dict)  # never synced: gone entirely
    rolled_back: dict[str, int] = field(default_factory=dict)  # back to its content at its last sync
    written_back: dict[str, int] = field(default_factory=dict)  # kept as in the page cache (mixed mode)
    unchanged: list[str] = field(default_factory=list)  # nothing written since its last sync

    def __str__(self) -> str:
        parts = [f"{name} {value}" for name, value in vars(self).items() if value]
        return ", ".join(parts) or "nothing in the directory"


class LossyDisk:
    """A data directory whose durable state is tracked by the shim, and the power cut that applies it."""

    def __init__(self, root: Path, library: Path) -> None:
        self.dir = root / "disk"
        self.shadow = root / "durable"
        self.stats_dir = root / "lossy-stats"
        for d in (self.dir, self.shadow, self.stats_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.library = library
        self.cuts: list[CutReport] = []

    def env(self, debug: bool = False) -> dict[str, str]:
        """Environment for the process under test (its LD_PRELOAD must not be overridden elsewhere)."""
        preload = " ".join(p for p in (str(self.library), os.environ.get("LD_PRELOAD", "")) if p)
        env = {
            "LD_PRELOAD": preload,
            "LOSSY_FS_DIR": str(self.dir),
            "LOSSY_FS_SHADOW": str(self.shadow),
            "LOSSY_FS_STATS": str(self.stats_dir),
        }
        if debug:
            env["LOSSY_FS_DEBUG"] = "1"
        return env

    def power_cut(self, rng: random.Random | None = None, writeback: float = 0.5) -> CutReport:
        """Make the directory what survives a power cut. The process using it must be dead already.

        By default every write not followed by a sync is lost: each file is exactly as it was at its
        last fsync, and files never synced are gone. With ``rng`` ("mixed" mode), each file instead
        keeps, with probability ``writeback``, everything the page cache held for it (the kernel
        happened to write it all back before the power went): a crash state just as possible, which
        lets restarts meet e.g. a stale -shm, or a database file newer than its WAL's last sync.
        """
        durable = {
            p.relative_to(self.shadow).as_posix(): p
            for p in self.shadow.rglob("*")
            if p.is_file() and TMP_MARK not in p.name
        }
        cached = {p.relative_to(self.dir).as_posix(): p for p in self.dir.rglob("*") if p.is_file()}
        report = CutReport()
        restore: dict[str, Path] = {}
        for rel in sorted(durable.keys() | cached.keys()):
            now = cached.get(rel)
            if now is None:  # removed without the shim seeing it: the durable copy is what a disk has
                restore[rel] = durable[rel]
            elif rel in durable and filecmp.cmp(now, durable[rel], shallow=False):
                report.unchanged.append(rel)
                restore[rel] = now
            elif rng is not None and rng.random() < writeback:
                report.written_back[rel] = now.stat().st_size
                restore[rel] = now
            elif rel in durable:
                report.rolled_back[rel] = now.stat().st_size
                restore[rel] = durable[rel]
            else:
                report.vanished[rel] = now.stat().st_size
        staging = self.dir.with_name(self.dir.name + ".cut")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()  # even when nothing at all was durable
        for rel, src in restore.items():
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        shutil.rmtree(self.dir)
        staging.rename(self.dir)
        self.cuts.append(report)
        return report

    def stats(self) -> dict[str, int]:
        """The shim's counters, summed over every process that ran with it."""
        total: dict[str, int] = {}
        for f in self.stats_dir.glob("*.stats"):
            for line in f.read_text().splitlines():
                key, value = line.split()
                total[key] = total.get(key, 0) + int(value)
        return total

    def snapshot(self, dest: Path) -> Path:
        """Copy the directory as it is now (e.g. to read it without touching it); returns the copy."""
        shutil.copytree(self.dir, dest)
        return dest
