"""The Grafana dashboards in grafana/ query only metrics (and labels) the agent and the collector
really export: renaming a metric in the code without updating a dashboard fails here."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from agent.app import Agent
from agent.config import AgentSettings
from backhaul.wire.batch import BatchHeader
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap
from collector.app import Collector
from collector.config import CollectorSettings
from collector.forward.metrics import ForwardMetrics
from collector.store.chunks import from_series

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
# Labels a series gets on its way rather than from the code: from the scrape, from the collector
# (device_id), and the bucket bound of a histogram.
ADDED_LABELS = {"job", "instance", "device_id", "le"}
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created", ""),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
}

Exported = dict[str, set[str]]  # series name -> label names


def parse(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The series an expression selects, each with the label names its matchers use, and the label
    names it groups by. Strings and range durations are blanked first, so nothing inside them counts."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\[[^\]]*\]", "", e)
    grouped = {label.strip() for group in re.findall(GROUPING, e) for label in group.split(",") if label.strip()}
    e = re.sub(GROUPING, " ", e)
    selected: list[tuple[str, set[str]]] = []

    def selector(m: re.Match[str]) -> str:
        matchers = {part.split("=")[0].rstrip("!~").strip() for part in m.group(2).split(",") if part.strip()}
        if m.group(1):
            selected.append((m.group(1), matchers))
        else:  # {__name__="x"} style is not used in the dashboards; refuse it rather than miss a name
            raise AssertionError(f"selector without a metric name in {expr!r}")
        return " "

    e = re.sub(r"(?<![\w.$])([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}", selector, e)
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", e):
        if not m.group(2) and m.group(1) not in KEYWORDS:
            selected.append((m.group(1), set()))
    return selected, grouped


def problems(dashboard: dict[str, Any], exported: Exported) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            selected, grouped = parse(expr)
            assert selected, f"panel {panel['title']!r}: no metric in {expr!r}"
            known = set(ADDED_LABELS)
            for name, matchers in selected:
                if name not in exported:
                    yield f"panel {panel['title']!r}: {name} is not exported (in {expr!r})"
                    continue
                known |= exported[name]
                for label in matchers - exported[name] - ADDED_LABELS:
                    yield f"panel {panel['title']!r}: {name} has no label {label!r}"
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            for label in (grouped | legend) - known:
                yield f"panel {panel['title']!r}: no metric in {expr!r} has the label {label!r}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
            assert m, variable["definition"]
            if m.group(1) not in exported or m.group(2) not in exported[m.group(1)] | ADDED_LABELS:
                yield f"variable {variable['name']!r}: {variable['definition']} names nothing exported"


def exported_by(registry: CollectorRegistry, *owners: object) -> Exported:
    """Every series name a registry can expose, with its label names. A labelled metric without
    children exposes no sample yet, so its label names are read from the metric objects themselves."""
    out: Exported = {}
    for family in registry.collect():
        labels = {label for sample in family.samples for label in sample.labels}
        for suffix in SUFFIXES[family.type]:
            out.setdefault(family.name + suffix, set()).update(labels)
    for owner in owners:
        for metric in vars(owner).values():
            if isinstance(metric, MetricWrapperBase):
                assert metric._type is not None  # None only on the abstract base
                for suffix in SUFFIXES[metric._type]:
                    out[metric._name + suffix] |= set(metric._labelnames)
    return out


@pytest.fixture
async def agent_metrics(tmp_path: Path) -> Exported:
    settings = AgentSettings(
        device_id="grafana-test", listen={"port": 0}, buffer={"path": tmp_path / "agent.db", "budget_bytes": "64MiB"}
    )
    async with Agent(settings) as agent:
        m = agent.metrics
        return exported_by(agent.registry, m.ingest, m.buffer, m.uplink, m.alerts)


@pytest.fixture
async def collector_metrics(tmp_path: Path) -> Exported:
    settings = CollectorSettings(
        listen={"port": 0},
        store={"path": tmp_path / "collector.db"},
        forward=[{"name": "tsdb", "url": "http://127.0.0.1:9/api/v1/write"}],
    )
    async with Collector(settings) as collector:
        # one device in the store, so the per-device series exist
        header = BatchHeader(device="d", buffer_id="b", seq=1, sent_at_ms=0, samples=1)
        now = int(time.time() * 1000)
        series: SeriesMap = {(("__name__", "x"),): ([now], [1.0])}
        store = collector.store
        await store.ingest("d", from_series(series, Codec()), now, header)
        # (a second ForwardMetrics on a scratch registry: the same metric objects' label names)
        return exported_by(
            collector.registry, collector.metrics, collector.retention, ForwardMetrics(CollectorRegistry())
        )


@pytest.mark.parametrize("name", ["agent", "fleet"])
def test_dashboard_is_valid_grafana_json(name: str) -> None:
    dashboard = json.loads((GRAFANA / f"{name}.json").read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_agent_dashboard_queries_only_what_the_agent_exports(agent_metrics: Exported) -> None:
    dashboard = json.loads((GRAFANA / "agent.json").read_text())
    assert not list(problems(dashboard, agent_metrics))


def test_fleet_dashboard_queries_only_what_the_collector_exports(collector_metrics: Exported) -> None:
    dashboard = json.loads((GRAFANA / "fleet.json").read_text())
    assert not list(problems(dashboard, collector_metrics))


def test_a_renamed_metric_or_label_is_caught(agent_metrics: Exported) -> None:
    text = (GRAFANA / "agent.json").read_text()
    renamed = json.loads(text.replace("backhaul_uplink_samples_total", "backhaul_uplink_sent_samples_total"))
    assert any("backhaul_uplink_sent_samples_total is not exported" in p for p in problems(renamed, agent_metrics))
    relabelled = json.loads(text.replace("by (device_id, reason)", "by (device_id, cause)"))
    assert any("label 'cause'" in p for p in problems(relabelled, agent_metrics))


def test_the_expression_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, device_id) (rate(a_b_bucket{device_id=~"$d", x!="y"}[$__rate_interval])))'
        " / on (device_id) group_left c_total offset 5m or vector(1e3) and time() - d_seconds"
    )
    selected, grouped = parse(expr)
    assert selected == [("a_b_bucket", {"device_id", "x"}), ("c_total", set()), ("d_seconds", set())]
    assert grouped == {"le", "device_id"}
