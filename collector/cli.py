"""``backhaul-collector``: run the collector, check its configuration without starting it, or manage
the device registry (``devices ...``, see :mod:`collector.registry`)."""

from __future__ import annotations

import sys

from backhaul import cli
from backhaul.tls import ServerTls
from collector import registry
from collector.app import serve
from collector.config import CollectorSettings


def check(settings: CollectorSettings) -> None:
    """The listener's TLS files make a context (a certificate that fits its key, a CA bundle that parses)."""
    listen = settings.listen
    if listen.tls_cert is not None and listen.tls_key is not None:
        ServerTls(listen.tls_cert, listen.tls_key, listen.client_ca)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["devices"]:
        return registry.main("backhaul-collector", args[1:])
    return cli.main(
        "backhaul-collector",
        CollectorSettings,
        serve,
        lambda s: f"{len(s.devices)} devices, store {s.store.describe()}",
        argv,
        check,
    )


if __name__ == "__main__":
    sys.exit(main())
