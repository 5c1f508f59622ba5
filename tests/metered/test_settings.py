"""Bad metered-link settings stop the real program at start: exit status 2, the field named."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import BIN, TOKEN, child_env, toml_text

pytestmark = pytest.mark.integration


def check(tmp_path: Path, uplink: dict[str, Any], **more: Any) -> subprocess.CompletedProcess[str]:
    config = {
        "device_id": "dev-1",
        "buffer": {"path": str(tmp_path / "b.db")},
        "uplink": {"url": "http://127.0.0.1:9/api/v1/batches", "token": TOKEN, **uplink},
        **more,
    }
    path = tmp_path / "agent.toml"
    path.write_text(toml_text(config))
    return subprocess.run(
        [str(BIN / "backhaul-agent"), "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=child_env({}),
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("uplink", "more", "field"),
    [
        ({"windows": ["* 1-4 * * *", "61 * * * *"]}, {}, "uplink.windows"),
        ({"windows": ["every night"]}, {}, "uplink.windows"),
        ({"budget_timezone": "Mars/Olympus_Mons"}, {}, "uplink.budget_timezone"),
        ({"daily_bytes": -1}, {}, "uplink.daily_bytes"),
        ({"monthly_bytes": "-5MB"}, {}, "uplink.monthly_bytes"),
        ({"max_bytes_per_second": -100}, {}, "uplink.max_bytes_per_second"),
        ({"budget_reset_day": 32}, {}, "uplink.budget_reset_day"),
        ({"drain_order": "random"}, {}, "uplink.drain_order"),
        ({"when_short": "drop"}, {}, "uplink.when_short"),
        ({"fresh_window": 3600}, {"buffer": {"max_age": 600}}, "uplink.fresh_window"),
        ({}, {"alerts": {"daily_bytes": -1}}, "alerts.daily_bytes"),
    ],
)
def test_bad_link_settings_exit_2_naming_the_field(
    tmp_path: Path, uplink: dict[str, Any], more: dict[str, Any], field: str
) -> None:
    if "buffer" in more:
        more = {"buffer": {"path": str(tmp_path / "b.db"), **more["buffer"]}}
    done = check(tmp_path, uplink, **more)
    assert done.returncode == 2, done.stdout + done.stderr
    assert field in done.stderr, done.stderr


def test_good_link_settings_pass(tmp_path: Path) -> None:
    done = check(
        tmp_path,
        {
            "max_bytes_per_second": "32KiB",
            "daily_bytes": "10MB",
            "monthly_bytes": "500MB",
            "budget_timezone": "Europe/Berlin",
            "budget_reset_day": 15,
            "windows": ["* 1-4 * * *", "*/10 12 * * mon-fri"],
            "drain_order": "oldest_first",
            "fresh_window": 120,
            "when_short": "summarise",
            "summary_interval": 300,
        },
    )
    assert done.returncode == 0, done.stderr
