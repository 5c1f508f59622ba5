"""Every settings model refuses unknown keys, so a typo in a config file is an error that names it
instead of leaving a default silently in force (examples/agent.toml promises as much)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from agent.config import AgentSettings
from backhaul.errors import ConfigError
from backhaul.settings import load
from collector.config import CollectorSettings
from harness import child_env
from tests.conftest import EXAMPLE_SECRETS

BIN = Path(sys.executable).parent
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def models_in(annotation: object) -> Iterator[type[BaseModel]]:
    """The models an annotation names, through lists, dicts, unions, ``Annotated`` and discriminated unions."""
    # get_origin first: a parametrised generic such as list[int] is no class to ask issubclass about.
    if get_origin(annotation) is None and isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            yield annotation
        return
    for arg in get_args(annotation):
        yield from models_in(arg)


def reachable(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model reachable from its fields, each once."""
    found: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            todo.extend(models_in(field.annotation))
    return found


# One typo in each section, list entry and union member, and the place the error must name.
AGENT_TYPOS = [
    ("[listen]\nprot = 1", "listen.prot"),
    ("[buffer]\nbudget_bites = '1GiB'", "buffer.budget_bites"),
    ("[ingest]\nmax_request_byte = 1", "ingest.max_request_byte"),
    ("[uplink]\nbudget_bites = '1GiB'", "uplink.budget_bites"),
    ("[inference]\ncomand = ['x']", "inference.comand"),
    ("[scrape]\nintervall = 1", "scrape.intervall"),
    ("[[scrape.targets]]\njob = 'j'\nurl = 'http://x/metrics'\nlabel = {}", "scrape.targets.0.label"),
    ("[host]\nenable = true", "host.enable"),
    ("[proxy]\nenable = true", "proxy.enable"),
    ("[alerts]\nenable = true", "alerts.enable"),
    ("[alerts.builtin]\nenable = true", "alerts.builtin.enable"),
    ("[[alerts.rules]]\nname = 'r'\nselector = 'up'\nop = '<'\nthreshhold = 1", "alerts.rules.0.threshhold"),
    ("[[alerts.channels]]\ntype = 'command'\nargv = ['x']\nstdn = false", "alerts.channels.0.command.stdn"),
]

COLLECTOR_TYPOS = [
    ("[listen]\nprot = 1", "listen.prot"),
    ("[store]\nsynchronus = 'OFF'", "store.synchronus"),
    ("[limits]\nmax_request_byte = 1", "limits.max_request_byte"),
    ("[fleet]\noffline = 1", "fleet.offline"),
    ("[[devices]]\nid = 'd'\ntoken = 't'\ntokn = 'u'", "devices.0.tokn"),
    ("[[forward]]\nname = 'vm'\nurl = 'http://x/api/v1/write'\nbearer = 't'", "forward.0.bearer"),
    ("[alerts]\nresend = 1", "alerts.resend"),
    ("[alerts.mqtt]\nhost = 'b'\nprot = 1", "alerts.mqtt.prot"),
]

AGENT_MODELS = reachable(AgentSettings)
COLLECTOR_MODELS = reachable(CollectorSettings)
ALL_MODELS = AGENT_MODELS + COLLECTOR_MODELS


def test_the_walk_finds_the_nested_models() -> None:
    # A walker that missed lists, unions or discriminated unions would pass the checks below vacuously.
    names = {m.__name__ for m in AGENT_MODELS}
    assert {
        "ListenSettings", "BufferSettings", "IngestSettings", "UplinkSettings", "InferenceSettings",
        "ScrapeSettings", "ScrapeTarget", "HostSettings", "ProxySettings", "AlertSettings", "RuleSettings",
        "BuiltinSettings", "HttpChannelSettings", "MqttChannelSettings", "CommandChannelSettings",
    } <= names  # fmt: skip
    names = {m.__name__ for m in COLLECTOR_MODELS}
    assert {
        "ListenSettings", "StoreSettings", "LimitSettings", "FleetSettings", "DeviceEntry", "ForwardTarget",
        "AlertSettings", "MqttSettings",
    } <= names  # fmt: skip


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: f"{m.__module__}.{m.__qualname__}")
def test_every_model_forbids_unknown_keys(model: type[BaseModel]) -> None:
    from backhaul.settings import Section

    assert model.model_config.get("extra") == "forbid"
    if model not in (AgentSettings, CollectorSettings):
        assert issubclass(model, Section), "nested settings derive from backhaul.settings.Section"
    # and pydantic acts on it (required fields missing or not, the unknown key is reported)
    with pytest.raises(ValidationError) as caught:
        model.model_validate({"no_such_setting": 1})
    assert any(e["type"] == "extra_forbidden" and e["loc"] == ("no_such_setting",) for e in caught.value.errors())


TYPOS = [("agent", AgentSettings, "device_id = 'd'\n", t, w) for t, w in AGENT_TYPOS] + [
    ("collector", CollectorSettings, "", t, w) for t, w in COLLECTOR_TYPOS
]


@pytest.mark.parametrize(
    ("program", "model", "base", "toml", "where"), TYPOS, ids=[f"{p}:{w}" for p, _, _, _, w in TYPOS]
)
def test_a_typo_in_any_section_names_the_key(
    tmp_path: Path, program: str, model: type[AgentSettings | CollectorSettings], base: str, toml: str, where: str
) -> None:
    path = tmp_path / f"{program}.toml"
    path.write_text(f"{base}{toml}\n")
    with pytest.raises(ConfigError, match=f"{re.escape(where)}: no such setting"):
        load(model, path)


def test_a_typo_in_an_environment_variable_is_caught_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKHAUL_DEVICE_ID", "d")
    monkeypatch.setenv("BACKHAUL_BUFFER__BUDGET_BITES", "1GiB")
    with pytest.raises(ConfigError, match=r"buffer\.budget_bites: no such setting"):
        load(AgentSettings, None)


def check_config(program: str, config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / program, "check-config", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        env={**child_env({}), **(env or {})},
    )


@pytest.mark.parametrize(
    ("program", "text", "named"),
    [
        ("backhaul-agent", 'device_id = "d"\n[uplink]\nbudget_bites = "1GiB"\n', "uplink.budget_bites"),
        ("backhaul-collector", '[store]\nsynchronus = "OFF"\n', "store.synchronus"),
    ],
)
def test_check_config_refuses_a_typo_and_names_it(tmp_path: Path, program: str, text: str, named: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    result = check_config(program, path)
    assert result.returncode == 2, result.stdout
    assert named in result.stderr


@pytest.mark.parametrize("program", ["agent", "collector"])
def test_the_example_configs_pass_check_config(program: str) -> None:
    result = check_config(f"backhaul-{program}", EXAMPLES / f"{program}.toml", EXAMPLE_SECRETS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config ok:")
