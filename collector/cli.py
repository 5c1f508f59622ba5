"""``backhaul-collector``: run the collector, check its configuration without starting it, or manage
the device registry (``devices ...``, see :mod:`collector.registry`)."""

from __future__ import annotations

import sys

from backhaul import cli
from collector import registry
from collector.app import serve
from collector.config import CollectorSettings


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
    )


if __name__ == "__main__":
    sys.exit(main())
