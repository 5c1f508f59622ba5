"""backhaul.memory: large freed blocks go back to the system (issue 16: 117.7 -> 94.6 MB at 10k series)."""

from __future__ import annotations

import subprocess
import sys

from harness import child_env

# The pattern that kept the agent's heap large: one big block freed (glibc then raises its mmap
# threshold past it), then big blocks with small, long-lived malloc'd objects between them.
PROBE = """
import sys
from backhaul.memory import return_large_blocks
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
applied = sys.argv[1] == "fix" and return_large_blocks()
first = bytearray(2 << 20); del first
before = rss()
big, small = [], []
for i in range(40):
    big.append(bytearray(1 << 20))
    small.append(b"x" * 600 + bytes([i]))  # over 512 bytes: from malloc, not from Python's own arenas
del big
print(applied, rss() - before)
"""


def _kept(mode: str, env: dict[str, str] | None = None) -> tuple[bool, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=child_env(env or {}), capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", float(out[1])


def test_freed_large_blocks_leave_the_process_once_the_threshold_is_fixed() -> None:
    applied, kept = _kept("fix")
    assert applied and kept < 4  # MB of the 40 freed
    assert _kept("none")[1] > 30  # without it glibc keeps them: the probe can tell


def test_an_operator_s_own_malloc_settings_are_left_alone() -> None:
    applied, _ = _kept("fix", {"MALLOC_TRIM_THRESHOLD_": "262144"})
    assert not applied
