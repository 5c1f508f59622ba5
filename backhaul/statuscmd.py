"""The ``status`` command both programs share: find the running program, read its API, print.

``--config PATH`` finds the listener (``[listen] host/port`` in the file, ``BACKHAUL_LISTEN__*``
override it, as for ``run``; a wildcard host is asked on 127.0.0.1), ``--url`` names it outright,
``--json`` prints what the API answered, ``--watch [SECONDS]`` redraws until Ctrl-C. A program that
cannot be reached is exit status 1 with the reason on stderr; an answer that is not the status is 1
too (an HTTP error names its status).

Only the config file's ``[listen]`` is read, not the whole settings: the command runs as an operator
who may not read every file the service reads (its TLS key).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backhaul.errors import PeerError

EXIT_UNREACHABLE = 1


class Unreachable(PeerError):
    """The program did not answer (or not with its status); the message says why."""

    def __init__(self, detail: str) -> None:
        super().__init__("unreachable", detail)

    def __str__(self) -> str:
        return self.detail


def parser(prog: str, default_port: int, token: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} status", description="show the running program's state")
    p.add_argument("--config", type=Path, help="the program's TOML file (finds its listener)")
    p.add_argument("--url", help=f"the program's address instead (default http://127.0.0.1:{default_port})")
    p.add_argument("--json", action="store_true", help="print the API's JSON, for scripts")
    p.add_argument(
        "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS", help="refresh (every 2 s)"
    )
    if token:
        p.add_argument("--token", help="a [read] token (default: $BACKHAUL_READ_TOKEN)")
    return p


def base_url(config: Path | None, url: str | None, default_port: int, tls: bool = False) -> str:
    """Where the program listens: ``url``, else the config's ``[listen]``, else the default port."""
    if url:
        return url.rstrip("/")
    listen: dict[str, Any] = {}
    if config is not None:
        try:
            listen = dict(tomllib.loads(config.read_text()).get("listen", {}))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise Unreachable(f"cannot read {config}: {getattr(exc, 'strerror', None) or exc}") from exc
    host = os.environ.get("BACKHAUL_LISTEN__HOST", str(listen.get("host", "127.0.0.1")))
    port = os.environ.get("BACKHAUL_LISTEN__PORT", str(listen.get("port", default_port)))
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if tls or listen.get("tls_cert") else "http"
    return f"{scheme}://{host}:{port}"


def fetch(url: str, token: str | None = None, timeout: float = 5.0) -> Any:
    """GET ``url`` as JSON; :class:`Unreachable` with the reason otherwise."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    context = ssl.create_default_context()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 503:  # /healthz-style answers still carry the state
            body = exc.read()
        else:
            raise Unreachable(f"{url} answered HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        raise Unreachable(f"cannot reach {url}: {reason}") from exc
    except (TimeoutError, OSError) as exc:
        raise Unreachable(f"cannot reach {url}: {exc.strerror or exc}") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise Unreachable(f"{url} did not answer JSON (is it the right program?)") from exc


def run(prog: str, args: argparse.Namespace, read: Callable[[], Any], render: Callable[[Any], str]) -> int:
    """Print once, or redraw every ``--watch`` seconds; exit 1 with the reason when unreachable."""
    try:
        return _run(prog, args, read, render)
    except KeyboardInterrupt:  # Ctrl-C ends --watch (or a slow answer): not an error
        return 0


def _run(prog: str, args: argparse.Namespace, read: Callable[[], Any], render: Callable[[Any], str]) -> int:
    while True:
        try:
            data = read()
        except Unreachable as exc:
            print(f"{prog} status: {exc}", file=sys.stderr)
            if args.watch is None:
                return EXIT_UNREACHABLE
            data = None
        if args.watch is None:
            print(json.dumps(data, indent=2, sort_keys=True) if args.json else render(data))
            return 0
        if data is not None:
            text = json.dumps(data, indent=2, sort_keys=True) if args.json else render(data)
            # Clear the screen and go home, then the new text: a redraw, not a scroll.
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            sys.stdout.flush()
        time.sleep(max(0.2, args.watch))


# -- formatting shared by both renderings --------------------------------------------------------


def size(n: float | None) -> str:
    if n is None:
        return "n/a"
    value, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{int(value)} {units[i]}" if i == 0 else f"{value:.1f} {units[i]}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def bar(share: float | None, width: int = 20) -> str:
    if share is None:
        return "[" + " " * width + "]"
    filled = max(0, min(width, round(share * width)))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {share * 100:3.0f} %"


def when(ts_s: float | None) -> str:
    if not ts_s:
        return "n/a"
    return datetime.fromtimestamp(ts_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def na(value: object) -> str:
    return "n/a" if value is None or value == "" else str(value)
