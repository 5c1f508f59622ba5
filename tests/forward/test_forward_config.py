"""Settings for forwarding and for the agent's remote-write uplink."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import AgentSettings
from backhaul.settings import load
from collector.config import CollectorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_commented_forward_example_is_a_valid_configuration(tmp_path: Path, example_secrets: None) -> None:
    text = (EXAMPLES / "collector.toml").read_text()
    block = text[text.index("# [[forward]]") :]
    # uncomment the example (its own comments are "# # ...")
    enabled = re.sub(r"(?m)^# (?!#)", "", block).replace("# # Extra request headers, e.g. a tenant for Mimir: ", "")
    # a real token where the example shows one (placeholders are refused at start, issue 12)
    enabled = enabled.replace('bearer_token = "..."', 'bearer_token = "a-real-target-token"')
    path = tmp_path / "c.toml"
    path.write_text(text[: text.index("# [[forward]]")] + enabled)
    settings = load(CollectorSettings, path)
    (target,) = settings.forward
    assert target.name == "vm" and target.headers == {"X-Scope-OrgID": "fleet"}
    assert settings.spool_path(target) == Path("/var/lib/backhaul-collector/forward-vm.db")


def test_spool_path_defaults_next_to_the_store() -> None:
    settings = CollectorSettings(store={"path": "/data/c.db"}, forward=[{"name": "a", "url": "http://x/api/v1/write"}])
    assert settings.spool_path(settings.forward[0]) == Path("/data/forward-a.db")


def test_target_names_are_unique() -> None:
    with pytest.raises(ValidationError, match="each target name may appear once"):
        CollectorSettings(forward=[{"name": "a", "url": "http://x/1"}, {"name": "a", "url": "http://x/2"}])


def test_remote_write_uplink_needs_no_token_but_the_collector_does() -> None:
    url = "http://vm:8428/api/v1/write"
    settings = AgentSettings(device_id="d", uplink={"url": url, "protocol": "remote_write"})
    assert settings.uplink.protocol == "remote_write"
    with pytest.raises(ValidationError, match=r"uplink\.token is required"):
        AgentSettings(device_id="d", uplink={"url": url})
    with pytest.raises(ValidationError):
        AgentSettings(device_id="d", uplink={"url": url, "protocol": "mqtt"})
