"""``backhaul-agent``: run the agent, check its configuration without starting it, or show the running
agent's state (``status``, see :mod:`agent.status_cli`)."""

from __future__ import annotations

import sys

from agent import status_cli
from agent.app import serve
from agent.config import AgentSettings
from backhaul import cli
from backhaul.tls import ClientTls


def check(settings: AgentSettings) -> None:
    """The uplink's TLS files make a context (a certificate that fits its key, a CA bundle that parses)."""
    u = settings.uplink
    if u.tls_configured:
        ClientTls(u.ca_file, u.client_cert, u.client_key, u.server_name)


PROGRAM = cli.Program(
    "backhaul-agent",
    AgentSettings,
    serve,
    lambda s: f"device {s.device_id}, buffer {s.buffer.path}",
    check,
    {"status": status_cli.main},
)


def main(argv: list[str] | None = None) -> int:
    return cli.main(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
