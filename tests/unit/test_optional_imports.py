"""An agent imports its optional parts only when they are configured (issue 16: memory on small devices).

Each check runs a real agent (started and stopped inside a fresh interpreter, config from a TOML
file as the console script reads it) and looks at that interpreter's ``sys.modules``: a module
imported by any other test of this session cannot hide a regression here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import TOKEN, agent_config, free_port, write_toml

# Optional parts: what imports them, and the section that turns each on.
OPTIONAL = {
    "aiomqtt": "an mqtt alert channel",
    "paho": "an mqtt alert channel (under aiomqtt)",
    "psutil": "[host] enabled, an [inference] command to supervise, or a link that names an interface",
    "agent.ingest.host": "[host] enabled",
    "agent.alerts.mqtt": "an mqtt alert channel",
    "agent.proxy.server": "[proxy] enabled",
    "agent.supervisor": "an [inference] command",
    "asyncpg": "never: the collector's PostgreSQL driver",
    "collector": "never: the collector",
}

RUN = """
import asyncio, json, sys
from pathlib import Path
from agent.app import Agent
from agent.config import AgentSettings
from backhaul.settings import load

async def main():
    async with Agent(load(AgentSettings, Path(sys.argv[1]))):
        await asyncio.sleep(0.3)

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""


def imported(tmp_path: Path, **sections: Any) -> set[str]:
    config = agent_config(free_port(), tmp_path / "buffer.db", "http://127.0.0.1:9", **sections)
    path = write_toml(tmp_path / "agent.toml", config)
    done = subprocess.run([sys.executable, "-c", RUN, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    modules: set[str] = set(json.loads(done.stdout.splitlines()[-1]))
    return modules


def optional_in(modules: set[str]) -> set[str]:
    return {name for name in OPTIONAL if name in modules}


def test_an_agent_with_a_minimal_config_imports_no_optional_part(tmp_path: Path) -> None:
    modules = imported(tmp_path)
    assert "agent.app" in modules  # the check sees the agent's interpreter
    assert optional_in(modules) == set(), {name: OPTIONAL[name] for name in optional_in(modules)}


def test_the_optional_parts_are_imported_once_configured(tmp_path: Path) -> None:
    modules = imported(
        tmp_path,
        host={"enabled": True, "nvidia_smi": "", "tegrastats": ""},
        alerts={"token": TOKEN, "channels": [{"type": "mqtt", "host": "127.0.0.1", "port": free_port()}]},
    )
    assert {"aiomqtt", "paho", "psutil", "agent.ingest.host", "agent.alerts.mqtt"} <= modules


def test_a_restart_on_a_buffer_at_its_newest_schema_needs_neither_sqlite_utils_nor_re2(tmp_path: Path) -> None:
    # sqlite-utils (with click, dateutil, pluggy) only runs migrations; RE2 only compiles a selector's regex
    first = imported(tmp_path)
    assert "sqlite_utils" in first  # a new buffer is created through it
    again = imported(tmp_path)
    assert "agent.app" in again and not {"sqlite_utils", "click", "dateutil", "re2"} & again
    with_rule = imported(
        tmp_path, alerts={"rules": [{"name": "hot", "selector": 'temp{zone=~"gpu.*"}', "op": ">", "threshold": 90}]}
    )
    assert "re2" in with_rule
