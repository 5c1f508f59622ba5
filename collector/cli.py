"""``backhaul-collector``: run the collector, or check its configuration without starting it."""

from __future__ import annotations

import sys

from backhaul import cli
from collector.app import serve
from collector.config import CollectorSettings


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        "backhaul-collector",
        CollectorSettings,
        serve,
        lambda s: f"{len(s.devices)} devices, store {s.store.path}",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
