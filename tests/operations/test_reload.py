"""Reload without restart, on real processes: SIGHUP re-reads the config and applies it (issue 14)."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Running
from tests.operations.conftest import Page
from tests.support import (
    BIN,
    READ_HEADERS,
    READ_TOKEN,
    TOKEN,
    Proc,
    collector_config,
    free_port,
    http,
    parse_metrics,
    push,
    toml_text,
)
from tests.support import wait_until as until

RULE = {"name": "Hot", "selector": 'temperature_celsius{job="sensor"}', "op": ">", "threshold": 50}


def agent_config(tmp_path: Path, port: int, target: str, **more: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "device_id": "dev-1",
        "shutdown_grace": 5,
        "listen": {"host": "127.0.0.1", "port": port},
        "buffer": {"path": str(tmp_path / "agent.db"), "budget_bytes": "64MiB"},
        "scrape": {"interval": 0.2, "timeout": 0.2, "targets": [{"job": "sensor", "url": target}]},
        "alerts": {"eval_interval": 0.2, "rules": [RULE]},
    }
    config.update(more)
    return config


def start(tmp_path: Path, program: str, config: dict[str, Any], port: int) -> Proc:
    path = tmp_path / f"{program}.toml"
    path.write_text(toml_text(config))
    proc = Proc(program, path, tmp_path / f"{program}.log").start()
    proc.wait_healthy(f"http://127.0.0.1:{port}")
    return proc


def reload_with(proc: Proc, text: str) -> None:
    proc.config.write_text(text)
    proc.ps().send_signal(signal.SIGHUP)


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    status, body, _ = http("GET", url, headers=headers or READ_HEADERS)
    assert status == 200, (url, status, body[:200])
    return json.loads(body)


def metrics(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    status, body, _ = http("GET", f"{url}/metrics", headers=headers or READ_HEADERS)
    assert status == 200, status
    return parse_metrics(body.decode())


def reloads(url: str, headers: dict[str, str] | None = None) -> tuple[float | None, float | None]:
    m = metrics(url, headers)
    return (
        m.get("backhaul_config_last_reload_successful"),
        m.get("backhaul_config_last_reload_success_timestamp_seconds"),
    )


FIRING = 'backhaul_alerts_transitions_total{state="firing"}'


def test_sighup_moves_scraping_to_the_new_target_and_keeps_the_alert_state(tmp_path: Path, pages: list[Page]) -> None:
    a, b = pages
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    agent = start(tmp_path, "backhaul-agent", agent_config(tmp_path, port, a.url), port)
    try:
        until(lambda: a.hits >= 3, timeout=10, what="target a scraped")
        until(lambda: "Hot" in get_json(f"{url}/api/v1/status")["alerts"]["active"], timeout=10, what="Hot fires")
        ok, started_at = reloads(url)
        assert ok == 1
        fired = metrics(url)[FIRING]

        # Target b as well (another job, so the rule does not see it), one more rule, and a setting
        # that needs a restart.
        new = agent_config(tmp_path, port, a.url)
        new["scrape"]["targets"].append({"job": "other", "url": b.url})
        new["alerts"]["rules"] = [RULE, {"name": "Cold", "selector": "temperature_celsius", "op": "<", "threshold": 0}]
        new["buffer"]["max_age"] = 3600
        reload_with(agent, toml_text(new))

        until(lambda: b.hits >= 3, timeout=10, what="target b scraped after the reload")
        ok, at = reloads(url)
        assert ok == 1 and at is not None and started_at is not None and at > started_at
        status = get_json(f"{url}/api/v1/status")
        assert status["config"]["last_reload_successful"] is True
        assert status["config"]["needs_restart"] == ["buffer.max_age"]
        assert "scrape.targets" in status["config"]["applied"]
        # The alert that fired before the reload is still firing, and was not sent again.
        assert "Hot" in status["alerts"]["active"]
        assert metrics(url)[FIRING] == fired

        # Target a removed: no longer scraped (a scrape in flight may finish).
        new["scrape"]["targets"] = [{"job": "other", "url": b.url}]
        reload_with(agent, toml_text(new))
        until(lambda: reloads(url)[1] != at, timeout=10, what="the second reload")
        hits_a, hits_b = a.hits, b.hits
        until(lambda: b.hits >= hits_b + 4, timeout=10, what="b scraped on")
        assert a.hits <= hits_a + 1
        log = agent.log.read_text()
        assert "buffer.max_age changed: it needs a restart" in log
        assert agent.running
    finally:
        agent.stop()


def test_an_invalid_config_is_refused_whole_and_the_running_one_stays(tmp_path: Path, pages: list[Page]) -> None:
    a, b = pages
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    agent = start(tmp_path, "backhaul-agent", agent_config(tmp_path, port, a.url), port)
    try:
        until(lambda: a.hits >= 2, timeout=10, what="target a scraped")
        _, started_at = reloads(url)
        good = agent.config.read_text()
        # A valid new target, but a typo elsewhere: nothing of it applies.
        bad = agent_config(tmp_path, port, b.url)
        bad["buffer"]["budget_bites"] = "1GiB"
        reload_with(agent, toml_text(bad))
        until(lambda: reloads(url)[0] == 0, timeout=10, what="the reload reported as failed")
        assert reloads(url)[1] == started_at
        hits_a = a.hits
        until(lambda: a.hits >= hits_a + 3, timeout=10, what="a still scraped")
        assert b.hits == 0
        status = get_json(f"{url}/api/v1/status")
        assert status["config"]["last_reload_successful"] is False
        assert "budget_bites" in status["config"]["error"]
        assert "reload refused, the running configuration stays" in agent.log.read_text()
        # Fixed: the next reload succeeds.
        reload_with(agent, good)
        until(lambda: reloads(url)[0] == 1, timeout=10, what="the next reload succeeded")
        assert agent.running
    finally:
        agent.stop()


def test_collector_reloads_read_tokens_and_refuses_a_device_token_as_reader(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = collector_config(port, tmp_path / "collector.db", read={"tokens": [{"name": "ops", "token": READ_TOKEN}]})
    collector = start(tmp_path, "backhaul-collector", config, port)
    old = {"Authorization": f"Bearer {READ_TOKEN}"}
    new = {"Authorization": "Bearer another-read-token-42"}
    try:
        assert http("GET", f"{url}/api/v1/fleet", headers=old)[0] == 200
        config["read"] = {"tokens": [{"name": "ops", "token": "another-read-token-42"}]}
        config["devices"].append({"id": "dev-9", "token": "token-of-dev-9-xyz"})
        reload_with(collector, toml_text(config))
        until(lambda: http("GET", f"{url}/api/v1/fleet", headers=new)[0] == 200, timeout=10, what="new token reads")
        assert http("GET", f"{url}/api/v1/fleet", headers=old)[0] == 401
        fleet = get_json(f"{url}/api/v1/fleet", headers=new)
        assert {d["device"] for d in fleet["devices"]} >= {"dev-1", "dev-9"}
        assert reloads(url, new)[0] == 1
        # A read token that is a device's token: refused, as it would be at start.
        config["read"] = {"tokens": [{"name": "ops", "token": TOKEN}]}
        reload_with(collector, toml_text(config))
        until(lambda: reloads(url, new)[0] == 0, timeout=10, what="the reload refused")
        assert http("GET", f"{url}/api/v1/fleet", headers=new)[0] == 200
        assert "a device's token cannot be a read token" in collector.log.read_text()
    finally:
        collector.stop()


class ReloadFrom(Proc):
    """``backhaul-agent run --reload-from COPY --config CONFIG``, as the systemd unit starts it."""

    def __init__(self, config: Path, copy: Path, log: Path) -> None:
        super().__init__("backhaul-agent", config, log)
        self.copy = copy

    def command(self) -> list[str]:
        return [str(BIN / self.program), "run", "--reload-from", str(self.copy), "--config", str(self.config)]


def test_reload_from_reads_the_copy_once_it_exists(tmp_path: Path, pages: list[Page]) -> None:
    a, b = pages
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "credential.toml"  # what systemd's LoadCredential= copies at start, fixed after
    copy = tmp_path / "run" / "agent.toml"  # what ExecReload= installs from /etc/backhaul first
    config.write_text(toml_text(agent_config(tmp_path, port, a.url)))
    agent = ReloadFrom(config, copy, tmp_path / "agent.log").start()
    try:
        agent.wait_healthy(url)
        agent.ps().send_signal(signal.SIGHUP)  # no copy yet: the start's file again, unchanged
        until(lambda: "configuration reloaded (no change)" in agent.log.read_text(), 10, "a reload of the same")
        copy.parent.mkdir()
        copy.write_text(toml_text(agent_config(tmp_path, port, b.url)))
        agent.ps().send_signal(signal.SIGHUP)
        until(lambda: b.hits >= 2, timeout=10, what="the copy's target scraped")
        assert reloads(url)[0] == 1
    finally:
        agent.stop()


def test_units_check_copy_and_signal_on_reload() -> None:
    for program in ("agent", "collector"):
        text = (Path(__file__).resolve().parents[2] / "systemd" / f"backhaul-{program}.service").read_text()
        copy = f"%t/backhaul-{program}/{program}.toml"
        reloads_ = re.findall(r"^ExecReload=(.*)$", text, re.M)
        assert (
            reloads_[0] == f"+/opt/backhaul/bin/backhaul-{program} check-config --config /etc/backhaul/{program}.toml"
        )
        assert reloads_[1].startswith("+/bin/sh -c 'install -m 0400 ") and reloads_[1].endswith(f" {copy}'")
        assert reloads_[2] == "/bin/kill -HUP $MAINPID"
        assert f"run --reload-from {copy} --config %d/{program}.toml" in text
        assert re.search(rf"^RuntimeDirectory=backhaul-{program}$", text, re.M)


def test_reload_moves_the_inference_health_check_without_restarting_the_server(
    tmp_path: Path, pages: list[Page]
) -> None:
    health = pages[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    inference = {"command": ["sleep", "600"], "stop_grace": 1, "health_url": health.url, "health_interval": 0.2}
    config = agent_config(tmp_path, port, pages[1].url, inference=inference)
    agent = start(tmp_path, "backhaul-agent", config, port)
    try:
        until(lambda: metrics(url).get("backhaul_inference_healthy") == 1, timeout=10, what="healthy")
        pid = get_json(f"{url}/api/v1/status")["inference"]["pid"]
        config["inference"] = {**inference, "health_url": f"http://127.0.0.1:{free_port()}/health"}
        config["log_level"] = "WARNING"
        infos = agent.log.read_text().count(" INFO ")
        reload_with(agent, toml_text(config))
        until(lambda: metrics(url).get("backhaul_inference_healthy") == 0, timeout=10, what="unhealthy")
        status = get_json(f"{url}/api/v1/status")
        assert status["inference"]["pid"] == pid and status["inference"]["restarts"] == 0  # not restarted
        assert sorted(status["config"]["applied"]) == ["inference.health_url", "log_level"]
        # From the reload on, nothing below WARNING is logged (the reload's own INFO lines neither).
        assert agent.log.read_text().count(" INFO ") == infos
    finally:
        agent.stop()


def test_a_reloaded_uplink_token_gets_the_backlog_delivered(
    start_collector: Callable[..., Running], start_agent: Callable[..., Running]
) -> None:
    collector = start_collector()
    agent = start_agent(collector.url, uplink={"token": "a-wrong-token-for-dev-1"})
    stamp = int(time.time() * 1000) - 1000
    assert push(agent.url, {(("__name__", "up"), ("job", "x")): ([stamp], [1.0])}) == [204]
    until(lambda: "401" in str(get_json(f"{agent.url}/api/v1/status")["uplink"]["last_error"]), 20, "a 401")

    def batches() -> int:
        fleet = get_json(f"{collector.url}/api/v1/fleet")
        return sum(d["batches"] for d in fleet["devices"] if d["device"] == "dev-1")

    assert batches() == 0
    text = agent.config.read_text().replace("a-wrong-token-for-dev-1", TOKEN)
    reload_with(agent.proc, text)
    until(lambda: batches() > 0, 20, "the backlog delivered with the new token")
    # stored by the collector, then acknowledged by the agent: the buffer empties just after
    until(lambda: get_json(f"{agent.url}/api/v1/status")["buffer"]["oldest_unsent_ms"] is None, 10, "the ack")
    status = get_json(f"{agent.url}/api/v1/status")
    assert "uplink.token" in status["config"]["applied"]


def test_reloaded_alert_channels_carry_the_next_messages(tmp_path: Path, pages: list[Page]) -> None:
    a_out, b_out = tmp_path / "a.out", tmp_path / "b.out"

    def channel(out: Path) -> dict[str, Any]:
        # One line per message: its base64 (the command channel's argument form).
        return {"type": "command", "argv": ["sh", "-c", f'echo "$0" >> {out}', "{base64}"], "stdin": False}

    port = free_port()
    config = agent_config(tmp_path, port, pages[0].url)
    config["alerts"]["channels"] = [channel(a_out)]
    agent = start(tmp_path, "backhaul-agent", config, port)
    try:
        until(lambda: a_out.exists() and a_out.read_text().count("\n") >= 1, timeout=15, what="Hot sent via a")
        config["alerts"]["channels"] = [channel(b_out)]
        config["alerts"]["rules"] = [RULE, {**RULE, "name": "Warm", "threshold": 40}]
        reload_with(agent, toml_text(config))
        until(lambda: b_out.exists() and b_out.read_text().count("\n") >= 1, timeout=15, what="Warm sent via b")
        assert a_out.read_text().count("\n") == 1  # Hot went once, through a; nothing after the reload
    finally:
        agent.stop()
