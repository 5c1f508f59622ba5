"""The collector's MQTT alert subscriber: the agents' fallback channel for urgent alerts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiomqtt
from prometheus_client import Counter

from backhaul.errors import AlertFormatError, StoreError
from backhaul.retry import Backoff
from backhaul.wire import alert as wire
from collector.alerts.receiver import claimed_by, count_clamped, signed_by
from collector.alerts.settings import MqttSettings
from collector.store import Registration, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

# While the store is in transient trouble, a message waits (the broker holds the rest, QoS 1).
_STORE_RETRY_S = 1.0


class MqttSubscriber:
    """Subscribes to the agents' alert topic (QoS 1, persistent session) and stores what arrives.

    Anyone who may publish to the broker can put anything on the topic, so a message proves its own
    origin: it must carry the MAC of its device's token (version 2, backhaul/wire/alert.py). The
    device is the topic's last level; a message naming another device, from a device the collector
    does not know, without a MAC (version 1) or with a MAC that is not its device's is dropped and
    counted, and so is a malformed one. Nothing a message holds can stop the subscriber. Reconnects
    with backoff while the broker is away.

    Args:
        settings: the ``[alerts.mqtt]`` section.
        store: where alerts go; its device registry decides who may send (and holds the MAC keys).
        counter: messages by transport and outcome (``CollectorMetrics.alerts``).
        on_stored: called after each new message (the Alertmanager forwarder's ``notify``).
        clock: wall clock (s).
        backoff: reconnection delays (0.5 s doubling to 30 s by default).
        clamped: messages whose time was clamped, by reason (``CollectorMetrics.alert_times_clamped``).
    """

    def __init__(
        self,
        settings: MqttSettings,
        store: Store,
        counter: Counter,
        on_stored: Callable[[], None],
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        clamped: Counter | None = None,
    ) -> None:
        self._s = settings
        self._clamped = clamped
        self._store = store
        self._counter = counter
        self._on_stored = on_stored
        self._clock = clock
        self._backoff = backoff or Backoff(0.5, 30)
        self.connected = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                delay = self._backoff.next()
                log.warning("mqtt: %s; reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)

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
            self._backoff.reset()
            log.info("mqtt: subscribed to %s on %s:%d", s.topic, s.host, s.port)
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                try:
                    await self._handle(str(message.topic), bytes(payload))
                except Exception:  # a bug: logged and counted, and the next message is handled all the same
                    self._counter.labels("mqtt", "error").inc()
                    log.exception("mqtt: could not handle a message on %s", message.topic)

    async def _handle(self, topic: str, payload: bytes) -> None:
        device = topic.rsplit("/", 1)[-1]
        try:
            msg = wire.decode(payload)
        except AlertFormatError as exc:
            self._counter.labels("mqtt", "malformed").inc()
            log.warning("mqtt: malformed alert on %s: %s", topic, exc)
            return
        if payload[0] == wire.UNSIGNED_VERSION:
            # No MAC: over a broker anyone may publish to, nothing says who sent it.
            self._counter.labels("mqtt", "unsigned").inc()
            log.warning("mqtt: alert on %s without a MAC (version 1, an agent older than the MAC): dropped", topic)
            return
        registration = None
        if claimed_by(device, msg):
            registration = await self._store_call(lambda: self._registration(device), "read the device registry")
        if registration is None:
            self._counter.labels("mqtt", "unknown_device").inc()
            log.warning("mqtt: alert on %s from unknown or mismatched device %r", topic[:200], msg.device)
            return
        if not signed_by(payload, registration):
            self._counter.labels("mqtt", "bad_mac").inc()
            log.warning("mqtt: alert on %s whose MAC is not that of device %r's token: dropped", topic[:200], device)
            return
        received_ms = int(self._clock() * 1000)
        new = await self._store_call(lambda: self._store.record_alert(device, msg, received_ms, "mqtt"), "store alert")
        if new is None:
            return
        self._counter.labels("mqtt", "stored" if new else "duplicate").inc()
        if new:
            if self._clamped is not None:
                count_clamped(self._clamped, msg, received_ms)
            self._on_stored()

    async def _registration(self, device: str) -> Registration | None:
        """The device's entry in the registry (shared by every instance), if it is there and not revoked."""
        found = await self._store.registrations()
        return next((r for r in found if r.device == device and not r.revoked_ms), None)

    async def _store_call(self, call: Callable[[], Awaitable[T]], what: str) -> T | None:
        """``call()``, retried while the store's trouble is transient; None (logged) when it is not."""
        while True:
            try:
                return await call()
            except StoreError as exc:
                if not exc.transient:
                    log.error("mqtt: cannot %s: %s", what, exc)
                    return None
                await asyncio.sleep(_STORE_RETRY_S)
