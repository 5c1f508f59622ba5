"""What the collector's device-facing endpoints share: their dependencies, the token check, reading a
body within the limit, the label rules and the memory budget for decoding, and answers counted by
status (errors mapped by :func:`backhaul.web.respond`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import Counter

from backhaul import labels
from backhaul.web import read_body, respond
from backhaul.wire.budget import DecodeBudget
from backhaul.wire.series import SeriesMap
from collector.auth import DeviceAuth
from collector.config import CollectorSettings
from collector.forward.spool import Forward
from collector.metrics import CollectorMetrics
from collector.store import Store


class DeviceEndpoint:
    """Base of an endpoint devices post to; subclasses implement ``_handle`` (raising the errors of
    :mod:`backhaul.errors` for anything but success) and name the counter of their answers.

    Args: settings, store, metrics, a wall clock (seconds), ``forward`` for the endpoints that
    receive samples when forwarding is configured: it queues what a device sent durably for every
    target *before* the store commits it (docs/forwarding.md: a crash in between can then only
    forward twice, never lose); and ``budget``, the decoding memory shared by every endpoint
    (:func:`decode_budget` of the settings when None).
    """

    what = "request"

    def __init__(
        self,
        settings: CollectorSettings,
        store: Store,
        metrics: CollectorMetrics,
        clock: Callable[[], float] = time.time,
        forward: Forward | None = None,
        budget: DecodeBudget | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        listen = settings.listen
        self._auth = DeviceAuth(store, listen.client_ca is not None, listen.client_identity == "device_id")
        self._clock = clock
        self._forward = forward
        self._budget = budget or decode_budget(settings)
        limits = settings.limits
        self._rules = labels.LabelRules(limits.max_labels_per_series, limits.max_label_bytes, settings.device_label)

    def _answers(self) -> Counter:
        raise NotImplementedError

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await respond(self._handle, request, self.what)
        self._answers().labels(str(response.status)).inc()
        return response

    async def _read(self, request: web.Request) -> bytes:
        return await read_body(request, int(self._settings.limits.max_request_bytes))

    def _count_dropped(self, device: str, dropped: dict[str, int]) -> int:
        """Count samples refused one series at a time (labels, timestamps), per device and reason."""
        for reason, count in dropped.items():
            self._metrics.dropped_samples.labels(device, reason).inc(count)
        return sum(dropped.values())

    def _drop_bad_series(self, series: SeriesMap) -> dict[str, int]:
        """Remove the series that break the label rules (:mod:`backhaul.labels`); samples dropped by reason."""
        return labels.drop_bad_series(series, self._rules)


def decode_budget(settings: CollectorSettings) -> DecodeBudget:
    """The decoding memory of ``[limits]``, to be shared by every endpoint that decodes uploads."""
    limits = settings.limits
    return DecodeBudget(
        limits.total_decoding_bytes(),
        limits.per_request_decoding_bytes(),
        limit_name="2 x [limits] max_decompressed_bytes, or max_decoding_bytes",
    )
