"""Urgent alerts at the collector: ``POST /api/v1/alerts``, ``GET /api/v1/alerts``, and an MQTT subscriber.

POST answers (the body is one compact message, see backhaul/wire/alert.py):
    200  stored (``"duplicate": true`` when this message was stored before); the agent drops it
    400  not a valid alert message (reason in the body)
    401  no or unknown bearer token;  403  the message names another device
    415  wrong Content-Type
    503  the store cannot write right now: the agent retries

GET lists the latest state of each alert instance as JSON, newest change first; filters
``?device=``, ``?state=firing|resolved``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import aiomqtt
from aiohttp import web
from prometheus_client import Counter

from backhaul.errors import AlertFormatError, AuthError, InputError, StoreError, store_trouble
from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage
from collector.alerts.settings import MqttSettings
from collector.endpoint import DeviceEndpoint
from collector.store import Store

log = logging.getLogger(__name__)


def claimed_by(device: str, msg: AlertMessage) -> bool:
    """Whether ``msg`` may come from ``device``: the same id, or the id cut to the message's 64 bytes."""
    if msg.device == device:
        return True
    return len(msg.device.encode()) == wire.MAX_DEVICE_BYTES and device.startswith(msg.device)


class AlertReceiver(DeviceEndpoint):
    """Args: settings, store, metrics, a wall clock (seconds); ``on_stored`` is called after each new message."""

    what = "alert"
    on_stored: Callable[[], None] = staticmethod(lambda: None)

    def _answers(self) -> Counter:
        return self._metrics.alert_requests

    async def _handle(self, request: web.Request) -> web.Response:
        device = await self._auth.device_for(request.headers.get("Authorization"))
        if request.content_type != wire.CONTENT_TYPE:
            raise InputError(f"Content-Type must be {wire.CONTENT_TYPE}, not {request.content_type!r}", 415)
        if request.content_length is not None and request.content_length > wire.MAX_BYTES:
            raise InputError(f"alert message of {request.content_length} bytes exceeds {wire.MAX_BYTES}")
        msg = wire.decode(await request.content.read(wire.MAX_BYTES + 1))
        if not claimed_by(device, msg):
            raise AuthError(403, f"this token belongs to device {device!r}, not {msg.device!r}")
        with store_trouble("alert store"):
            new = await self._store.record_alert(device, msg, int(self._clock() * 1000), "http")
        self._metrics.alerts.labels("http", "stored" if new else "duplicate").inc()
        if new:
            log.info("alert %s %s from %s (seq %d)", msg.rule, msg.state, device, msg.seq)
            self.on_stored()
        return web.json_response({"stored": True, "duplicate": not new, "seq": msg.seq})


class AlertLister:
    """``GET /api/v1/alerts``. Args: the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def handle(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state not in (None, "firing", "resolved"):
            raise InputError("state must be firing or resolved")
        device = request.query.get("device")
        found = await self._store.alerts(device, state)
        out = []
        for a in found:
            item = a.as_dict()
            item["fingerprint"] = f"{a.fingerprint:08x}"
            if a.value is not None and not math.isfinite(a.value):
                item["value"] = str(a.value)  # JSON has no Inf
            out.append(item)
        return web.json_response({"alerts": out})


class MqttSubscriber:
    """Subscribes to the agents' alert topic (QoS 1, persistent session) and stores what arrives.

    The device is the topic's last level; a message naming another device, or from a device the
    collector does not know, is dropped and counted. Reconnects with backoff while the broker is away.
    Args: settings; the store (its device registry decides who may send); metrics counter; ``on_stored``;
    wall clock (s).
    """

    def __init__(
        self,
        settings: MqttSettings,
        store: Store,
        counter: Counter,
        on_stored: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._store = store
        self._counter = counter
        self._on_stored = on_stored
        self._clock = clock
        self.connected = asyncio.Event()

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning("mqtt: %s; reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _session(self) -> None:
        s = self._s
        async with aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            identifier=s.client_id,
            clean_session=False,  # the broker keeps QoS 1 messages for us while we are away
        ) as client:
            await client.subscribe(s.topic, qos=1)
            self.connected.set()
            log.info("mqtt: subscribed to %s on %s:%d", s.topic, s.host, s.port)
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                await self._handle(str(message.topic), bytes(payload))

    async def _registered(self, device: str) -> bool:
        """Whether the registry (shared by every instance) knows the device and has not revoked it."""
        while True:
            try:
                found = await self._store.registrations()
                return any(r.device == device and not r.revoked_ms for r in found)
            except StoreError as exc:
                if not exc.transient:
                    log.error("mqtt: cannot read the device registry: %s", exc)
                    return False
                await asyncio.sleep(1)

    async def _handle(self, topic: str, payload: bytes) -> None:
        device = topic.rsplit("/", 1)[-1]
        try:
            msg = wire.decode(payload)
        except AlertFormatError as exc:
            self._counter.labels("mqtt", "malformed").inc()
            log.warning("mqtt: malformed alert on %s: %s", topic, exc)
            return
        if not claimed_by(device, msg) or not await self._registered(device):
            self._counter.labels("mqtt", "unknown_device").inc()
            log.warning("mqtt: alert on %s from unknown or mismatched device %r", topic, msg.device)
            return
        while True:
            try:
                new = await self._store.record_alert(device, msg, int(self._clock() * 1000), "mqtt")
                break
            except StoreError as exc:
                if not exc.transient:
                    log.error("mqtt: cannot store alert: %s", exc)
                    return
                await asyncio.sleep(1)
        self._counter.labels("mqtt", "stored" if new else "duplicate").inc()
        if new:
            self._on_stored()
