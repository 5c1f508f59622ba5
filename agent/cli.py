"""``backhaul-agent``: run the agent, or check its configuration without starting it."""

from __future__ import annotations

import asyncio
import logging
import sys

from agent.app import serve
from agent.config import AgentSettings
from backhaul.cli import parse_and_load


def main(argv: list[str] | None = None) -> int:
    command, settings = parse_and_load("backhaul-agent", AgentSettings, argv)
    if command == "check-config":
        print(f"config ok: device {settings.device_id}, buffer {settings.buffer.path}")
        return 0
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every job run at INFO
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
