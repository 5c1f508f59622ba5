"""What a process costs the device, read from ``/proc`` and from an strace log of its sync calls.

:class:`Reading` is one snapshot of a process (all its threads): bytes it sent to the block layer
(``/proc/PID/io`` ``write_bytes``: counted when a page is dirtied, so writes the kernel flushes later
are still charged to the process), CPU seconds (``/proc/PID/stat``), context switches summed over
``/proc/PID/task/*/status`` (a voluntary switch is a thread going to sleep and waking again: the
wake-ups that keep a small CPU out of its idle states), current and peak RSS (``VmRSS``, ``VmHWM``).
The difference of two readings is what the process did between them.

Sync calls cannot be read from ``/proc``: :func:`traced` runs a program under
``strace --seccomp-bpf``, which stops the program only on the sync calls themselves (so it does not
slow the rest), and :func:`sync_calls` counts the calls of that log inside a time window.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "syncfs", "msync")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Reading:
    """One snapshot of a process, at ``time.time()`` ``at``."""

    at: float
    write_bytes: int
    cpu_seconds: float
    voluntary_switches: int
    involuntary_switches: int
    rss: int
    peak_rss: int

    @property
    def switches(self) -> int:
        return self.voluntary_switches + self.involuntary_switches


def _status_fields(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _kib(value: str) -> int:
    return int(value.split()[0]) * 1024


def read(pid: int, at: float) -> Reading:
    """A snapshot of ``pid``; ``at`` is the wall-clock time it stands for."""
    proc = Path(f"/proc/{pid}")
    io = _status_fields(proc / "io")
    stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat (utime, stime), counted from the state field (3) after the name.
    cpu = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
    voluntary = involuntary = 0
    for task in (proc / "task").iterdir():
        try:
            status = _status_fields(task / "status")
        except FileNotFoundError:  # a thread that ended between listing and reading
            continue
        voluntary += int(status["voluntary_ctxt_switches"])
        involuntary += int(status["nonvoluntary_ctxt_switches"])
    status = _status_fields(proc / "status")
    return Reading(
        at,
        int(io["write_bytes"]),
        cpu,
        voluntary,
        involuntary,
        _kib(status["VmRSS"]),
        _kib(status["VmHWM"]),
    )


def traced(argv: list[str], log: Path) -> list[str]:
    """``argv`` under strace, logging each sync call (all threads, wall-clock timestamps) to ``log``."""
    calls = ",".join(SYNC_CALLS)
    return ["strace", "--seccomp-bpf", "-f", "-qq", "-ttt", "-e", f"trace={calls}", "-e", "signal=none",
            "-o", str(log), *argv]  # fmt: skip


def tracee(strace_pid: int, timeout: float = 10.0) -> int:
    """The pid of the program strace started (its only child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(strace_pid).children()
        if children:
            pid: int = children[0].pid
            return pid
        time.sleep(0.02)
    raise RuntimeError(f"strace {strace_pid} started no program within {timeout} s")


def sync_calls(log: Path, start: float, end: float) -> int:
    """Sync calls logged by :func:`traced` that started within ``[start, end)`` (wall clock)."""
    n = 0
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) < 3 or parts[2].startswith("<..."):  # the second half of an interrupted call
            continue
        try:
            at = float(parts[1])
        except ValueError:
            continue
        if start <= at < end and parts[2].split("(", 1)[0] in SYNC_CALLS:
            n += 1
    return n
