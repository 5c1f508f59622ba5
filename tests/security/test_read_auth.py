"""Issue 12, finding 10: the collector's read endpoints answer only operators.

``/api/v1/export``, ``/api/v1/fleet``, ``/fleet``, ``GET /api/v1/alerts`` and ``/metrics`` hold every
device's data: they need a ``[read]`` token (bearer, or basic auth so that a browser can log in). A
device's token never reads. Opening them takes an explicit ``auth = "none"``, and the start log says so.
The page carries security headers (a CSP that allows only its own inline code, no framing, nosniff)."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Running
from tests.support import BIN, READ_HEADERS, READ_TOKEN, TOKEN, http, toml_text

pytestmark = [pytest.mark.integration]

READS = ["/api/v1/export?match[]=up", "/api/v1/fleet", "/fleet", "/api/v1/alerts", "/metrics"]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_read_endpoints_need_an_operator_credential(start_collector: Callable[..., Running]) -> None:
    collector = start_collector()
    for path in READS:
        url = collector.url + path
        status, _, headers = http("GET", url)
        assert status == 401, f"{path} answered {status} without a credential"
        assert "Basic" in headers["WWW-Authenticate"], headers
        assert http("GET", url, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 401, f"{path}: a device token read"
        assert http("GET", url, headers=basic("dev-1", TOKEN))[0] == 401, f"{path}: a device token read"
        assert http("GET", url, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert http("GET", url, headers=READ_HEADERS)[0] == 200, path
        assert http("GET", url, headers=basic("alice", READ_TOKEN))[0] == 200, path
    assert http("GET", f"{collector.url}/healthz")[0] == 200  # for load balancers and systemd: no data there
    log = (collector.config.parent / "collector.log").read_text()
    assert READ_TOKEN not in log and TOKEN not in log


def test_without_read_tokens_nobody_reads(start_collector: Callable[..., Running]) -> None:
    collector = start_collector(read={})
    for path in READS:
        assert http("GET", collector.url + path, headers=READ_HEADERS)[0] == 401, path
    log = (collector.config.parent / "collector.log").read_text()
    assert "answer 401 to everyone: no [read] tokens are configured" in log


def test_auth_none_opens_them_and_says_so(start_collector: Callable[..., Running]) -> None:
    collector = start_collector(read={"auth": "none"})
    for path in READS:
        assert http("GET", collector.url + path)[0] == 200, path
    log = (collector.config.parent / "collector.log").read_text()
    assert 'are open to anyone who reaches the listener: [read] auth = "none"' in log


def test_the_page_carries_security_headers(start_collector: Callable[..., Running]) -> None:
    collector = start_collector()
    status, body, headers = http("GET", f"{collector.url}/fleet", headers=READ_HEADERS)
    assert status == 200 and b"<script>" in body
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    _, _, api = http("GET", f"{collector.url}/api/v1/fleet", headers=READ_HEADERS)
    assert api["X-Content-Type-Options"] == "nosniff" and "frame-ancestors 'none'" in api["Content-Security-Policy"]


def test_a_device_token_cannot_be_a_read_token(tmp_path: Path, start_collector: Callable[..., Running]) -> None:
    # In the config: refused when the settings load (exit status 2, naming the section).
    config = tmp_path / "both.toml"
    config.write_text(
        toml_text(
            {
                "store": {"path": tmp_path / "c.db"},
                "devices": [{"id": "dev-1", "token": TOKEN}],
                "read": {"tokens": [{"name": "ops", "token": TOKEN}]},
            }
        )
    )
    done = subprocess.run(
        [BIN / "backhaul-collector", "check-config", "--config", config], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "read.tokens" in done.stderr, done.stderr

    # In the registry (a device added earlier, no longer in the config): refused at start.
    first = start_collector(name="registry", devices=[{"id": "dev-9", "token": "registered-token-9"}])
    first.proc.stop()
    config = tmp_path / "again.toml"
    config.write_text(
        toml_text(
            {
                "store": {"path": tmp_path / "registry.db"},
                "read": {"tokens": [{"name": "ops", "token": "registered-token-9"}]},
            }
        )
    )
    done = subprocess.run(
        [BIN / "backhaul-collector", "run", "--config", config], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "read.tokens" in done.stderr and "'dev-9'" in done.stderr and "must never read" in done.stderr
