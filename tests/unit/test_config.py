import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentSettings
from backhaul.errors import ConfigError
from backhaul.settings import load
from collector.config import CollectorSettings

AGENT = Path(sys.executable).parent / "backhaul-agent"
COLLECTOR = Path(sys.executable).parent / "backhaul-collector"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_toml_then_environment_override(tmp_path, monkeypatch):
    path = write(tmp_path, 'device_id = "d1"\n[buffer]\nbudget_bytes = "128MiB"\n')
    monkeypatch.setenv("BACKHAUL_BUFFER__BUDGET_BYTES", "256MiB")
    monkeypatch.setenv("BACKHAUL_LISTEN__PORT", "9999")
    settings = load(AgentSettings, path)
    assert settings.device_id == "d1"
    assert settings.buffer.budget_bytes == 256 * 1024**2
    assert settings.listen.port == 9999


def test_environment_alone_is_enough(monkeypatch):
    monkeypatch.setenv("BACKHAUL_DEVICE_ID", "from-env")
    assert load(AgentSettings, None).device_id == "from-env"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('device_id = "bad id!"', "device_id"),
        ('device_id = "d"\n[buffer]\nbudget_bytes = "lots"', "buffer.budget_bytes"),
        ('device_id = "d"\n[buffer]\nsynchronous = "SOMETIMES"', "buffer.synchronous"),
        ('device_id = "d"\n[uplink]\nurl = "http://x/api"', "uplink.token is required"),
        ('device_id = "d"\nunknown_setting = 1', "unknown_setting"),
        ("[buffer]", "device_id"),
    ],
)
def test_invalid_agent_config_names_the_field(tmp_path, text, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load(AgentSettings, write(tmp_path, text))


def test_collector_device_needs_exactly_one_token(tmp_path):
    with pytest.raises(ConfigError, match=r"devices\.0"):
        load(CollectorSettings, write(tmp_path, '[[devices]]\nid = "d"\n'))


def test_cli_exit_status_2_and_message_on_bad_config(tmp_path):
    path = write(tmp_path, 'device_id = "d"\n[listen]\nport = 70000\n')
    for command in ("check-config", "run"):
        result = subprocess.run([AGENT, command, "--config", path], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert "listen.port" in result.stderr


def test_cli_check_config_ok_and_missing_or_broken_files(tmp_path):
    good = write(tmp_path, '[[devices]]\nid = "d"\ntoken = "t"\n')
    ok = subprocess.run([COLLECTOR, "check-config", "--config", good], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "1 devices" in ok.stdout
    missing = subprocess.run(
        [COLLECTOR, "check-config", "--config", tmp_path / "nope.toml"], capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 2 and "not found" in missing.stderr
    broken = write(tmp_path, "this is = = not toml")
    bad = subprocess.run([COLLECTOR, "check-config", "--config", broken], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "not valid TOML" in bad.stderr
