"""Wires the collector together and owns its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from backhaul import systemd
from backhaul.web import error_middleware
from collector.alerts import AlertLister, AlertReceiver, MqttSubscriber
from collector.config import CollectorSettings
from collector.export import Exporter
from collector.fleet import Fleet
from collector.forward.alertmanager import AlertForwarder
from collector.forward.metrics import ForwardMetrics, QueueCollector
from collector.forward.remote_write import Forwarder, Forwarding
from collector.forward.spool import Spool
from collector.ingest import BatchReceiver
from collector.metrics import CollectorMetrics, DeviceCollector
from collector.registry import import_config_devices
from collector.remote_write import RemoteWriteReceiver
from collector.store import make_store

log = logging.getLogger(__name__)


class Collector:
    """The running collector, as an async context manager.

    Args:
        settings: the whole configuration.
        registry: metrics registry (a fresh one by default).
        clock: wall clock in seconds.
    """

    def __init__(
        self,
        settings: CollectorSettings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = CollectorMetrics(self.registry)
        self.store = make_store(settings.store)
        self._clock = clock
        self.registry.register(DeviceCollector(lambda: self.store.devices))
        self._receiver = BatchReceiver(settings, self.store, self.metrics, clock)
        self._remote_write = RemoteWriteReceiver(settings, self.store, self.metrics, clock)
        self._exporter = Exporter(self.store)
        self._fleet = Fleet(settings, self.store, clock)
        self.forwarding = self._forwarding(clock)
        self.forwarder = AlertForwarder(settings.alerts, self.store, clock)
        self._alerts = AlertReceiver(settings, self.store, self.metrics, clock, on_stored=self.forwarder.notify)
        self.mqtt: MqttSubscriber | None = None
        if settings.alerts.mqtt is not None:
            self.mqtt = MqttSubscriber(
                settings.alerts.mqtt,
                self.store,
                self.metrics.alerts,
                self.forwarder.notify,
                clock,
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _forwarding(self, clock: Callable[[], float]) -> Forwarding | None:
        """One forwarder per ``[[forward]]`` target; the ingest endpoints queue to them before storing."""
        s = self.settings
        if not s.forward:
            return None
        metrics = ForwardMetrics(self.registry)
        forwarders = [
            Forwarder(
                t,
                Spool(s.spool_path(t), s.store.synchronous, int(t.spool_max_bytes)),
                metrics,
                s.device_label,
                int(s.limits.max_decompressed_bytes),
                clock,
            )
            for t in s.forward
        ]
        self.registry.register(QueueCollector(lambda: {f.name: f.spool.totals for f in forwarders}, clock))
        forwarding = Forwarding(forwarders)
        self._receiver.forward = self._remote_write.forward = forwarding.enqueue
        return forwarding

    def build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=int(self.settings.limits.max_request_bytes), middlewares=[error_middleware]
        )

        async def healthz(request: web.Request) -> web.Response:
            detail: dict[str, object] = {"status": "ok", "devices": len(self.store.devices)}
            if self.forwarding is not None:
                detail["forward"] = {
                    f.name: {"queued_samples": f.spool.totals.samples, "last_error": f.last_error}
                    for f in self.forwarding.forwarders
                }
            return web.json_response(detail)

        app.router.add_post("/api/v1/batches", self._receiver.handle)
        app.router.add_post("/api/v1/write", self._remote_write.handle)
        app.router.add_get("/api/v1/export", self._exporter.handle)
        app.router.add_post("/api/v1/alerts", self._alerts.handle)
        app.router.add_get("/api/v1/alerts", AlertLister(self.store).handle)
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/api/v1/fleet", self._fleet.api)
        app.router.add_get("/fleet", self._fleet.page)
        return app

    async def __aenter__(self) -> Collector:
        await self.store.open()
        await import_config_devices(self.store, self.settings.devices, int(self._clock() * 1000))
        if self.forwarding is not None:
            await self.forwarding.start()
        self._runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=10)
        await self._runner.setup()
        if self.forwarder.enabled:
            self._tasks.append(asyncio.create_task(self.forwarder.run(), name="alert-forwarder"))
        if self.mqtt is not None:
            self._tasks.append(asyncio.create_task(self.mqtt.run(), name="mqtt-alerts"))
        site = web.TCPSite(self._runner, self.settings.listen.host, self.settings.listen.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("collector listening on %s:%s", self.settings.listen.host, self.port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.forwarding is not None:
            await self.forwarding.stop()
        await self.store.close()


async def serve(settings: CollectorSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Collector(settings):
        systemd.notify("READY=1")
        await stop.wait()
        log.info("stopping")
        systemd.notify("STOPPING=1")
    log.info("stopped")
