"""Wires the collector together and owns its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from backhaul import systemd
from backhaul.lifecycle import Lifecycle, TaskGroup
from backhaul.listener import Listener, ListenerMetrics
from backhaul.reload import ConfigReload
from backhaul.tls import ServerTls, keep_current
from backhaul.web import error_middleware
from collector import reload, web_security
from collector.alerts.listing import AlertLister
from collector.alerts.mqtt import MqttSubscriber
from collector.alerts.receiver import AlertReceiver
from collector.config import CollectorSettings
from collector.endpoint import decode_budget
from collector.export import Exporter
from collector.fleet import Fleet
from collector.forward.alertmanager import AlertForwarder
from collector.forward.metrics import ForwardMetrics, QueueCollector
from collector.forward.remote_write import Forwarder, Forwarding
from collector.forward.spool import Spool
from collector.ingest import BatchReceiver
from collector.metrics import CollectorMetrics, DeviceCollector
from collector.read_auth import ReadAuth
from collector.registry import import_config_devices
from collector.remote_write import RemoteWriteReceiver
from collector.store import make_store
from collector.store.retention import Retention

log = logging.getLogger(__name__)

# A start that fails unwinds what it started within this long; a stop takes at most this long
# (below the unit's TimeoutStopSec).
START_FAILURE_GRACE = 5.0
SHUTDOWN_GRACE = 20.0


class Collector:
    """The running collector, as an async context manager.

    Args:
        settings: the whole configuration.
        registry: metrics registry (a fresh one by default).
        clock: wall clock in seconds.
        reload_from: loads the config again for a reload (SIGHUP); None: only TLS files are re-read.
    """

    def __init__(
        self,
        settings: CollectorSettings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        reload_from: Callable[[], CollectorSettings] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = CollectorMetrics(self.registry)
        self.store = make_store(settings.store, settings.device_label)
        self._clock = clock
        self.registry.register(DeviceCollector(lambda: self.store.devices))
        self.forwarding = self._forwarding(clock)
        forward = self.forwarding.enqueue if self.forwarding is not None else None
        budget = decode_budget(settings)  # one for both: decoding memory is bounded across endpoints
        self._receiver = BatchReceiver(settings, self.store, self.metrics, clock, forward, budget)
        self._remote_write = RemoteWriteReceiver(settings, self.store, self.metrics, clock, forward, budget)
        self._exporter = Exporter(self.store, settings)
        self.retention = Retention(self.store, settings.store, self.registry, clock)
        self._fleet = Fleet(settings, self.store, clock)
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
                clamped=self.metrics.alert_times_clamped,
            )
        listen = settings.listen
        self.tls: ServerTls | None = None
        if listen.tls_cert is not None and listen.tls_key is not None:
            self.tls = ServerTls(listen.tls_cert, listen.tls_key, listen.client_ca)
        self.read_auth = ReadAuth(settings.read)
        self.tasks = TaskGroup()
        self._lifecycle: Lifecycle | None = None
        self._started = False
        self.port: int | None = None
        self.config = ConfigReload(
            "collector", settings, reload_from, self.registry, lambda new: reload.check(self, new), clock
        )
        reload.register(self.config, self)

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
        return Forwarding(forwarders)

    def build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=int(self.settings.limits.max_request_bytes), middlewares=[error_middleware]
        )
        app.on_response_prepare.append(web_security.add_headers)
        read = self.read_auth.protect

        async def healthz(request: web.Request) -> web.Response:
            dead = dict(self.tasks.dead)
            if self.forwarding is not None:
                dead.update(self.forwarding.dead())
            detail: dict[str, object] = {"status": "degraded" if dead else "ok", "devices": len(self.store.devices)}
            if dead:
                detail["dead"] = dead
            if self.forwarding is not None:
                detail["forward"] = {
                    f.name: {"queued_samples": f.spool.totals.samples, "last_error": f.last_error}
                    for f in self.forwarding.forwarders
                }
            return web.json_response(detail, status=503 if dead else 200)

        app.router.add_post("/api/v1/batches", self._receiver.handle)
        app.router.add_post("/api/v1/write", self._remote_write.handle)
        # Everything below but /healthz and the device endpoints reads every device's data: operators only.
        app.router.add_get("/api/v1/export", read(self._exporter.handle))
        app.router.add_post("/api/v1/alerts", self._alerts.handle)
        app.router.add_get("/api/v1/alerts", read(AlertLister(self.store).handle))
        app.router.add_get("/metrics", read(make_aiohttp_handler(self.registry)))
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/api/v1/fleet", read(self._fleet.api))
        app.router.add_get("/fleet", read(web_security.page(self._fleet.page), page=True))
        app.router.add_get("/api/v1/fleet/{device}", read(self._fleet.device_api))
        app.router.add_get("/fleet/{device}", read(web_security.page(self._fleet.page), page=True))
        # The same, below /fleet/: a browser logged in at /fleet/DEVICE sends its login there unasked.
        app.router.add_get("/fleet/api/{device}", read(self._fleet.device_api))
        return app

    async def __aenter__(self) -> Collector:
        if self._started:
            raise RuntimeError("a Collector can be started once")
        self._started = True
        life = self._lifecycle = Lifecycle("collector")
        try:
            await self._start(life)
        except BaseException:
            await life.stop(START_FAILURE_GRACE)
            raise
        scheme = "https" if self.tls is not None else "http"
        mtls = " (device endpoints require a client certificate)" if self.settings.listen.client_ca else ""
        log.info("collector listening on %s://%s:%s%s", scheme, self.settings.listen.host, self.port, mtls)
        self.read_auth.log_start()
        return self

    async def _start(self, life: Lifecycle) -> None:
        await life.enter("store", self._store_resource())
        await import_config_devices(self.store, self.settings.devices, int(self._clock() * 1000))
        await self.read_auth.refuse_device_tokens(self.store)
        if self.forwarding is not None:
            await life.enter("forwarding", self.forwarding)
        await life.enter("background tasks", self.tasks)
        self.tasks.spawn("store retention", self.retention.run())
        if self.forwarder.enabled:
            self.tasks.spawn("alert forwarder", self.forwarder.run())
        if self.mqtt is not None:
            self.tasks.spawn("mqtt alerts", self.mqtt.run())
        outgoing = [f.tls for f in self.forwarding.forwarders] if self.forwarding is not None else []
        keep_current([self.tls, *outgoing], life, self.tasks)
        listen = self.settings.listen
        listener = Listener(
            self.build_app(),
            listen.host,
            listen.port,
            listen,
            ListenerMetrics(self.registry, "backhaul_collector"),
            "collector listener",
            self.tls,
            shutdown_timeout=10,
        )
        await life.enter("listener", listener)
        self.port = listener.port

    @contextlib.asynccontextmanager
    async def _store_resource(self) -> AsyncIterator[None]:
        await self.store.open()
        try:
            yield
        finally:
            await self.store.close()

    def request_reload(self) -> None:
        """SIGHUP: re-read the config and apply what can change without a restart (collector/reload.py)."""
        if self._lifecycle is None:
            log.info("SIGHUP ignored: not running")
            return
        self.tasks.spawn("reload", self.reload(), forever=False)

    async def reload(self) -> bool:
        """One reload; True when the new config is in force (apart from what needs a restart)."""
        outcome = await self.config.reload(self._lifecycle)
        if self.forwarding is not None:  # targets are added or removed by a restart only
            running = [f.target for f in self.forwarding.forwarders]
            self.config.current = self.config.current.model_copy(update={"forward": running})
        self.settings = self.config.current
        return outcome.ok

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        life, self._lifecycle = self._lifecycle, None
        if life is not None:
            await life.stop(SHUTDOWN_GRACE)


async def serve(settings: CollectorSettings, reload_from: Callable[[], CollectorSettings] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    collector = Collector(settings, reload_from=reload_from)
    loop.add_signal_handler(signal.SIGHUP, collector.request_reload)
    async with collector:
        systemd.notify("READY=1")
        await stop.wait()
        log.info("stopping")
        systemd.notify("STOPPING=1")
    log.info("stopped")
