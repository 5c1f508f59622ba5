"""The shipped unit files are valid for systemd (systemd-analyze verify) and fit the agent's grace."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentSettings

UNITS = Path(__file__).parents[2] / "systemd"


@pytest.mark.parametrize("name", ["backhaul-agent.service", "backhaul-collector.service"])
def test_unit_file_verifies(tmp_path, name):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        reason = "systemd-analyze is not installed (Debian package systemd)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    # Point ExecStart at this checkout's console scripts so that verify can check they exist.
    text = (UNITS / name).read_text().replace("/opt/backhaul/bin", str(Path(sys.executable).parent))
    unit = tmp_path / name
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if name in line]
    assert not problems, "\n".join(problems)


def test_agent_unit_gives_the_agent_time_to_stop_cleanly():
    text = (UNITS / "backhaul-agent.service").read_text()
    timeout = re.search(r"^TimeoutStopSec=(\d+)s$", text, re.M)
    assert timeout is not None, "the unit sets TimeoutStopSec"
    stop = int(timeout.group(1))
    grace = AgentSettings.model_fields["shutdown_grace"].default.total_seconds()
    assert grace < stop
    assert re.search(r"^Type=notify$", text, re.M) and re.search(r"^WatchdogSec=", text, re.M)
    assert re.search(r"^StateDirectory=backhaul$", text, re.M)
