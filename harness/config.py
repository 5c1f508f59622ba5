"""Config files for real agent and collector processes, written with tomli-w."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

TOKEN = "test-token-dev-1"  # the token the test and benchmark configs give device dev-1
# The operator credential of test and benchmark collectors: their read endpoints need one (issue 12).
READ_TOKEN = "test-read-token"
READ = {"tokens": [{"name": "harness", "token": READ_TOKEN}]}  # a collector's [read] section
READ_HEADERS = {"Authorization": f"Bearer {READ_TOKEN}"}


def _plain(value: Any) -> Any:
    # Paths are the one non-TOML type callers pass (tmp_path / "x.db"); TOML has strings for them.
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def toml_text(values: Mapping[str, Any]) -> str:
    """``values`` (scalars, nested tables, arrays, arrays of tables; paths as strings) as TOML."""
    return tomli_w.dumps(_plain(values))


def write_toml(path: Path, values: Mapping[str, Any], header: str = "") -> Path:
    """Write ``values`` as TOML to ``path``, after ``header`` (a comment, say); returns ``path``."""
    path.write_text(header + toml_text(values))
    return path


def collector_config(port: int, db: Path, **sections: Any) -> dict[str, Any]:
    """The config of a test collector listening on ``port`` with its store at ``db``, which knows
    devices ``dev-1`` (token :data:`TOKEN`) and ``dev-2`` (``TOKEN + "-2"``) and the harness' read
    token. Each of ``sections`` replaces the table of its name whole (``read={}``: no read token)."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"path": str(db)},
        "devices": [{"id": "dev-1", "token": TOKEN}, {"id": "dev-2", "token": TOKEN + "-2"}],
        "read": READ,
    }
    return {**config, **sections}


def agent_config(port: int, db: Path, collector_url: str | None = None, **sections: Any) -> dict[str, Any]:
    """The config of a test agent (device ``dev-1``) listening on ``port`` with its buffer database at ``db``,
    uploading to ``collector_url`` (none: it only buffers) quickly and with short backoffs. Each of
    ``sections`` updates the table of its name (``buffer={...}``, ``uplink={...}``) or sets the key."""
    config: dict[str, Any] = {
        "device_id": "dev-1",
        "shutdown_grace": 10,
        "listen": {"host": "127.0.0.1", "port": port},
        "buffer": {"path": str(db), "budget_bytes": "64MiB"},
    }
    if collector_url:
        config["uplink"] = {
            "url": f"{collector_url}/api/v1/batches",
            "token": TOKEN,
            "batch_interval": 0.2,
            "backoff_min": 0.2,
            "backoff_max": 1,
            "timeout": 5,
        }
    return _updated(config, sections)


def _updated(config: dict[str, Any], sections: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config
