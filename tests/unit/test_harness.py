"""The shared harness's pieces that need no process: its public API, TOML writing, /metrics reading."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import harness
from harness import metric_sum, parse_metrics, toml_text

HARNESS = Path(harness.__file__).parent


def test_public_api_is_exactly_all():
    # every public name a harness module defines is exported once, and nothing else is
    defined: set[str] = set()
    for module in HARNESS.glob("*.py"):
        if module.name == "__init__.py":
            continue
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                defined.add(node.name)
    assert defined <= set(harness.__all__), defined - set(harness.__all__)
    assert all(hasattr(harness, name) for name in harness.__all__)
    assert len(harness.__all__) == len(set(harness.__all__))


def test_toml_text_round_trips_configs_with_nested_tables_and_paths(tmp_path):
    config = {
        "device_id": "dev-1",
        "shutdown_grace": 10,
        "listen": {"host": "127.0.0.1", "port": 9201},
        "buffer": {"path": tmp_path / "buffer.db", "budget_bytes": "64MiB", "synchronous": "FULL"},
        "inference": {"command": ["python", "-m", "x"], "env": {"PYTHONPATH": tmp_path}},
        "scrape": {"targets": []},
        "devices": [{"id": "dev-1", "token": 'to"ken\\'}, {"id": "dev-2", "token": "t2"}],
        "alerts": {"rules": [{"name": "R", "selector": 'up{job="x"}', "threshold": 0.5, "enabled": True}]},
    }
    parsed = tomllib.loads(toml_text(config))
    assert parsed["buffer"]["path"] == str(tmp_path / "buffer.db")
    assert parsed["inference"] == {"command": ["python", "-m", "x"], "env": {"PYTHONPATH": str(tmp_path)}}
    assert parsed["devices"][0]["token"] == 'to"ken\\'
    assert parsed["alerts"]["rules"][0] == config["alerts"]["rules"][0]  # type: ignore[index]
    assert parsed["scrape"] == {"targets": []}


def test_metrics_page_parsing():
    page = parse_metrics(
        "# HELP x_total Things\n"
        "# TYPE x_total counter\n"
        'x_total{reason="bad input"} 3.0\n'
        'x_total{reason="other"} 2.0\n'
        "x_total_created 1.7e9\n"
        "y NaN\n"
        "z 1 1700000000000\n"  # with a timestamp
        "broken\n"
    )
    assert page['x_total{reason="bad input"}'] == 3.0
    assert metric_sum(page, "x_total") == 5.0  # not x_total_created
    assert page["z"] == 1.0 and "broken" not in page
