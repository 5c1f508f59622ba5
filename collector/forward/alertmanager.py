"""Forwarding alerts to Alertmanager's v2 API and/or a webhook.

The store holds the truth (the latest state of every alert instance), so the forwarder sends state,
not messages: after any new alert message, and every ``resend_interval`` anyway, it POSTs every firing
alert and every alert resolved within ``resolved_for`` to each target. Alertmanager de-duplicates by
labels, so re-sending is harmless, and it is what Alertmanager expects: a firing alert not re-sent
within its ``resolve_timeout`` resolves by itself. A failed send is retried at the next pass (soon,
with backoff), so nothing depends on one request getting through.

Alertmanager's labels: ``alertname`` (the rule), ``device``, ``severity``, ``fingerprint`` (the
instance, hex); annotations: ``summary``, ``value``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from yarl import URL

from backhaul import __version__
from backhaul.errors import PeerError, StoreError
from backhaul.http import HttpClient
from backhaul.retry import Backoff
from collector.alerts.settings import AlertSettings
from collector.store import Store, StoredAlert

log = logging.getLogger(__name__)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_alertmanager(alert: StoredAlert) -> dict[str, Any]:
    """One alert in Alertmanager's v2 ``postableAlert`` form."""
    value = "" if alert.value is None else ("NaN" if math.isnan(alert.value) else f"{alert.value:g}")
    out: dict[str, Any] = {
        "labels": {
            "alertname": alert.rule,
            "device": alert.device,
            "severity": alert.severity,
            "fingerprint": f"{alert.fingerprint:08x}",
        },
        "annotations": {"summary": alert.summary, "value": value},
        "startsAt": _iso(alert.starts_ms),
    }
    if alert.ends_ms is not None:
        out["endsAt"] = _iso(alert.ends_ms)
    return out


# The first retry after a failed pass (seconds); later ones double, up to ``resend_interval``.
_RETRY_MIN = 0.5


class AlertForwarder:
    """Args: the ``[alerts]`` settings; the store; a wall clock (seconds); the backoff's jitter source."""

    def __init__(
        self,
        settings: AlertSettings,
        store: Store,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._clock = clock
        self._targets: list[tuple[str, str]] = []
        if settings.alertmanager_url is not None:
            base = URL(str(settings.alertmanager_url))
            self._targets.append(("alertmanager", str(base.with_path(base.path.rstrip("/") + "/api/v2/alerts"))))
        if settings.webhook_url is not None:
            self._targets.append(("webhook", str(settings.webhook_url)))
        self._resend = settings.resend_interval.total_seconds()
        self._resolved_for_ms = int(settings.resolved_for.total_seconds() * 1000)
        self._timeout = settings.timeout.total_seconds()
        self._backoff = Backoff(_RETRY_MIN, max(_RETRY_MIN, self._resend), rng)
        self._wake = asyncio.Event()
        self.sent = 0  # successful posts, for tests and health
        self.last_error: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._targets)

    def notify(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        headers = {"Content-Type": "application/json"}
        async with HttpClient(self._timeout, f"backhaul-collector/{__version__}", headers=headers) as client:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._resend)
                except TimeoutError:
                    pass
                self._wake.clear()
                if await self._pass(client):
                    self._backoff.reset()
                    continue
                await asyncio.sleep(self._backoff.next())
                self._wake.set()  # try again after the backoff

    async def _pass(self, client: HttpClient) -> bool:
        since = int(self._clock() * 1000) - self._resolved_for_ms
        try:
            found = await self._store.alerts(None, None, since)
        except StoreError as exc:
            self.last_error = str(exc)
            return False
        if not found:
            return True
        payload = [to_alertmanager(a) for a in found]
        body = json.dumps(payload).encode()
        ok = True
        for name, url in self._targets:
            try:
                reply = await client.post(url, body)
                if reply.status >= 300:
                    raise PeerError(f"http_{reply.status}", reply.text.strip()[:200])
                self.sent += 1
            except PeerError as exc:
                ok = False
                self.last_error = f"{name}: {exc}"[:300]
                log.warning("forwarding %d alerts to %s failed: %s", len(payload), name, self.last_error)
        if ok:
            self.last_error = None
        return ok
