"""The forwarders the footprint benchmark measures, each started the way an operator would run it on a
device: the agent (uploading to a real collector), vmagent and Prometheus in agent mode (remote-writing
to a byte sink); and the traced copy of each, under ``strace``, that counts its sync calls."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procstat
from bench.servers import DEVICE, TOKEN, Server
from harness import BIN, READ, Process, free_port, write_toml

SCRAPE_SECONDS = 5
Maker = Callable[[Path, str | None, str, int], Server]  # workdir, scrape target, remote, copy -> server


@dataclass
class Forwarder:
    """A forwarder as measured: its server, its pid, and (for the traced copy) its sync-call log."""

    server: Server
    synclog: Path | None = None
    pid: int = 0

    def start(self) -> None:
        self.server.start(timeout=60)
        self.pid = procstat.tracee(self.server.process.pid) if self.synclog else self.server.process.pid

    def stop(self) -> None:
        # SIGTERM to the program itself (not to strace), as systemd would send it.
        popen = self.server.process.popen
        if popen is None or popen.poll() is not None:
            return
        os.kill(self.pid, 15)
        try:
            popen.wait(60)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.server.name} ignored SIGTERM; killed it", file=sys.stderr)
            popen.kill()
            popen.wait()


def under_strace(server: Server) -> Forwarder:
    synclog = server.workdir / f"{server.name}.sync.log"
    server.process.argv = procstat.traced(server.process.argv, synclog)
    return Forwarder(server, synclog)


def _scrape_yaml(target: str | None, remote_url: str) -> str:
    targets = f"\n    static_configs:\n      - targets: ['{target}']" if target else "\n    static_configs: []"
    return (
        f"global:\n  scrape_interval: {SCRAPE_SECONDS}s\n"
        f"scrape_configs:\n  - job_name: node{targets}\n"
        f"remote_write:\n  - url: {remote_url}/api/v1/write\n"
    )


def _device(copy: int) -> str:
    return DEVICE if copy == 0 else f"{DEVICE[:-1]}{copy + 1}"


def _token(copy: int) -> str:
    return f"{TOKEN}-{copy}"


def agent(source_commit_seconds: float = 0.0, first_copy: int = 0) -> Maker:
    """The agent with default settings but ``buffer.source_commit_interval``; copies from
    ``first_copy`` on get their own device ids and tokens."""

    def make(workdir: Path, target: str | None, collector_url: str, copy: int) -> Server:
        copy += first_copy
        port = free_port()
        scrape: dict[str, Any] = {"interval": f"PT{SCRAPE_SECONDS}S"}
        if target:
            scrape["targets"] = [{"job": "node", "url": f"http://{target}/metrics"}]
        config = {
            "device_id": _device(copy),
            "log_level": "WARNING",
            "listen": {"host": "127.0.0.1", "port": port},
            "buffer": {"path": workdir / "buffer.db", "source_commit_interval": f"PT{source_commit_seconds:g}S"},
            "scrape": scrape,
            "uplink": {"url": f"{collector_url}/api/v1/batches", "token": _token(copy)},
        }
        path = write_toml(workdir / "agent.toml", config)
        argv = [str(BIN / "backhaul-agent"), "run", "--config", str(path)]
        process = Process("agent", argv, workdir / "agent.log")
        return Server(process, f"http://127.0.0.1:{port}", "/healthz", workdir)

    return make


def vmagent(binary: str) -> Maker:
    def make(workdir: Path, target: str | None, sink_url: str, _copy: int) -> Server:
        port = free_port()
        config = workdir / "scrape.yml"
        config.write_text(_scrape_yaml(target, sink_url).split("remote_write:")[0])
        argv = [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-promscrape.config={config}",
            f"-remoteWrite.url={sink_url}/api/v1/write",
            f"-remoteWrite.tmpDataPath={workdir / 'vmagent-queue'}",
            "-loggerLevel=WARN",
        ]
        return Server(Process("vmagent", argv, workdir / "vmagent.log"), f"http://127.0.0.1:{port}", "/health", workdir)

    return make


def prometheus_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.split()[2] if out.startswith("prometheus, version") else "?"


def prometheus_agent(binary: str) -> Maker:
    agent_flag = "--agent" if prometheus_version(binary).startswith("3") else "--enable-feature=agent"

    def make(workdir: Path, target: str | None, sink_url: str, _copy: int) -> Server:
        port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(_scrape_yaml(target, sink_url))
        argv = [
            binary,
            agent_flag,
            f"--config.file={config}",
            f"--storage.agent.path={workdir / 'agent-wal'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        process = Process("prometheus", argv, workdir / "prometheus.log")
        return Server(process, f"http://127.0.0.1:{port}", "/-/ready", workdir)

    return make


def collector(workdir: Path) -> Server:
    """A real collector (embedded SQLite store, synchronous = FULL) that knows every agent's devices."""
    port = free_port()
    config = {
        "log_level": "WARNING",
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"path": workdir / "collector.db"},
        "devices": [{"id": _device(copy), "token": _token(copy)} for copy in range(4)],
        "read": READ,
    }
    path = write_toml(workdir / "collector.toml", config)
    argv = [str(BIN / "backhaul-collector"), "run", "--config", str(path)]
    process = Process("collector", argv, workdir / "collector.log")
    return Server(process, f"http://127.0.0.1:{port}", "/healthz", workdir)
