"""The shape of the tree (issue 11): one error tree, imports that follow the data flow, small modules.

Data flows one way: sources -> staging -> buffer -> uplink -> collector -> store/forward, and the
shared package ``backhaul`` sits under both programs. docs/architecture.md draws the same picture.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import agent
import backhaul
import collector
from backhaul.errors import BackhaulError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backhaul", "agent", "collector")
MAX_MODULE_LINES = 400

# (importer prefix, forbidden import prefix, why)
RULES = [
    ("backhaul", "agent", "the shared package sits under both programs"),
    ("backhaul", "collector", "the shared package sits under both programs"),
    ("agent", "collector", "the agent runs without the collector"),
    ("collector", "agent", "the collector runs without the agent"),
    ("agent.buffer", "agent.ingest", "the buffer knows nothing of its sources"),
    ("agent.buffer", "agent.uplink", "the buffer knows nothing of the uplink"),
    ("agent.buffer", "agent.alerts", "the buffer knows nothing of alerts"),
    ("agent.ingest", "agent.uplink", "sources hand samples to staging only"),
    ("agent.buffer", "agent.clock", "the buffer holds chunks under a tag, knowing nothing of clocks"),
    ("agent.clock", "agent.ingest", "the clock keeper knows nothing of the sources that ask it"),
    ("agent.clock", "agent.uplink", "the clock keeper knows nothing of the uplink that tells it the time"),
    ("agent.clock", "agent.alerts", "the clock keeper knows nothing of alerts"),
    ("agent.uplink", "agent.ingest", "the uplink reads the buffer only"),
    ("agent.uplink", "agent.alerts", "bulk upload and the alert lane are separate"),
    ("agent.alerts", "agent.uplink", "the alert lane never waits on the bulk uplink"),
    ("collector.store", "collector.ingest", "stores know nothing of their endpoints"),
    ("collector.store", "collector.forward", "stores know nothing of forwarding"),
    ("collector.store", "collector.alerts", "stores know nothing of their endpoints"),
    ("collector.store.postgres", "collector.store.sqlite", "backends are siblings"),
    ("collector.store.sqlite", "collector.store.postgres", "backends are siblings"),
    ("collector.metrics", "collector.store.sqlite", "metrics read records, not a backend"),
    ("collector.metrics", "collector.store.postgres", "metrics read records, not a backend"),
    ("collector.forward", "collector.ingest", "forwarding reads its spool, not the endpoints"),
]
# Only the wiring may import the bundle of every component's metrics.
METRICS_BUNDLE = "agent.metrics"
WIRING = {"agent.app", "agent.metrics"}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level:
                base = name.rsplit(".", node.level)[0]
                out.add(f"{base}.{node.module}")
            else:
                out.add(node.module)
                out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_imports_follow_the_data_flow() -> None:
    broken = []
    for name, path in modules().items():
        for imported in imports_of(path, name):
            for importer, forbidden, why in RULES:
                if within(name, importer) and within(imported, forbidden) and not within(forbidden, importer):
                    broken.append(f"{name} imports {imported}: {why}")
            if within(imported, METRICS_BUNDLE) and name not in WIRING:
                broken.append(f"{name} imports {imported}: components declare their own metrics")
    assert broken == []


def test_no_production_module_is_over_the_size_limit() -> None:
    big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert big == {}


def test_every_exception_the_packages_define_belongs_to_one_tree() -> None:
    strays = []
    for package in (backhaul, agent, collector):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                    if not issubclass(cls, BackhaulError):
                        strays.append(f"{module.__name__}.{cls.__name__}")
    assert strays == []


@pytest.mark.slow
def test_mypy_checks_the_arguments_of_calls_run_on_a_database_thread(tmp_path: Path) -> None:
    import subprocess
    import sys

    snippet = tmp_path / "wrong_call.py"
    snippet.write_text(
        "from agent.buffer.store import BufferStore\n\n"
        "async def f(store: BufferStore) -> None:\n"
        '    await store.call(store.claim, "not a size", 0, True)\n'
        "    await store.call(store.ack, 1, 2, (), 3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stdout
    assert re.search(r'wrong_call.py:4: error: Argument 2 to "call" of "\w+" has incompatible type "str"', done.stdout)
    assert re.search(r'wrong_call.py:5: error: Too many arguments for "call"', done.stdout), done.stdout
