"""A real Prometheus (Debian's 2.42) for tests and benchmarks: scraping, remote-writing to an agent, or
receiving remote write itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.net import free_port
from harness.process import Process, require_program


def start_prometheus(
    folder: Path, config_for: Callable[[int], str], *flags: str, binary: str | None = None
) -> tuple[Process, str]:
    """Start Prometheus with the YAML ``config_for(port)`` (it may scrape itself on ``port``) and its TSDB
    under ``folder``; returns the process, ready, and its URL. ``flags`` are added to the command line
    (``--web.enable-remote-write-receiver``, ``--enable-feature=...``). Stop it with ``kill()``: a
    SIGTERMed Prometheus may spend up to a minute flushing to a remote-write peer already gone.
    ``binary``: another Prometheus than the installed one (``prometheus3``: one that sends remote write 2.0)."""
    binary = binary or require_program("prometheus")
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


def prometheus3() -> str:
    """A Prometheus 3 binary, which sends Remote-Write 2.0: ``prometheus3`` on PATH, else Debian sid's
    package fetched (not installed) by bench/fetch-prometheus into a cache folder. Skips the test when
    neither is possible (no root, no network); under CI=true fails it."""
    import pytest  # here, not at the top: bench uses this module without pytest

    found = shutil.which("prometheus3")
    if found:
        return found
    script = Path(__file__).resolve().parents[1] / "bench" / "fetch-prometheus"
    try:
        done = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
        why = done.stderr.strip()[-300:] if done.returncode != 0 else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = f"bench/fetch-prometheus: {exc}"
    if why:
        if os.environ.get("CI") == "true":  # a missing peer is a failure in CI, never a skip
            pytest.fail(f"CI: no Prometheus 3: {why}")
        pytest.skip(f"no Prometheus 3: {why}")
    return done.stdout.strip().splitlines()[-1]
