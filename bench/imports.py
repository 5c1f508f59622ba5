"""What each import costs the agent: resident memory and import time, each in a fresh interpreter.

Run with ``.venv/bin/python -m bench.imports [module ...]``. For every module: a new interpreter
(this venv's, with ``-X importtime``) reads its RSS, imports the module, reads its RSS again; the
table shows the growth (the module with everything it pulls in that the bare interpreter lacks) and
the import time ``-X importtime`` reports for the module itself (cumulative, its imports included).
Costs overlap (pydantic-settings includes pydantic), so the rows do not add up to the total; the
last row, ``agent.cli``, is what the agent's console script imports before it reads its config.
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
    "agent.proxy",
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
before = rss()
exec(f"import {sys.argv[1]}")  # an import statement: -X importtime times only those
print(before, rss())
"""


def cost(module: str) -> tuple[float, float, float] | None:
    """(RSS before in MB, its growth in MB, import ms) for ``module`` in a fresh interpreter; None if absent."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE, module], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        return None
    before, after = (int(x) for x in done.stdout.split())
    cumulative = 0
    for line in done.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package"
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == module:
            cumulative = int(parts[1])
    return before / 1024, (after - before) / 1024, cumulative / 1000


def main(argv: list[str] | None = None) -> int:
    modules = (argv if argv is not None else sys.argv[1:]) or MODULES
    print(f"{'module':<62} | {'RSS growth, MB':>14} | {'import ms':>9}")
    print("-" * 92)
    base = None
    for module in modules:
        c = cost(module)
        if c is None:
            print(f"{module:<62} | {'not installed':>14} |")
            continue
        base = c[0]
        print(f"{module:<62} | {c[1]:>14.1f} | {c[2]:>9.0f}")
    if base is not None:
        print(f"(a bare interpreter: {base:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
