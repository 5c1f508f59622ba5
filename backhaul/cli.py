"""The command-line shape both programs share: ``run --config PATH`` and ``check-config --config PATH``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pydantic_settings import BaseSettings

from backhaul import __version__
from backhaul.errors import BackhaulError, ConfigError
from backhaul.settings import load

S = TypeVar("S", bound=BaseSettings)

EXIT_FAILED = 1
EXIT_CONFIG = 2


def parse_and_load(prog: str, cls: type[S], argv: list[str] | None) -> tuple[str, S]:
    """Parse the command line and load settings; a bad config exits with status 2 and names the field."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run in the foreground"), ("check-config", "validate the configuration and exit")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, help="TOML file; BACKHAUL_* environment variables override it")
    args = parser.parse_args(argv)
    try:
        settings = load(cls, args.config)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    return args.command, settings


def main(
    prog: str,
    cls: type[S],
    serve: Callable[[S], Coroutine[Any, Any, None]],
    summary: Callable[[S], str],
    argv: list[str] | None,
    check: Callable[[S], object] | None = None,
) -> int:
    """Both programs' entry point: ``check-config`` prints ``summary``, ``run`` runs ``serve``.
    ``check`` looks further than the settings can (e.g. that a certificate fits its key), for both."""
    command, settings = parse_and_load(prog, cls, argv)
    if check is not None:
        try:
            check(settings)
        except ConfigError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if command == "check-config":
        print(f"config ok: {summary(settings)}")
        return 0
    level = getattr(settings, "log_level", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every job run at INFO
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        # Found only once running (a file that became unreadable): restarting cannot fix it either.
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (BackhaulError, OSError) as exc:
        # A start that failed (a port taken, a folder not writable, a store that cannot open) has
        # already unwound what it started: one line that says why, and status 1 for systemd.
        print(f"{prog}: cannot run: {_why(exc)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)
