"""The processes the collector benchmark measures: real collectors (this tree's, and the row store of
the code before chunks, run from ``git archive`` of commit :data:`ROW_STORE_COMMIT` into a temporary
folder, nothing of it kept in the tree), a real PostgreSQL 15 and a real VictoriaMetrics, with what
each of them costs in CPU."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.collector_load import device_name, device_token
from bench.servers import Server
from harness import BIN, Process, free_port, http, write_toml

REPO = Path(__file__).resolve().parents[1]
# The last commit of main whose collector kept a row per sample.
ROW_STORE_COMMIT = "0b1e580"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def cpu_seconds(proc: psutil.Process, with_children: bool = False) -> float:
    """User and system CPU of a process (all its threads); with its children, waited-for and live."""
    t = proc.cpu_times()
    total: float = t.user + t.system
    if with_children:
        total += t.children_user + t.children_system
        for child in proc.children(recursive=True):
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.NoSuchProcess:
                pass
    return total


def collector(
    workdir: Path, name: str, devices: int, store: dict[str, Any], program: list[str] | None = None, **extra: Any
) -> Server:
    """A collector that knows the bench's devices, on ``store`` (synchronous FULL, the default)."""
    port = free_port()
    config = {
        "log_level": "WARNING",
        "listen": {"host": "127.0.0.1", "port": port},
        "store": store,
        "devices": [{"id": device_name(i), "token": device_token(i)} for i in range(devices)],
        **extra,
    }
    path = write_toml(workdir / f"{name}.toml", config)
    argv = [*(program or [str(BIN / "backhaul-collector")]), "run", "--config", str(path)]
    return Server(Process(name, argv, workdir / f"{name}.log"), f"http://127.0.0.1:{port}", "/healthz", workdir)


def unpack(commit: str, into: Path) -> bool:
    """The packages ``backhaul`` and ``collector`` of ``commit``, from git into ``into``; False without git."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit, "backhaul", "collector"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return True


def row_store_program(into: Path) -> list[str] | None:
    """The collector of :data:`ROW_STORE_COMMIT`, unpacked from git into ``into``; None without git."""
    if not unpack(ROW_STORE_COMMIT, into):
        return None
    # -P: not the working directory first on the path (it may be a checkout of the new code)
    return [sys.executable, "-P", "-c", "import sys; from collector.cli import main; sys.exit(main())"]


def row_store_collector(workdir: Path, code: Path, devices: int) -> Server:
    program = row_store_program(code)
    if program is None:
        raise RuntimeError(f"git archive {ROW_STORE_COMMIT} failed")
    server = collector(workdir, "row-store", devices, {"path": str(workdir / "row-store.db")}, program)
    server.process.env["PYTHONPATH"] = str(code)  # its own collector package before ours
    return server


class Postgres:
    """A PostgreSQL 15 server on a free port (as the ``postgres`` user when run as root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(root, pg.pw_uid, pg.pw_gid)
            self.as_user = ["setpriv", f"--reuid={pg.pw_uid}", f"--regid={pg.pw_gid}", "--clear-groups", "--"]
        self.popen: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str = "bench") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> psutil.Process:
        data = self.root / "data"
        run = [*self.as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]
        subprocess.run(run, check=True, capture_output=True, timeout=120, cwd=self.root)
        with (self.root / "postgres.log").open("ab") as log:
            self.popen = subprocess.Popen(
                [*self.as_user, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            )  # fmt: skip
        for _ in range(300):
            ready = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
            if subprocess.run(ready, check=False).returncode == 0:
                break
            time.sleep(0.1)
        create = [*self.as_user, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        subprocess.run([*create, "bench"], check=True, capture_output=True, timeout=60, cwd=self.root)
        return psutil.Process(self.popen.pid)

    def database_bytes(self) -> int:
        query = "SELECT pg_database_size('bench')"
        psql = [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-At", "-c", query]
        return int(subprocess.run(psql, check=True, capture_output=True, timeout=60).stdout)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(2)  # fast shutdown
            try:
                self.popen.wait(60)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def victoria_metrics(workdir: Path) -> Server | None:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        return None
    port = free_port()
    argv = [
        binary,
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-storageDataPath={workdir / 'vm-data'}",
        "-retentionPeriod=100y",
        "-loggerLevel=ERROR",
    ]
    return Server(Process("victoria-metrics", argv, workdir / "vm.log"), f"http://127.0.0.1:{port}", "/health", workdir)


def vm_rows(server: Server) -> float:
    """Rows VictoriaMetrics has taken in (``vm_rows_inserted_total``, all protocols)."""
    _, body, _ = http("GET", f"{server.url}/metrics", timeout=10)
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("vm_rows_inserted_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
