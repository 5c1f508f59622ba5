"""Issue 12, alerts: a message proves its own origin whatever carried it (findings 3 and 2), and an
alert's state follows the device's sequence, not its clock (finding 4).

Real processes on 127.0.0.1: a collector, a real Mosquitto broker anyone may publish to, an agent.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage
from backhaul.wire.varint import varint
from tests.conftest import Running
from tests.support import READ_HEADERS, TOKEN, http, metric_value, push, wait_until

pytestmark = [pytest.mark.integration]

KEY = wire.token_key(TOKEN)  # dev-1's
RULE = {"name": "TooHot", "selector": 'temp_celsius{room="lab"}', "op": ">", "threshold": 80, "severity": "critical"}
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": wire.CONTENT_TYPE}


def now_ms() -> int:
    return int(time.time() * 1000)


def message(rule: str, seq: int, state: str = "firing", ts_ms: int | None = None, value: float = 1.0) -> AlertMessage:
    return AlertMessage("dev-1", rule, state, "critical", value, now_ms() if ts_ms is None else ts_ms, seq, 7)


def publish(port: int, payload: bytes, topic: str = "backhaul/alerts/dev-1") -> None:
    """What anyone on the network can do: publish to the broker (QoS 1)."""

    async def go() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"intruder-{time.monotonic_ns()}") as client:
            await client.publish(topic, payload, qos=1)

    asyncio.run(go())


def listed(url: str, device: str = "dev-1") -> dict[str, dict[str, Any]]:
    status, body, _ = http("GET", f"{url}/api/v1/alerts?device={device}", headers=READ_HEADERS)
    assert status == 200, body
    return {a["rule"]: a for a in json.loads(body)["alerts"]}


def with_seq(body: bytes, seq: int) -> bytes:
    """A version 1 message with its seq varint replaced (any value, even past 2**63)."""
    at = 2
    while body[at] & 0x80:
        at += 1
    return body[:2] + varint(seq) + body[at + 1 :]


def sign_raw(unsigned: bytes, key: bytes = KEY) -> bytes:
    """Any version 1 body made a version 2 message with a valid MAC (what only the device could do)."""
    body = bytes([wire.VERSION]) + unsigned[1:]
    return body + wire.mac(key, body)


def start_mqtt_collector(start_collector: Any, broker: int, tmp_path: Path) -> Running:
    collector: Running = start_collector(alerts={"mqtt": {"host": "127.0.0.1", "port": broker}})
    log = Path(str(collector.config).removesuffix(".toml") + ".log")
    wait_until(lambda: "mqtt: subscribed" in log.read_text(), 10, "the collector's MQTT subscription")
    return collector


def test_anyone_on_the_broker_cannot_raise_alerts_as_a_device(
    start_collector: Any, start_agent: Any, mosquitto: int, tmp_path: Path
) -> None:
    """Finding 3: over MQTT the topic names the device, but only the MAC of its token proves it."""
    collector = start_mqtt_collector(start_collector, mosquitto, tmp_path)
    # Forged: no MAC (what every message was before), the MAC of another key, another device's MAC.
    publish(mosquitto, wire.encode_unsigned(message("Forged1", 1)))
    publish(mosquitto, wire.encode(message("Forged2", 2), wire.token_key("guessed")))
    publish(mosquitto, wire.encode(message("Forged3", 3), wire.token_key(TOKEN + "-2")))
    # and a genuine agent through the same broker
    agent = start_agent(
        None,
        alerts={
            "rules": [RULE],
            "eval_interval": 0.5,
            "token": TOKEN,
            "channels": [{"type": "mqtt", "host": "127.0.0.1", "port": mosquitto}],
        },
    )
    assert push(agent.url, {(("__name__", "temp_celsius"), ("room", "lab")): ([now_ms()], [90.0])}) == [204]
    wait_until(lambda: "TooHot" in listed(collector.url), 10, "the genuine alert")
    assert sorted(listed(collector.url)) == ["TooHot"]
    name = "backhaul_collector_alerts_total"
    assert metric_value(collector.url, name, 'outcome="unsigned",via="mqtt"') == 1
    assert metric_value(collector.url, name, 'outcome="bad_mac",via="mqtt"') == 2


def test_a_seq_beyond_int64_over_mqtt_cannot_stop_the_subscriber(
    start_collector: Any, mosquitto: int, tmp_path: Path
) -> None:
    """Finding 2/3: such a message once killed the MQTT subscriber silently; later alerts were lost."""
    collector = start_mqtt_collector(start_collector, mosquitto, tmp_path)
    publish(mosquitto, with_seq(wire.encode_unsigned(message("Huge", 1)), 2**63))
    # the same from a device that holds its token (a valid MAC over a seq no encoder writes)
    publish(mosquitto, sign_raw(with_seq(wire.encode_unsigned(message("Huge", 1)), 2**64 - 1)))
    publish(mosquitto, wire.encode(message("AfterIt", 2), KEY))
    wait_until(lambda: "AfterIt" in listed(collector.url), 10, "the alert sent after the hostile ones")
    assert "Huge" not in listed(collector.url)
    log = Path(str(collector.config).removesuffix(".toml") + ".log").read_text()
    assert "Traceback" not in log


def test_http_refuses_a_message_whose_mac_is_not_the_tokens_device(start_collector: Any) -> None:
    collector = start_collector()
    url = f"{collector.url}/api/v1/alerts"
    status, body, _ = http("POST", url, wire.encode(message("R", 1), wire.token_key(TOKEN + "-2")), HEADERS)
    assert status == 403 and b"MAC" in body
    tampered = bytearray(wire.encode(message("R", 2), KEY))
    tampered[-12] ^= 0x40  # a byte of the device id / rule
    status, _, _ = http("POST", url, bytes(tampered), HEADERS)
    assert status in (400, 403)
    status, body, _ = http("POST", url, sign_raw(with_seq(wire.encode_unsigned(message("R", 1)), 2**63)), HEADERS)
    assert status == 400 and b"seq" in body
    assert http("POST", url, wire.encode(message("R", 3), KEY), HEADERS)[0] == 200
    assert listed(collector.url)["R"]["seq"] == 3


def test_a_message_from_a_future_clock_cannot_freeze_an_alert_firing(start_collector: Any) -> None:
    """Finding 4: a device whose clock was once a year ahead sends "firing", then, clock fixed,
    "resolved": the state follows the sequence, and the future time is clamped and counted."""
    collector = start_collector()
    url = f"{collector.url}/api/v1/alerts"
    year = 365 * 86_400_000
    # Version 1 messages, as the agents of the time sent them (still accepted over HTTP with a token).
    firing = wire.encode_unsigned(message("DiskLow", 10, "firing", now_ms() + year))
    before = now_ms()
    assert http("POST", url, firing, HEADERS)[0] == 200
    alert = listed(collector.url)["DiskLow"]
    assert alert["state"] == "firing"
    assert before <= alert["starts_ms"] <= now_ms()  # clamped to the arrival, not a year ahead
    resolved = wire.encode_unsigned(message("DiskLow", 11, "resolved"))
    assert http("POST", url, resolved, HEADERS)[0] == 200
    alert = listed(collector.url)["DiskLow"]
    assert (alert["state"], alert["seq"]) == ("resolved", 11)
    assert metric_value(collector.url, "backhaul_collector_alert_times_clamped_total", 'reason="future"') == 1
    _, body, _ = http("GET", f"{collector.url}/api/v1/alerts?state=firing", headers=READ_HEADERS)
    assert json.loads(body)["alerts"] == []


def test_an_older_sequence_never_moves_a_state_back_even_if_its_time_is_newer(start_collector: Any) -> None:
    """Finding 4 and the replay half of finding 3: a late or replayed message keeps its place in the log only."""
    collector = start_collector()
    url = f"{collector.url}/api/v1/alerts"
    t = now_ms()
    assert http("POST", url, wire.encode(message("Hot", 20, "firing", t - 5000), KEY), HEADERS)[0] == 200
    assert http("POST", url, wire.encode(message("Hot", 21, "resolved", t - 4000), KEY), HEADERS)[0] == 200
    # seq 19, stamped later (the device's clock jumped back between them): older in the sequence
    late = wire.encode(message("Hot", 19, "firing", t - 1000), KEY)
    status, body, _ = http("POST", url, late, HEADERS)
    assert status == 200 and json.loads(body)["duplicate"] is False
    replayed = wire.encode(message("Hot", 20, "firing", t - 5000), KEY)  # captured on the wire earlier
    status, body, _ = http("POST", url, replayed, HEADERS)
    assert status == 200 and json.loads(body)["duplicate"] is True
    alert = listed(collector.url)["Hot"]
    assert (alert["state"], alert["seq"], alert["ends_ms"]) == ("resolved", 21, t - 4000)
