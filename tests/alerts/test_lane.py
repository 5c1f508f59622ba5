"""The alert lane end to end with real processes: agent -> (HTTP | MQTT | a program) -> collector."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage
from tests.support import (
    READ_HEADERS,
    TOKEN,
    Proc,
    collector_config,
    exported_samples,
    free_port,
    http,
    metric_value,
    push,
    wait_until,
)

KEY = wire.token_key(TOKEN)  # dev-1's alert MAC key

pytestmark = pytest.mark.integration

Run = Callable[[str, str, int, dict[str, Any]], Proc]

RULE = {"name": "TooHot", "selector": 'temp_celsius{room="lab"}', "op": ">", "threshold": 80, "severity": "critical"}


def collector_with(tmp_path: Path, port: int, **alerts: Any) -> dict[str, Any]:
    return collector_config(port, tmp_path / "collector.db", alerts=alerts)


def agent_config(tmp_path: Path, port: int, collector_port: int | None, **alerts: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "device_id": "dev-1",
        "shutdown_grace": 10,
        "listen": {"host": "127.0.0.1", "port": port},
        "buffer": {"path": str(tmp_path / "agent.db"), "budget_bytes": "64MiB"},
        "alerts": {"rules": [RULE], "eval_interval": 0.5, "backoff_max": 0.5, **alerts},
    }
    if collector_port:
        config["uplink"] = {
            "url": f"http://127.0.0.1:{collector_port}/api/v1/batches",
            "token": TOKEN,
            "batch_interval": 0.2,
        }
    return config


def mqtt_only_agent(tmp_path: Path, port: int, broker: int) -> dict[str, Any]:
    """An agent with no uplink at all: MQTT through ``broker`` is its only way out."""
    return agent_config(
        tmp_path, port, None, channels=[{"type": "mqtt", "host": "127.0.0.1", "port": broker}], token=TOKEN
    )


def temp(agent_url: str, value: float) -> None:
    now = int(time.time() * 1000)
    assert push(agent_url, {(("__name__", "temp_celsius"), ("room", "lab")): ([now], [value])}) == [204]


def alerts(collector_url: str, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, body, _ = http("GET", f"{collector_url}/api/v1/alerts?{qs}", headers=READ_HEADERS)
    assert status == 200, body
    return list(json.loads(body)["alerts"])


def listed(collector_url: str, rule: str, state: str) -> dict[str, Any] | None:
    return next((a for a in alerts(collector_url) if a["rule"] == rule and a["state"] == state), None)


def subscribed(log: Path) -> None:
    wait_until(lambda: "mqtt: subscribed" in log.read_text(), 10, "the collector's MQTT subscription")


def test_rule_fires_and_resolves_at_the_collector_over_http(tmp_path: Path, run: Run) -> None:
    cport, aport = free_port(), free_port()
    collector = f"http://127.0.0.1:{cport}"
    run("backhaul-collector", "collector", cport, collector_with(tmp_path, cport))
    agent = f"http://127.0.0.1:{aport}"
    run("backhaul-agent", "agent", aport, agent_config(tmp_path, aport, cport))

    temp(agent, 20)
    temp(agent, 95.5)
    started = time.monotonic()
    fired = wait_until(lambda: listed(collector, "TooHot", "firing"), 10, "the alert at the collector", 0.02)
    assert time.monotonic() - started < 2
    assert fired["device"] == "dev-1" and fired["severity"] == "critical" and fired["value"] == 95.5
    temp(agent, 40)
    resolved = wait_until(lambda: listed(collector, "TooHot", "resolved"), 10, "the resolution")
    assert resolved["ends_ms"] >= resolved["starts_ms"] and resolved["fingerprint"] == fired["fingerprint"]
    assert metric_value(agent, "backhaul_alerts_sent_total", 'channel="http"') >= 2
    assert alerts(collector, state="firing") == []
    # the long form (the series' labels) follows through the bulk path
    long_form = wait_until(
        lambda: (
            (found := exported_samples(collector, '{__name__="backhaul_alert"}', drop=())) and len(found) == 2 and found
        ),
        10,
        "the long form of both changes in bulk",
    )
    states = {dict(labels)["alertstate"]: values for labels, values in long_form.items()}
    (firing_labels,) = [dict(labels) for labels in long_form if dict(labels)["alertstate"] == "firing"]
    assert firing_labels["room"] == "lab" and firing_labels["alert_fingerprint"] == fired["fingerprint"]
    assert list(states["firing"].values()) == [95.5] and list(states["resolved"].values()) == [40]


def test_collector_refuses_bad_alert_messages_with_a_reason(tmp_path: Path, run: Run) -> None:
    cport = free_port()
    url = f"http://127.0.0.1:{cport}/api/v1/alerts"
    run("backhaul-collector", "collector", cport, collector_with(tmp_path, cport))
    good = wire.encode(AlertMessage("dev-1", "R", "firing", "info", 1.0, int(time.time() * 1000), 1, 5), KEY)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": wire.CONTENT_TYPE}

    status, body, _ = http("POST", url, b"\x07" + good[1:], headers)
    assert (status, body) == (400, b"unknown alert message version 7 (this side speaks 1 and 2)\n")
    status, body, _ = http("POST", url, good[:-2], headers)
    assert status == 400 and b"ends inside" in body
    status, _, _ = http("POST", url, good, {**headers, "Authorization": f"Bearer {TOKEN}-2"})
    assert status == 403  # dev-2's token, dev-1's message
    status, _, _ = http("POST", url, good, {"Content-Type": wire.CONTENT_TYPE})
    assert status == 401
    assert http("POST", url, good, headers)[0] == 200
    status, body, _ = http("POST", url, good, headers)  # a re-send after a lost reply
    assert status == 200 and json.loads(body)["duplicate"] is True
    assert len(alerts(f"http://127.0.0.1:{cport}")) == 1


@pytest.mark.slow
def test_alerts_queued_while_the_collector_is_down_survive_sigkill(tmp_path: Path, run: Run) -> None:
    cport, aport = free_port(), free_port()
    agent = f"http://127.0.0.1:{aport}"
    collector = f"http://127.0.0.1:{cport}"
    config = agent_config(tmp_path, aport, cport)
    proc = run("backhaul-agent", "agent", aport, config)
    temp(agent, 99)
    wait_until(lambda: metric_value(agent, "backhaul_alerts_queued") >= 1, 10, "the alert queued")
    proc.kill()  # SIGKILL with the alert still queued (no collector yet)

    run("backhaul-agent", "agent2", aport, config)
    run("backhaul-collector", "collector", cport, collector_with(tmp_path, cport))
    fired = wait_until(lambda: listed(collector, "TooHot", "firing"), 20, "the queued alert after the restart")
    assert fired["value"] == 99
    crashed = wait_until(lambda: listed(collector, "AgentCrashed", "firing"), 10, "the built-in crash alert")
    assert crashed["severity"] == "critical" and crashed["value"] == 2  # second start


def test_mqtt_channel_through_a_real_broker_to_the_collector(tmp_path: Path, run: Run, mosquitto: int) -> None:
    cport, aport = free_port(), free_port()
    collector = f"http://127.0.0.1:{cport}"
    run(
        "backhaul-collector",
        "collector",
        cport,
        collector_with(tmp_path, cport, mqtt={"host": "127.0.0.1", "port": mosquitto}),
    )
    agent = f"http://127.0.0.1:{aport}"
    # No uplink at all: MQTT is the only way out.
    run("backhaul-agent", "agent", aport, mqtt_only_agent(tmp_path, aport, mosquitto))
    subscribed(tmp_path / "collector.log")
    temp(agent, 81)
    fired = wait_until(lambda: listed(collector, "TooHot", "firing"), 10, "the alert via MQTT")
    assert fired["value"] == 81
    assert metric_value(agent, "backhaul_alerts_sent_total", 'channel="mqtt"') >= 1
    assert metric_value(collector, "backhaul_collector_alerts_total", 'outcome="stored",via="mqtt"') >= 1


def test_command_channel_with_fallback(tmp_path: Path, run: Run) -> None:
    aport = free_port()
    agent = f"http://127.0.0.1:{aport}"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    modem = tmp_path / "modem.sh"
    # A stand-in for an SMS modem: keeps the raw message from stdin and the base64 argument.
    modem.write_text(
        '#!/bin/sh\nn=$(date +%s%N)\ncat > "$1/$n.bin"\nprintf %s "$2" > "$1/$n.tmp"\nmv "$1/$n.tmp" "$1/$n.b64"\n'
    )
    modem.chmod(0o755)
    channels = [
        {"type": "command", "argv": ["/bin/false"]},  # the first choice is broken: fall back
        {"type": "command", "argv": [str(modem), str(inbox), "{base64}"]},
    ]
    run("backhaul-agent", "agent", aport, agent_config(tmp_path, aport, None, channels=channels))
    temp(agent, 90)
    # the .b64 file is written after the .bin one is complete
    done = wait_until(lambda: sorted(inbox.glob("*.b64")), 10, "the program to get the message")
    raw = [done[0].with_suffix(".bin")]
    body = raw[0].read_bytes()
    msg = wire.decode(body)
    assert (msg.device, msg.rule, msg.state, msg.value) == ("dev-1", "TooHot", "firing", 90)
    assert len(body) <= wire.MAX_BYTES
    assert base64.b64decode(raw[0].with_suffix(".b64").read_text()) == body
    assert metric_value(agent, "backhaul_alerts_failures_total", 'channel="command",reason="command"') >= 1


def test_collector_forwards_firing_and_resolved_to_alertmanager_and_a_webhook(
    tmp_path: Path, run: Run, alertmanager: str
) -> None:
    hook_port = free_port()
    received: list[Any] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", hook_port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cport = free_port()
        config = collector_with(
            tmp_path, cport, alertmanager_url=alertmanager, webhook_url=f"http://127.0.0.1:{hook_port}/hook"
        )
        run("backhaul-collector", "collector", cport, config)
        url = f"http://127.0.0.1:{cport}/api/v1/alerts"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": wire.CONTENT_TYPE}
        now = int(time.time() * 1000)
        firing = AlertMessage("dev-1", "DiskLow", "firing", "critical", 1e6, now, 1, 0xABC, "disk nearly full")
        assert http("POST", url, wire.encode(firing, KEY), headers)[0] == 200

        def am_alerts() -> list[dict[str, Any]]:
            status, body, _ = http("GET", f"{alertmanager}/api/v2/alerts")
            assert status == 200
            return [a for a in json.loads(body) if a["labels"].get("alertname") == "DiskLow"]

        (active,) = wait_until(
            lambda: [a for a in am_alerts() if a["status"]["state"] == "active"], 10, "the alert active in Alertmanager"
        )
        assert active["labels"] == {
            "alertname": "DiskLow",
            "device": "dev-1",
            "severity": "critical",
            "fingerprint": "00000abc",
        }
        assert active["annotations"]["summary"] == "disk nearly full"
        assert active["status"]["state"] == "active"
        resolved = AlertMessage("dev-1", "DiskLow", "resolved", "critical", 5e9, now + 1000, 2, 0xABC)
        assert http("POST", url, wire.encode(resolved, KEY), headers)[0] == 200
        wait_until(lambda: not am_alerts(), 10, "Alertmanager to see it resolved")
        hook = wait_until(
            lambda: [a for batch in received for a in batch if a.get("endsAt")], 10, "the webhook's resolved alert"
        )
        assert hook[0]["labels"]["alertname"] == "DiskLow"
    finally:
        server.shutdown()
        server.server_close()


def test_mqtt_alerts_published_while_the_collector_is_down_arrive_when_it_returns(
    tmp_path: Path, run: Run, mosquitto: int
) -> None:
    cport, aport = free_port(), free_port()
    collector = f"http://127.0.0.1:{cport}"
    config = collector_with(tmp_path, cport, mqtt={"host": "127.0.0.1", "port": mosquitto})
    first = run("backhaul-collector", "collector", cport, config)
    subscribed(tmp_path / "collector.log")  # the broker now keeps a persistent session for it
    assert first.stop() == 0
    agent = f"http://127.0.0.1:{aport}"
    run("backhaul-agent", "agent", aport, mqtt_only_agent(tmp_path, aport, mosquitto))
    temp(agent, 85)
    wait_until(lambda: metric_value(agent, "backhaul_alerts_sent_total", 'channel="mqtt"') >= 1, 10, "the PUBACK")
    run("backhaul-collector", "collector-again", cport, config)
    fired = wait_until(lambda: listed(collector, "TooHot", "firing"), 10, "the alert kept by the broker")
    assert fired["value"] == 85


def test_a_rule_with_for_fires_when_it_runs_out_not_at_the_next_scheduled_pass(tmp_path: Path, run: Run) -> None:
    cport, aport = free_port(), free_port()
    collector = f"http://127.0.0.1:{cport}"
    run("backhaul-collector", "collector", cport, collector_with(tmp_path, cport))
    agent = f"http://127.0.0.1:{aport}"
    config = agent_config(tmp_path, aport, cport, eval_interval=30)
    config["alerts"]["rules"] = [{**RULE, "for": 1}]
    run("backhaul-agent", "agent", aport, config)
    temp(agent, 90)
    started = time.monotonic()
    wait_until(lambda: listed(collector, "TooHot", "firing"), 10, "the alert after its for", 0.02)
    assert 1 <= time.monotonic() - started < 3  # one second pending, not the 30 s evaluation interval


def test_a_clean_restart_is_reported_as_such(tmp_path: Path, run: Run) -> None:
    cport, aport = free_port(), free_port()
    collector = f"http://127.0.0.1:{cport}"
    run("backhaul-collector", "collector", cport, collector_with(tmp_path, cport))
    config = agent_config(tmp_path, aport, cport)
    assert run("backhaul-agent", "agent", aport, config).stop() == 0  # SIGTERM: a clean stop
    run("backhaul-agent", "agent2", aport, config)
    restarted = wait_until(lambda: listed(collector, "AgentRestarted", "firing"), 10, "the restart alert")
    assert (restarted["severity"], restarted["value"]) == ("info", 2)
    assert listed(collector, "AgentCrashed", "firing") is None
