"""``backhaul-agent status`` and ``backhaul-collector status``, run as commands against real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Running
from tests.operations.conftest import Page
from tests.support import BIN, READ_HEADERS, READ_TOKEN, free_port, http
from tests.support import wait_until as until

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=30, env=env)


def keep(name: str, text: str) -> None:
    """Sample output, with the test output (git-ignored), for the docs and a person to read."""
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    (out / name).write_text(text)


def test_status_of_a_running_agent_and_its_collector(
    start_collector: Callable[..., Running], start_agent: Callable[..., Running], pages: list[Page]
) -> None:
    collector = start_collector()
    agent = start_agent(
        collector.url,
        scrape={"interval": 0.5, "targets": [{"job": "sensor", "url": pages[0].url}]},
        inference={"command": ["sleep", "600"], "stop_grace": 1},
        alerts={"rules": [{"name": "Hot", "selector": "temperature_celsius", "op": ">", "threshold": 50}]},
    )

    def uploaded() -> bool:
        status, body, _ = http("GET", f"{collector.url}/api/v1/fleet", headers=READ_HEADERS)
        return status == 200 and any(d["batches"] > 0 for d in json.loads(body)["devices"])

    until(uploaded, 20, "a batch at the collector")
    time.sleep(2.5)  # the upload rate is measured between two samples, two seconds apart

    shown = run("backhaul-agent", "status", "--config", str(agent.config))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    keep("agent-status.txt", text)
    assert text.startswith("backhaul-agent dev-1: ok")
    for line in ("buffer ", "oldest ", "uplink ", "  rate ", "  drain ", "  link    * uplink: in use", "alerts "):
        assert f"\n{line}" in text, line
    assert "inference   running, up" in text and "restarts 0, crash loop: no" in text
    clock = next(line for line in text.splitlines() if line.startswith("clock "))
    assert "skew vs collector" in clock and "offset +0.000 s" in clock and "corrected samples 0" in clock
    assert "config      not reloaded; in force since" in text

    as_json = run("backhaul-agent", "status", "--config", str(agent.config), "--json")
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["device"] == "dev-1" and status["buffer"]["budget_bytes"] == 64 * 1024**2
    assert status["inference"]["state"] == "running" and status["inference"]["up"] is True
    assert status["uplink"]["links"][0]["in_use"] is True
    assert status["config"]["last_reload_successful"] is True

    fleet = run("backhaul-collector", "status", "--config", str(collector.config), "--token", READ_TOKEN)
    assert fleet.returncode == 0, fleet.stderr
    keep("collector-status.txt", fleet.stdout)
    assert fleet.stdout.startswith("backhaul-collector: ok  (2 devices: 1 online, 0 offline, 1 never seen)")
    for label in ("offline:", "behind:", "over budget:", "clock skewed:", "crash-looping:", "version drift:"):
        assert f"\n{label}" in fleet.stdout, label

    # Without a read token: the reason, and exit status 1.
    refused = run("backhaul-collector", "status", "--config", str(collector.config))
    assert refused.returncode == 1 and "needs a [read] token" in refused.stderr
    wrong = run("backhaul-collector", "status", "--config", str(collector.config), "--token", "not-a-token")
    assert wrong.returncode == 1 and "answered HTTP 401" in wrong.stderr

    # --watch redraws until interrupted.
    watch = subprocess.Popen(
        [str(BIN / "backhaul-agent"), "status", "--url", agent.url, "--watch", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4.0)  # the command's own start takes a second or more on a busy machine
    watch.send_signal(signal.SIGINT)
    out, _ = watch.communicate(timeout=10)
    assert watch.returncode == 0
    assert out.count("\x1b[H\x1b[2J") >= 2 and out.count("backhaul-agent dev-1") >= 2


def test_status_of_nothing_says_why_and_exits_1(tmp_path: Path) -> None:
    port = free_port()
    agent = run("backhaul-agent", "status", "--url", f"http://127.0.0.1:{port}")
    assert agent.returncode == 1
    assert f"cannot reach http://127.0.0.1:{port}/api/v1/status" in agent.stderr
    assert "refused" in agent.stderr.lower()
    config = tmp_path / "collector.toml"
    config.write_text(f"[listen]\nport = {port}\n")
    collector = run("backhaul-collector", "status", "--config", str(config), "--token", "x")
    assert collector.returncode == 1 and f"cannot reach http://127.0.0.1:{port}/healthz" in collector.stderr
    missing = run("backhaul-agent", "status", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
