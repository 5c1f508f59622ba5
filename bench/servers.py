"""The processes a benchmark measures: a real agent and collector (from their console scripts), and
the references, a real Prometheus and a real vmagent (forwarding into a :class:`ByteSink`)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from harness import BIN, READ, ProcError, Process, free_port, write_toml

DEVICE = "bench-edge-0001"
TOKEN = "bench-token"
LOG_LEVEL = "WARNING"  # the benchmarks' processes log only trouble


@dataclass
class Server:
    """A process under test: where it answers, how to tell it is ready, and where it keeps its files.

    Args:
        process: the program (its name says which kind: agent, collector, prometheus, vmagent).
        url: its base URL.
        ready_path: answers 200 once it is ready.
        workdir: its folder (configs, logs, data): what it stored is measured there.
    """

    process: Process
    url: str
    ready_path: str
    workdir: Path

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def log(self) -> Path:
        return self.process.log

    def start(self, timeout: float = 30) -> psutil.Process:
        """Start it and wait until it is ready; returns the running process (for CPU and memory)."""
        self.process.start()
        try:
            self.process.wait_ready(self.url + self.ready_path, timeout)
        except ProcError:
            self.stop()
            raise
        return self.process.ps()

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, and SIGKILL (with a warning) if it does not exit in ``timeout`` seconds."""
        if self.process.popen is None:
            return None
        try:
            return self.process.stop(timeout)
        except ProcError as exc:
            print(f"warning: {exc.name} {exc.reason}; killed it", file=sys.stderr)
            return self.process.popen.returncode


def _backhaul(name: str, program: str, config: dict[str, Any], workdir: Path) -> Server:
    port = free_port()
    config = {"log_level": LOG_LEVEL, **config, "listen": {"host": "127.0.0.1", "port": port}}
    path = write_toml(workdir / f"{name}.toml", config)
    argv = [str(BIN / program), "run", "--config", str(path)]
    return Server(Process(name, argv, workdir / f"{name}.log"), f"http://127.0.0.1:{port}", "/healthz", workdir)


def agent_server(workdir: Path, buffer: Path | None = None, collector_url: str | None = None) -> Server:
    """A real agent on ``buffer`` (default: a new one in ``workdir``), uploading to ``collector_url`` if
    given. Buffer and uplink settings stay at their defaults (synchronous FULL, 2 ms group commit, 4 MiB
    batches sent back to back while a backlog remains); the budget is raised so that nothing is evicted."""
    config: dict[str, Any] = {
        "device_id": DEVICE,
        "buffer": {"path": buffer or workdir / "buffer.db", "budget_bytes": 8 * 1024**3},
    }
    if collector_url:
        config["uplink"] = {"url": f"{collector_url}/api/v1/batches", "token": TOKEN}
    return _backhaul("agent", "backhaul-agent", config, workdir)


def collector_server(workdir: Path) -> Server:
    """A real collector with the embedded SQLite store (synchronous=FULL) that knows :data:`DEVICE`."""
    config = {"store": {"path": workdir / "collector.db"}, "devices": [{"id": DEVICE, "token": TOKEN}], "read": READ}
    return _backhaul("collector", "backhaul-collector", config, workdir)


def prometheus_server(workdir: Path, binary: str) -> Server:
    """A real Prometheus receiving remote write, scraping nothing."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-remote-write-receiver",
        "--log.level=warn",
    ]
    return Server(
        Process("prometheus", argv, workdir / "prometheus.log"), f"http://127.0.0.1:{port}", "/-/ready", workdir
    )


class ByteSink:
    """An HTTP endpoint that takes anything and counts body bytes: where vmagent forwards to. While
    ``down`` is set it answers 503 to everything (an outage of the remote end)."""

    def __init__(self) -> None:
        sink = self
        self.down = False
        self.bytes = 0
        self.requests = 0
        self.encodings: set[str] = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                if sink.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                sink.bytes += n
                sink.requests += 1
                sink.encodings.add(self.headers.get("Content-Encoding") or "none")
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="sink", daemon=True)
        self._thread.start()

    def settled(self, quiet: float = 3.0, timeout: float = 60.0) -> int:
        """Wait until no bytes arrive for ``quiet`` seconds; return the byte count."""
        deadline = time.monotonic() + timeout
        last, since = self.bytes, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < quiet:
            time.sleep(0.2)
            if self.bytes != last:
                last, since = self.bytes, time.monotonic()
        return self.bytes

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def vmagent_speaks_zstd(binary: str) -> bool:
    """Whether this vmagent has the VictoriaMetrics remote-write protocol (zstd), added in 1.88."""
    try:
        done = subprocess.run([binary, "-help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return "remoteWrite.forceVMProto" in done.stdout + done.stderr


def vmagent_server(workdir: Path, binary: str, sink: ByteSink) -> Server:
    port = free_port()
    argv = [
        binary,
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-remoteWrite.url={sink.url}/api/v1/write",
        f"-remoteWrite.tmpDataPath={workdir / 'vmagent-queue'}",
        "-remoteWrite.forceVMProto",  # the zstd protocol, without probing the sink for it
        "-loggerLevel=WARN",
    ]
    process = Process("vmagent", argv, workdir / "vmagent.log")
    return Server(process, f"http://127.0.0.1:{port}", "/health", workdir)
