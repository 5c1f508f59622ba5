"""The command-line shape both programs share: ``run --config PATH``, ``check-config --config PATH``
and the program's own further commands (``status``, the collector's ``devices``).

``run`` hands the program a way to load its config again (the same file, the same checks), for the
reload on SIGHUP (:mod:`backhaul.reload`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from backhaul import __version__, memory
from backhaul.errors import BackhaulError, ConfigError
from backhaul.settings import ProgramSettings, load

S = TypeVar("S", bound=ProgramSettings)

EXIT_FAILED = 1
EXIT_CONFIG = 2


def parse_and_load(prog: str, cls: type[S], argv: list[str] | None) -> tuple[str, S, Path | None, Path | None]:
    """Parse the command line and load settings; a bad config exits with status 2 and names the field.

    Returns the command, the settings, the file a reload reads and the file read at start."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run in the foreground"), ("check-config", "validate the configuration and exit")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, help="TOML file; BACKHAUL_* environment variables override it")
        if name == "run":
            cmd.add_argument(
                "--reload-from",
                type=Path,
                help="a reload (SIGHUP) reads this file when it exists, else --config (see docs/operations.md)",
            )
    args = parser.parse_args(argv)
    try:
        settings = load(cls, args.config)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    return args.command, settings, getattr(args, "reload_from", None) or args.config, args.config


def again(
    cls: type[S], path: Path | None, check: Callable[[S], object] | None, fallback: Path | None = None
) -> Callable[[], S]:
    """Loads the config as ``run`` did at start (file, environment, ``check``): for a reload. ``path``
    is read when it exists, else ``fallback`` (``--reload-from`` before the first copy is there)."""

    def load_again() -> S:
        chosen = path if path is None or fallback is None or path.exists() else fallback
        settings = load(cls, chosen)
        if check is not None:
            check(settings)
        return settings

    return load_again


Command = Callable[[str, list[str]], int]


@dataclass(frozen=True)
class Program(Generic[S]):
    """One program: its name, settings, what ``run`` serves, what ``check-config`` prints.

    ``check`` looks further than the settings can (e.g. that a certificate fits its key), for both;
    ``commands`` are the program's further commands, each called with the program's name and the
    arguments after the command's name.
    """

    name: str
    settings: type[S]
    serve: Callable[[S, Callable[[], S]], Coroutine[Any, Any, None]]
    summary: Callable[[S], str]
    check: Callable[[S], object] | None = None
    commands: Mapping[str, Command] = field(default_factory=dict)


def main(program: Program[S], argv: list[str] | None = None) -> int:
    """Both programs' entry point: a further command, ``check-config`` or ``run``."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] and args[0] in program.commands:
        return program.commands[args[0]](program.name, args[1:])
    prog, cls, serve, check = program.name, program.settings, program.serve, program.check
    command, settings, path, start_path = parse_and_load(prog, cls, args)
    if check is not None:
        try:
            check(settings)
        except ConfigError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if command == "check-config":
        print(f"config ok: {program.summary(settings)}")
        return 0
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every job run at INFO
    memory.return_large_blocks()
    memory.freeze_imports()
    memory.collect_less_often()
    try:
        asyncio.run(serve(settings, again(cls, path, check, start_path)))
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
