"""The ``[alerts]`` settings: receiving urgent alerts (HTTP, MQTT) and forwarding them to Alertmanager
or a webhook (see examples/collector.toml)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, HttpUrl

from backhaul.settings import Secret, Section


class MqttSettings(Section):
    """Alert messages from an MQTT broker (QoS 1, a persistent session keeps them while the collector is down)."""

    host: str
    port: int = Field(1883, ge=1, le=65535)
    # The last topic level names the device (the agents' default is backhaul/alerts/<device>).
    topic: str = "backhaul/alerts/+"
    username: str | None = None
    password: Secret | None = None
    client_id: str = "backhaul-collector"


class AlertSettings(Section):
    """Receiving urgent alerts and forwarding them."""

    mqtt: MqttSettings | None = None
    # Alertmanager's base URL (alerts go to <url>/api/v2/alerts), and/or a webhook that gets the same JSON list.
    alertmanager_url: HttpUrl | None = None
    webhook_url: HttpUrl | None = None
    # Firing alerts are sent again this often (Alertmanager resolves an alert not re-sent within its
    # resolve_timeout); resolved ones keep being sent for resolved_for, in case a send was lost.
    resend_interval: timedelta = Field(timedelta(seconds=60), gt=timedelta(0))
    resolved_for: timedelta = timedelta(minutes=15)
    timeout: timedelta = timedelta(seconds=10)
