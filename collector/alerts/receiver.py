"""``POST /api/v1/alerts``: one compact alert message (backhaul/wire/alert.py) from a device.

200  stored (``"duplicate": true`` when this message was stored before); the agent drops it
400  not a valid alert message (reason in the body)
401  no or unknown bearer token
403  the message names another device, or its MAC is not that of the token's device
415  wrong Content-Type
503  the store cannot write right now: the agent retries

A version 1 message (no MAC, from an agent older than the MAC) is still accepted here, where the
bearer token authenticates the sender; it is counted as ``outcome="unsigned"``. Never over MQTT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from backhaul.errors import AuthError, InputError, store_trouble
from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage
from collector.endpoint import DeviceEndpoint
from collector.store import Registration
from collector.store.records import alert_time

log = logging.getLogger(__name__)


def claimed_by(device: str, msg: AlertMessage) -> bool:
    """Whether ``msg`` may come from ``device``: the same id, or the id cut to the message's 64 bytes."""
    if msg.device == device:
        return True
    return len(msg.device.encode()) == wire.MAX_DEVICE_BYTES and device.startswith(msg.device)


def signed_by(data: bytes, registration: Registration) -> bool:
    """Whether a version 2 message carries the MAC of the registered device's token (whose digest is the key)."""
    return wire.verify(data, bytes.fromhex(registration.token_sha256))


def count_clamped(counter: Counter, msg: AlertMessage, received_ms: int) -> None:
    """Count a message whose time the state will not use as it is (records.alert_time)."""
    _, reason = alert_time(msg.ts_ms, received_ms)
    if reason is not None:
        counter.labels(reason).inc()


def _nothing() -> None:
    pass


class AlertReceiver(DeviceEndpoint):
    """Args: settings, store, metrics, a wall clock (seconds), and ``on_stored``, called after each new
    message (the Alertmanager forwarder's ``notify``)."""

    what = "alert"

    def __init__(self, *args: Any, on_stored: Callable[[], None] = _nothing, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_stored = on_stored

    def _answers(self) -> Counter:
        return self._metrics.alert_requests

    async def _handle(self, request: web.Request) -> web.Response:
        registration = await self._auth.registration_of(request)
        device = registration.device
        if request.content_type != wire.CONTENT_TYPE:
            raise InputError(f"Content-Type must be {wire.CONTENT_TYPE}, not {request.content_type!r}", 415)
        if request.content_length is not None and request.content_length > wire.MAX_BYTES:
            raise InputError(f"alert message of {request.content_length} bytes exceeds {wire.MAX_BYTES}")
        data = await request.content.read(wire.MAX_BYTES + 1)
        msg = wire.decode(data)
        if not claimed_by(device, msg):
            raise AuthError(403, f"this token belongs to device {device!r}, not {msg.device!r}")
        unsigned = data[0] == wire.UNSIGNED_VERSION
        if not unsigned and not signed_by(data, registration):
            self._metrics.alerts.labels("http", "bad_mac").inc()
            raise AuthError(403, f"the alert message's MAC is not that of device {device!r}'s token")
        received_ms = int(self._clock() * 1000)
        with store_trouble("alert store"):
            new = await self._store.record_alert(device, msg, received_ms, "http")
        self._metrics.alerts.labels("http", "stored" if new else "duplicate").inc()
        if unsigned:
            self._metrics.alerts.labels("http", "unsigned").inc()
        if new:
            count_clamped(self._metrics.alert_times_clamped, msg, received_ms)
            log.info("alert %s %s from %s (seq %d)", msg.rule, msg.state, device, msg.seq)
            self._on_stored()
        return web.json_response({"stored": True, "duplicate": not new, "seq": msg.seq})
