"""Rules over observed samples, and the pending -> firing -> resolved state machine."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from agent.alerts.rules import RuleEngine
from agent.alerts.settings import AlertSettings, RuleSettings
from agent.alerts.state import Tracker


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def rule(**kw: Any) -> RuleSettings:
    base: dict[str, Any] = {"name": "HighTemp", "selector": 'temp{site="a"}', "op": ">", "threshold": 80}
    base.update(kw)
    return RuleSettings.model_validate(base)


def sample(name: str, value: float, ts: int, **labels: str) -> dict[Any, Any]:
    key = tuple(sorted({"__name__": name, **labels}.items()))
    return {key: ([ts], [value])}


def test_last_value_threshold_per_series() -> None:
    clock = Clock()
    matched: list[int] = []
    engine = RuleEngine([rule()], on_match=lambda: matched.append(1), clock=clock)
    engine.observe(sample("temp", 85, 1, site="a", zone="1"))
    engine.observe(sample("temp", 70, 1, site="a", zone="2"))
    engine.observe(sample("temp", 99, 1, site="b"))  # other site: not matched
    engine.observe(sample("humidity", 99, 1, site="a"))  # other metric: not looked at
    results = {dict(r.labels)["zone"]: r for r in engine.evaluate()}
    assert results["1"].active and results["1"].value == 85
    assert not results["2"].active
    assert len(matched) == 2
    assert results["1"].fingerprint != results["2"].fingerprint


@pytest.mark.parametrize(
    ("function", "values", "expected"),
    [
        ("avg", [1, 2, 3, 10], 4.0),
        ("max", [1, 9, 3], 9.0),
        ("min", [4, 2, 3], 2.0),
        ("rate", [0, 10, 20, 5], 25 / 3),  # counter reset at the last sample: +5 counted from zero
    ],
)
def test_window_functions(function: str, values: list[float], expected: float) -> None:
    engine = RuleEngine([rule(function=function, window=60)], clock=Clock())
    for i, v in enumerate(values):
        engine.observe(sample("temp", v, i * 1000, site="a"))
    (result,) = engine.evaluate()
    assert result.value == pytest.approx(expected)


def test_window_forgets_old_samples() -> None:
    engine = RuleEngine([rule(function="avg", window=10)], clock=Clock())
    engine.observe(sample("temp", 1000, 0, site="a"))
    engine.observe(sample("temp", 10, 20_000, site="a"))
    (result,) = engine.evaluate()
    assert result.value == 10


def test_absent_fires_without_samples_and_stale_series_are_forgotten() -> None:
    clock = Clock()
    engine = RuleEngine([rule(op="absent", window=30), rule(name="Hot")], stale_after=60, clock=clock)
    assert [r.active for r in engine.evaluate()] == [True]
    engine.observe(sample("temp", 90, 1, site="a"))
    assert [r.active for r in engine.evaluate()] == [False, True]
    clock.now += 61
    assert [r.active for r in engine.evaluate()] == [True]  # stale: forgotten, and absent again


def test_series_beyond_the_per_rule_limit_are_ignored_and_counted() -> None:
    engine = RuleEngine([rule()], max_series_per_rule=2, clock=Clock())
    for zone in "123":
        engine.observe(sample("temp", 90, 1, site="a", zone=zone))
    assert len(engine.evaluate()) == 2
    assert engine.ignored == 1


def test_nan_never_fires() -> None:
    engine = RuleEngine([rule(op="!=", threshold=0)], clock=Clock())
    engine.observe(sample("temp", math.nan, 1, site="a"))
    assert not engine.evaluate()[0].active


def test_config_refuses_a_bad_selector_and_duplicate_names() -> None:
    with pytest.raises(ValidationError, match="selector"):
        rule(selector='temp{site="a"')
    with pytest.raises(ValidationError, match="once"):
        AlertSettings.model_validate({"rules": [rule().model_dump(by_alias=True)] * 2})
    assert rule(**{"for": 30}).for_.total_seconds() == 30


def test_state_machine_pending_firing_repeat_resolved() -> None:
    clock = Clock()
    engine = RuleEngine([rule(**{"for": 10})], clock=clock)
    tracker = Tracker(repeat_interval_ms=60_000)

    def step(value: float | None) -> list[tuple[str, bool]]:
        if value is not None:
            engine.observe(sample("temp", value, int(clock.now * 1000), site="a"))
        return [(t.state, t.repeat) for t in tracker.step(engine.evaluate(), int(clock.now * 1000))]

    assert step(90) == []  # pending
    clock.now += 5
    assert step(91) == []  # still pending
    clock.now += 5
    assert step(92) == [("firing", False)]
    clock.now += 30
    assert step(93) == []  # de-duplicated
    clock.now += 30
    assert step(94) == [("firing", True)]  # repeat interval passed
    clock.now += 1
    assert step(50) == [("resolved", False)]
    assert step(50) == []
    clock.now += 1
    assert step(90) == []  # pending again: for starts over
    clock.now += 1
    assert step(50) == []  # resolved while pending: nothing was ever sent


def test_restored_firing_alert_resolves_after_its_grace_unless_it_comes_back() -> None:
    clock = Clock()
    engine = RuleEngine([rule()], clock=clock)
    first = Tracker(60_000)
    engine.observe(sample("temp", 90, 1, site="a"))
    assert [t.state for t in first.step(engine.evaluate(), 0)] == ["firing"]

    restarted = Tracker(60_000)
    restarted.restore(first.firing(), now_ms=0, grace_ms=1000)
    fresh = RuleEngine([rule()], clock=clock)
    assert restarted.step(fresh.evaluate(), 500) == []  # within the grace: kept firing, nothing sent
    assert [t.state for t in restarted.step(fresh.evaluate(), 1500)] == ["resolved"]


def test_the_example_configs_validate_with_their_alert_sections(example_secrets: None) -> None:
    from pathlib import Path

    from agent.config import AgentSettings
    from backhaul.settings import load
    from collector.config import CollectorSettings

    root = Path(__file__).resolve().parents[2] / "examples"
    agent = load(AgentSettings, root / "agent.toml")
    (example,) = agent.alerts.rules
    assert (example.function, example.op, example.for_.total_seconds()) == ("rate", ">", 30)
    assert [c.type for c in agent.alerts.channels] == ["http"]
    assert load(CollectorSettings, root / "collector.toml").alerts.resend_interval.total_seconds() == 60


def test_an_http_channel_without_a_collector_is_a_config_error() -> None:
    from agent.config import AgentSettings

    with pytest.raises(ValidationError, match="http channel needs a url"):
        AgentSettings.model_validate({"device_id": "d", "alerts": {"channels": [{"type": "http"}]}})
    ok = AgentSettings.model_validate(
        {
            "device_id": "d",
            "alerts": {"channels": [{"type": "http", "url": "http://c:9300/api/v1/alerts", "token": "t"}]},
        }
    )
    assert ok.alerts.channels[0].type == "http"
