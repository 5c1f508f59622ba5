"""``backhaul-agent``: run the agent, or check its configuration without starting it."""

from __future__ import annotations

import sys

from agent.app import serve
from agent.config import AgentSettings
from backhaul import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        "backhaul-agent",
        AgentSettings,
        serve,
        lambda s: f"device {s.device_id}, buffer {s.buffer.path}",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
