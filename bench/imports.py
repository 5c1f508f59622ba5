"""What each import costs the agent: resident memory and import time, each in a fresh interpreter.

Run with ``.venv/bin/python -m bench.imports [module ...]``. For every module: a new interpreter
(this venv's, with ``-X importtime``) reads its RSS, imports the module, reads its RSS again; the
table shows the growth (the module with everything it pulls in that the bare interpreter lacks) and
the import time ``-X importtime`` reports for the module itself (cumulative, its imports included).
Costs overlap (pydantic-settings includes pydantic), so the rows do not add up to the total; the
column "on top of agent.cli" is what the module adds to an agent that has already imported what its
console script imports before it reads its config (the last row): the memory an optional part costs
when it is configured, or saves when it is not.
"""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "aiohttp",
    "pydantic",
    "pydantic_settings",
    "prometheus_client",
    "zstandard",
    "google.protobuf.message",
    "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
    "re2",
    "sqlite_utils",
    "click",
    "dateutil.parser",
    "apscheduler.schedulers.asyncio",
    "tzlocal",
    "aiomqtt",
    "paho.mqtt.client",
    "psutil",
    "asyncpg",
    "agent.proxy.server",
    "agent.supervisor",
    "agent.alerts.mqtt",
    "agent.ingest.host",
    "agent.ingest.otlp",
    "agent.alerts.channels",
    "agent.app",
    "agent.cli",
]

PROBE = """
import sys
def rss():
    with open('/proc/self/status') as f:
        return int(f.read().split('VmRSS:')[1].split()[0])
if len(sys.argv) > 2:
    exec(f"import {sys.argv[2]}")
before = rss()
exec(f"import {sys.argv[1]}")  # an import statement: -X importtime times only those
print(before, rss())
"""


def cost(module: str, after: str | None = None) -> tuple[float, float, float] | None:
    """(RSS before in MB, its growth in MB, import ms) for ``module`` in a fresh interpreter that first
    imported ``after`` (if given); None if it is not installed."""
    argv = [sys.executable, "-X", "importtime", "-c", PROBE, module, *([after] if after else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None
    before, grown = (int(x) for x in done.stdout.split())
    cumulative = 0
    for line in done.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package"
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == module:
            cumulative = int(parts[1])
    return before / 1024, (grown - before) / 1024, cumulative / 1000


def main(argv: list[str] | None = None) -> int:
    modules = (argv if argv is not None else sys.argv[1:]) or MODULES
    print(f"{'module':<62} | {'RSS growth, MB':>14} | {'import ms':>9} | {'on top of agent.cli, MB':>23}")
    print("-" * 118)
    base = None
    for module in modules:
        c = cost(module)
        if c is None:
            print(f"{module:<62} | {'not installed':>14} |")
            continue
        base = c[0]
        extra = cost(module, "agent.cli")
        print(f"{module:<62} | {c[1]:>14.1f} | {c[2]:>9.0f} | {extra[1] if extra else 0:>23.1f}")
    if base is not None:
        print(f"(a bare interpreter: {base:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
