"""``backhaul-collector``: run the collector, check its configuration without starting it, manage
the device registry (``devices ...``, see :mod:`collector.registry`), or summarise the fleet
(``status``, see :mod:`collector.status_cli`)."""

from __future__ import annotations

import sys

from backhaul import cli
from backhaul.tls import ServerTls
from collector import registry, status_cli
from collector.app import serve
from collector.config import CollectorSettings


def check(settings: CollectorSettings) -> None:
    """The listener's TLS files make a context (a certificate that fits its key, a CA bundle that parses)."""
    listen = settings.listen
    if listen.tls_cert is not None and listen.tls_key is not None:
        ServerTls(listen.tls_cert, listen.tls_key, listen.client_ca)


PROGRAM = cli.Program(
    "backhaul-collector",
    CollectorSettings,
    serve,
    lambda s: f"{len(s.devices)} devices, store {s.store.describe()}",
    check,
    {"devices": registry.main, "status": status_cli.main},
)


def main(argv: list[str] | None = None) -> int:
    return cli.main(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
