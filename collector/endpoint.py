"""What the collector's device-facing endpoints share: their dependencies, the token check, and
answers that say why, counted by status."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import Counter

from collector.auth import DeviceAuth
from collector.config import CollectorSettings
from collector.metrics import CollectorMetrics
from collector.store import Store

log = logging.getLogger(__name__)


class DeviceEndpoint:
    """Base of an endpoint devices post to; subclasses implement ``_handle`` and name their counter.

    Args: settings, store, metrics and a wall clock (seconds).
    """

    what = "request"

    def __init__(
        self,
        settings: CollectorSettings,
        store: Store,
        metrics: CollectorMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._auth = DeviceAuth(store)
        self._clock = clock

    def _answers(self) -> Counter:
        raise NotImplementedError

    async def _handle(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._handle(request)
        self._answers().labels(str(response.status)).inc()
        return response

    def _error(self, status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
        (log.warning if status >= 500 else log.info)("%s refused (%d): %s", self.what, status, reason)
        return web.Response(status=status, text=reason + "\n", headers=headers)
