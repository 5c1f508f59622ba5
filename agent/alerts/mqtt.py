"""The MQTT alert channel, in a module of its own: aiomqtt and paho cost the agent about 14 MB of
memory, so they are imported only when an ``mqtt`` channel is configured (agent.alerts.setup)."""

from __future__ import annotations

import contextlib

import aiomqtt

from agent.alerts.budget import AlertBudget
from agent.alerts.settings import MqttChannelSettings
from backhaul.errors import PeerError


class MqttChannel:
    """Publishes with QoS 1 and returns when the broker's PUBACK arrived.

    Keeps one connection open and reconnects on the next message after a failure.
    Args: settings; device id (fills ``{device}`` in the topic); the lane's byte budget (None: none).
    """

    name = "mqtt"

    def __init__(self, settings: MqttChannelSettings, device: str, budget: AlertBudget | None = None) -> None:
        self._budget = budget
        self._s = settings
        self.topic = settings.topic.replace("{device}", device)
        self._timeout = settings.timeout.total_seconds()
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def _connect(self) -> aiomqtt.Client:
        if self._client is not None:
            return self._client
        s = self._s
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            timeout=self._timeout,
        )
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(client)
        self._client, self._stack = client, stack
        return client

    async def send(self, body: bytes) -> None:
        # PUBLISH: fixed header, topic, packet id, payload; PUBACK: 4 bytes.
        cost = len(body) + len(self.topic.encode()) + 12
        if self._budget is not None:
            reason = await self._budget.admit(cost)
            if reason is not None:
                raise PeerError("blocked", f"alerts.daily_bytes spent ({reason})")
            self._budget.count(cost)
        try:
            client = await self._connect()
            await client.publish(self.topic, body, qos=1, timeout=self._timeout)
        except aiomqtt.MqttError as exc:
            await self.close()
            raise PeerError("mqtt", str(exc)[:200]) from exc
        except TimeoutError as exc:
            await self.close()
            raise PeerError("timeout", f"no PUBACK within {self._timeout} s") from exc

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                await stack.aclose()
