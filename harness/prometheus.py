"""A real Prometheus (Debian's 2.42) for tests and benchmarks: scraping, remote-writing to an agent, or
receiving remote write itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.net import free_port
from harness.process import Process, require_program


def start_prometheus(folder: Path, config_for: Callable[[int], str], *flags: str) -> tuple[Process, str]:
    """Start Prometheus with the YAML ``config_for(port)`` (it may scrape itself on ``port``) and its TSDB
    under ``folder``; returns the process, ready, and its URL. ``flags`` are added to the command line
    (``--web.enable-remote-write-receiver``, ``--enable-feature=...``). Stop it with ``kill()``: a
    SIGTERMed Prometheus may spend up to a minute flushing to a remote-write peer already gone."""
    binary = require_program("prometheus")
    port = free_port()
    config = folder / f"prometheus-{port}.yml"
    config.write_text(config_for(port))
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / f'tsdb-{port}'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        *flags,
    ]
    proc = Process("prometheus", argv, folder / f"prometheus-{port}.log").start()
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(f"{url}/-/ready", 30)
    return proc, url
