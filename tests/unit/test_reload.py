"""backhaul.reload's pieces: which settings changed, which a step covers, what stays in force."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prometheus_client import CollectorRegistry

from agent.config import AgentSettings
from backhaul.errors import ConfigError
from backhaul.reload import ConfigReload, changed_paths, covered, merged


def settings(**more: object) -> AgentSettings:
    return AgentSettings.model_validate({"device_id": "dev-1", **more})


def test_changed_paths_go_down_to_the_field() -> None:
    old = settings()
    new = settings(
        log_level="DEBUG", buffer={"max_age": "PT1H"}, scrape={"targets": [{"job": "j", "url": "http://x/"}]}
    )
    assert sorted(changed_paths(old, new)) == ["buffer.max_age", "log_level", "scrape.targets"]
    assert changed_paths(old, settings()) == []


def test_covered_and_merged_keep_what_needs_a_restart() -> None:
    assert covered("scrape.targets", ("scrape.targets",)) and covered("alerts.rules", ("alerts",))
    assert not covered("scrape.interval", ("scrape.targets",)) and not covered("log_level_x", ("log_level",))
    old, new = settings(), settings(log_level="DEBUG", buffer={"max_age": "PT1H"})
    kept = merged(old, new, ["log_level"])
    assert kept.log_level == "DEBUG" and kept.buffer.max_age == old.buffer.max_age


def test_a_reload_applies_refuses_and_reports() -> None:
    registry = CollectorRegistry()
    queue: list[AgentSettings | Exception] = []

    def load() -> AgentSettings:
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    reload = ConfigReload("agent", settings(), load, registry, clock=lambda: 100.0)
    applied: list[str] = []
    reload.apply("log level", ("log_level",), lambda s: applied.append(s.log_level))
    queue.append(settings(log_level="DEBUG", buffer={"max_age": "PT1H"}))
    outcome = asyncio.run(reload.reload())
    assert outcome.ok and outcome.applied == ["log_level"] and outcome.restart == ["buffer.max_age"]
    assert applied == ["DEBUG"] and reload.current.log_level == "DEBUG"
    assert reload.current.buffer.max_age != timedelta(hours=1)  # needs a restart: the value in force stays
    assert registry.get_sample_value("backhaul_config_last_reload_successful") == 1
    queue.append(ConfigError("invalid config: buffer.budget_bites: no such setting"))
    outcome = asyncio.run(reload.reload())
    assert not outcome.ok and "budget_bites" in outcome.error
    assert registry.get_sample_value("backhaul_config_last_reload_successful") == 0
    assert reload.current.log_level == "DEBUG"  # what was in force stays


def test_a_failing_step_keeps_the_steps_before_it() -> None:
    registry = CollectorRegistry()
    reload = ConfigReload("agent", settings(), lambda: settings(log_level="ERROR", scrape={"interval": 5}), registry)
    reload.apply("log level", ("log_level",), lambda s: None)

    def broken(s: AgentSettings) -> None:
        raise RuntimeError("no")

    reload.apply("scrape targets", ("scrape.interval",), broken)
    outcome = asyncio.run(reload.reload())
    assert not outcome.ok and outcome.applied == ["log_level"] and "scrape targets: no" in outcome.error
    assert reload.current.log_level == "ERROR" and reload.current.scrape.interval == timedelta(seconds=15)
