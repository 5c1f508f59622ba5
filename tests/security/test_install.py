"""Issue 12, finding 13: a configuration that cannot work stops the program with exit status 2 (which
the units do not restart) and one line naming the file or the field — never a traceback and a restart
loop. An unreadable config or certificate, and the examples' placeholder secrets, are such configs."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support import BIN, TOKEN, toml_text

pytestmark = [pytest.mark.integration]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(
    program: str, config: Path, *, unprivileged: bool = False, command: str = "run"
) -> subprocess.CompletedProcess[str]:
    """``<program> <command> --config <config>``; ``unprivileged``: as a process that, like systemd's
    DynamicUser, reads only what its permissions allow (as root: without the capabilities that bypass them)."""
    argv = [str(BIN / program), command, "--config", str(config)]
    if unprivileged and os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def not_ours(path: Path) -> None:
    """Make ``path`` unreadable for :func:`run`'s unprivileged process (a root file installed 0600 or 0640)."""
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # someone else's file, for a root without DAC override
    path.chmod(0o600 if os.geteuid() == 0 else 0)


def agent_config(tmp_path: Path, **uplink: object) -> dict[str, Any]:
    return {
        "device_id": "dev-1",
        "listen": {"host": "127.0.0.1", "port": 0},
        "buffer": {"path": tmp_path / "agent.db"},
        "uplink": {"url": "http://127.0.0.1:9/api/v1/batches", "token": TOKEN, **uplink},
    }


def test_an_unreadable_config_is_exit_status_2_with_a_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(toml_text(agent_config(tmp_path)))
    not_ours(config)
    for command in ("check-config", "run"):
        done = run("backhaul-agent", config, unprivileged=True, command=command)
        assert done.returncode == 2, done.stderr
        assert f"config file {config}: cannot read it as uid" in done.stderr and "LoadCredential" in done.stderr
        assert "Traceback" not in done.stderr


def test_an_unreadable_or_unfit_certificate_is_exit_status_2(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    config = tmp_path / "collector.toml"
    listen = {"host": "127.0.0.1", "port": 0, "tls_cert": cert, "tls_key": key}
    config.write_text(toml_text({"listen": listen, "store": {"path": tmp_path / "c.db"}}))

    not_ours(key)
    done = run("backhaul-collector", config, unprivileged=True)
    assert done.returncode == 2 and "listen.tls_key" in done.stderr and "cannot read it" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

    # A key that is not this certificate's (another one's, half a renewal).
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(tmp_path / "other.key"))
    config.write_text(
        toml_text({"listen": {**listen, "tls_key": tmp_path / "other.key"}, "store": {"path": tmp_path / "c.db"}})
    )
    done = run("backhaul-collector", config, command="check-config")
    assert done.returncode == 2 and "tls_cert" in done.stderr and "tls_key" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


PLACEHOLDER = "change-me-to-a-long-random-token"


@pytest.mark.parametrize(
    ("program", "values", "field"),
    [
        ("agent", {"uplink": {"token": PLACEHOLDER}}, "uplink.token"),
        ("agent", {"uplink": {"token": "..."}}, "uplink.token"),
        ("agent", {"alerts": {"channels": [{"type": "http", "token": "change-me"}]}}, "alerts.channels.0"),
        ("collector", {"devices": [{"id": "dev-1", "token": PLACEHOLDER}]}, "devices.0.token"),
        (
            "collector",
            {"devices": [{"id": "dev-1", "token_sha256": hashlib.sha256(PLACEHOLDER.encode()).hexdigest()}]},
            "devices.0",
        ),
        (
            "collector",
            {"forward": [{"name": "vm", "url": "http://vm:8428/api/v1/write", "bearer_token": "..."}]},
            "forward.0.bearer_token",
        ),
        ("collector", {"read": {"tokens": [{"name": "ops", "token": "change-me-too"}]}}, "read.tokens.0.token"),
    ],
)
def test_placeholder_secrets_are_refused_naming_the_field(
    tmp_path: Path, program: str, values: dict[str, object], field: str
) -> None:
    base: dict[str, Any] = agent_config(tmp_path) if program == "agent" else {"store": {"path": tmp_path / "c.db"}}
    for key, value in values.items():
        old = base.get(key)
        base[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    config = tmp_path / f"{program}.toml"
    config.write_text(toml_text(base))
    for command in ("check-config", "run"):
        done = run(f"backhaul-{program}", config, command=command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert field in done.stderr and "placeholder" in done.stderr, done.stderr


@pytest.mark.parametrize(("program", "field"), [("agent", "uplink.token"), ("collector", "devices.0")])
def test_the_examples_as_shipped_do_not_start(program: str, field: str) -> None:
    done = run(f"backhaul-{program}", EXAMPLES / f"{program}.toml", command="check-config")
    assert done.returncode == 2 and field in done.stderr and "placeholder" in done.stderr, done.stderr
