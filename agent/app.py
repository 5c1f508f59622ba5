"""Wires the agent's components together and owns their lifecycle.

Start: open the buffer -> start staging, uploader and maintenance -> listen -> READY=1.
SIGTERM: STOPPING=1 -> stop listening (in-flight requests finish) -> commit what was accepted ->
stop uploading (a sealed batch stays sealed for next time) -> close the database; all within
``shutdown_grace``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from agent.alerts.lane import AlertLane
from agent.alerts.setup import build_lane
from agent.buffer.staging import Staging
from agent.buffer.store import BufferStore
from agent.config import AgentSettings
from agent.http import build_app
from agent.ingest.host import HostSampler
from agent.ingest.model import ModelInfo
from agent.ingest.remote_write import RemoteWriteReceiver
from agent.ingest.scrape import Scraper, Target
from agent.ingest.sink import SampleSink
from agent.metrics import AgentMetrics
from agent.proxy import InferenceProxy
from agent.supervisor import Supervisor
from agent.uplink.remote_write import RemoteWriteTransport
from agent.uplink.transport import HttpTransport, Transport
from agent.uplink.uploader import Uploader
from backhaul import __version__, systemd
from backhaul.sqlite import StoreError
from backhaul.wire.series import sample_count

log = logging.getLogger(__name__)


class Agent:
    """The running agent, as an async context manager.

    Args:
        settings: the whole configuration.
        registry: metrics registry (a fresh one per agent by default).
        transport: upload transport (HTTP to ``uplink.url`` by default; None if no URL is set).
        clock: wall clock in seconds.
    """

    def __init__(
        self,
        settings: AgentSettings,
        registry: CollectorRegistry | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = AgentMetrics(self.registry)
        self._clock = clock
        b = settings.buffer
        self.store = BufferStore(
            b.path,
            int(b.budget_bytes),
            b.synchronous,
            b.zstd_level,
            b.compact_target_samples,
            min_free_bytes=int(b.min_free_bytes),
        )
        if transport is None and settings.uplink.url is not None:
            transport = self._transport_for(settings)
        self._transport = transport
        self.uploader: Uploader | None = None
        if transport is not None:
            self.uploader = Uploader(settings.uplink, settings.device_id, self.store, transport, self.metrics, clock)
        self.staging = Staging(
            self.store,
            self.metrics,
            b.commit_delay_ms / 1000,
            b.max_pending_samples,
            on_commit=self.uploader.notify_data if self.uploader else lambda: None,
            clock=clock,
        )
        self.alerts: AlertLane | None = None
        if settings.alerts.enabled:
            uploader = self.uploader
            self.alerts = build_lane(
                settings,
                self.store,
                lambda: uploader.last_error if uploader is not None else None,
                self.metrics,
                self.registry,
                clock,
                lambda series: self.staging.submit(series, sample_count(series), 0),
            )
        observe = self.alerts.engine.observe if self.alerts is not None else None
        self.receiver = RemoteWriteReceiver(self.staging, settings.ingest, b, self.metrics, clock, observe)
        self._tasks: list[asyncio.Task[None]] = []
        self._scheduler = AsyncIOScheduler()
        self._build_sources()
        self._maintenance: asyncio.Task[object] | None = None
        self._runner: web.AppRunner | None = None
        self._started = False
        self._stopping = False
        self.port: int | None = None

    @staticmethod
    def _transport_for(settings: AgentSettings) -> Transport:
        u = settings.uplink
        token, timeout = u.token.get_secret_value(), u.timeout.total_seconds()
        if u.protocol == "remote_write":
            return RemoteWriteTransport(
                str(u.url), token, timeout, settings.device_id, u.device_label, u.max_samples_per_request
            )
        return HttpTransport(str(u.url), token, timeout, settings.buffer.zstd_level)

    def _build_sources(self) -> None:
        """Scraper, host sampler, supervisor, proxy and model info, each only when configured."""
        s = self.settings
        self.sink = SampleSink(
            self.staging,
            self.metrics,
            self.registry,
            s.buffer.max_age.total_seconds(),
            s.ingest.max_future.total_seconds(),
            self._clock,
            self.alerts.engine.observe if self.alerts is not None else None,
        )
        sc = s.scrape
        targets = [
            Target(
                t.job,
                str(t.url),
                (t.interval or sc.interval).total_seconds(),
                (t.timeout or sc.timeout).total_seconds(),
                dict(t.labels),
            )
            for t in sc.targets
        ]
        inf = s.inference
        if inf.metrics_url is not None:
            targets.append(
                Target("inference", str(inf.metrics_url), sc.interval.total_seconds(), sc.timeout.total_seconds())
            )
        for t in targets:
            t.timeout = min(t.timeout, t.interval)  # a scrape never outlives its interval
        self.scraper = Scraper(
            targets,
            self.sink,
            self.registry,
            self._scheduler,
            int(sc.max_body_bytes),
            self_registry=self.registry,
            self_interval=sc.self_interval.total_seconds(),
            self_labels={"job": "backhaul-agent", "instance": s.device_id},
            clock=self._clock,
        )
        self.host: HostSampler | None = None
        self._host_task: asyncio.Task[None] | None = None
        if s.host.enabled:
            self.host = HostSampler(
                self.sink,
                s.buffer.path.parent,
                s.host.interval.total_seconds(),
                {"job": "host", "instance": s.device_id},
                s.host.nvidia_smi,
                s.host.tegrastats,
                self._clock,
            )
        self.supervisor = Supervisor(inf, self.registry) if inf.command else None
        if self.supervisor is not None and self.alerts is not None:
            # The built-in InferenceCrashLoop check reads the supervisor's gauge; evaluate at once.
            lane = self.alerts
            self.supervisor.on_crash_loop = lambda _event: lane.request_evaluation()
        self.proxy: InferenceProxy | None = None
        if s.proxy.enabled:
            # The cloud fallback's "down" trigger reads the supervisor; the link is unmetered until
            # the uplink's budget (issue 13) can be passed as the proxy's LinkGate.
            local_down = self.supervisor.unavailable if self.supervisor is not None else None
            self.proxy = InferenceProxy(s.proxy, self.registry, local_down=local_down)
        self.model: ModelInfo | None = None
        if inf.model_name or inf.model_version or inf.model_path:
            self.model = ModelInfo(self.registry, inf.model_name, inf.model_version, inf.model_path)

    async def _start_sources(self) -> None:
        if self.supervisor is not None:
            self.supervisor.start()
        if self.model is not None:
            self._tasks.append(asyncio.create_task(self.model.compute_digest(), name="model-digest"))
        if self.host is not None:
            self._host_task = asyncio.create_task(self.host.run(), name="host-metrics")
        await self.scraper.start()
        if self.proxy is not None:
            await self.proxy.start()

    async def _stop_sources(self) -> None:
        """Proxy, scraper and host metrics (the supervised child is stopped by the caller)."""
        if self.proxy is not None:
            await self.proxy.stop()
        await self.scraper.stop()
        if self._host_task is not None:
            self._host_task.cancel()
            await asyncio.gather(self._host_task, return_exceptions=True)

    async def __aenter__(self) -> Agent:
        if self._started:
            raise RuntimeError("an Agent can be started once")
        self._started = True
        await self.store.call(self.store.open)
        self.metrics.watch_buffer(lambda: self.store.totals, self.store.budget_bytes, self._clock)
        self.metrics.watch_disk(self.store.path.parent, self.store.min_free_bytes)
        self.metrics.info.info(
            {"version": __version__, "device": self.settings.device_id, "buffer_id": self.store.buffer_id}
        )
        self._tasks.append(asyncio.create_task(self.staging.run(), name="staging"))
        if self.alerts is not None:
            # Its own queue file, thread and sender: alerts never wait behind the bulk upload.
            await self.alerts.__aenter__()
            every = self.settings.alerts.eval_interval.total_seconds()
            self._scheduler.add_job(self.alerts.evaluate, "interval", seconds=every, max_instances=1, coalesce=True)
        if self.uploader is not None:
            self._tasks.append(asyncio.create_task(self.uploader.run(), name="uploader"))
        self._schedule_maintenance()
        try:
            await self._start_sources()
            app = build_app(self.receiver, self.registry, self.health, int(self.settings.ingest.max_request_bytes))
            self._runner = web.AppRunner(
                app, access_log=None, shutdown_timeout=self.settings.shutdown_grace.total_seconds() / 2
            )
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.settings.listen.host, self.settings.listen.port)
            await site.start()
        except BaseException:
            # A listener that cannot bind (port taken) must not leave the inference process behind.
            await self._stop_sources()
            if self.supervisor is not None:
                await self.supervisor.stop()
            raise
        self.port = self._runner.addresses[0][1]
        log.info("agent %s listening on %s:%s", self.settings.device_id, self.settings.listen.host, self.port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await asyncio.wait_for(self._shutdown(), self.settings.shutdown_grace.total_seconds())
        except TimeoutError:
            log.error("shutdown took longer than %s; exiting anyway", self.settings.shutdown_grace)
        finally:
            if self.supervisor is not None:
                self.supervisor.kill_now()  # shutdown ran out of time: never leave the child behind
            await self.store.call(self.store.close)
            self.store.worker.shutdown()

    async def _shutdown(self) -> None:
        self._stopping = True
        # The child gets its SIGTERM at once and its grace runs alongside the rest of the shutdown.
        child = asyncio.create_task(self.supervisor.stop()) if self.supervisor is not None else None
        await self._stop_sources()
        if self._runner is not None:
            await self._runner.cleanup()  # stop listening; requests in flight finish
        await self.staging.drain()
        if self._scheduler.running:
            # Let a maintenance pass in progress finish (it runs on the database thread anyway)
            # rather than have the scheduler cancel it and log the cancellation as an error.
            self._scheduler.pause()
            if self._maintenance is not None:
                await asyncio.gather(self._maintenance, return_exceptions=True)
            self._scheduler.shutdown(wait=False)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.alerts is not None:
            await self.alerts.__aexit__(None, None, None)  # marks the stop as clean in the alert queue
        if self._transport is not None:
            await self._transport.close()
        if child is not None:
            await child

    def _schedule_maintenance(self) -> None:
        interval = self.settings.buffer.maintenance_interval.total_seconds()
        self._scheduler.add_job(self._maintain, "interval", seconds=interval, max_instances=1, coalesce=True)
        self._scheduler.start()
        # Expire once right away: a device off for weeks should not upload stale data first.
        self._tasks.append(asyncio.create_task(self._expire(), name="first-expiry"))

    async def _maintain(self) -> None:
        self._maintenance = asyncio.current_task()
        try:
            await self._expire()
            await self._compact()
        finally:
            self._maintenance = None

    async def _expire(self) -> None:
        cutoff = int((self._clock() - self.settings.buffer.max_age.total_seconds()) * 1000)
        try:
            losses = await self.store.call(self.store.expire, cutoff)
        except StoreError as exc:
            log.error("expiry failed: %s", exc)
            return
        if losses.expired:
            self.metrics.expired.inc(losses.expired)
            log.warning("expired %d samples older than %s", losses.expired, self.settings.buffer.max_age)
            if self.uploader is not None:
                self.uploader.notify_data()

    async def _compact(self) -> None:
        # One merge per call on the database thread: a group commit queued meanwhile waits for one
        # merge at most, not for a whole backlog of small chunks to be compacted. Bounded by what was
        # there at the start, so that chunks committed meanwhile wait for the next pass.
        budget = self.store.totals.chunks
        while not self._stopping and budget > 0:
            try:
                merged = await self.store.call(self.store.compact, int(self._clock() * 1000), 2000, 1)
            except StoreError as exc:
                log.error("compaction failed: %s", exc)
                return
            if not merged:
                return
            budget -= merged
            self.metrics.compacted.inc(merged)

    def health(self) -> tuple[bool, dict[str, Any]]:
        t = self.store.totals
        detail: dict[str, Any] = {
            "status": "stopping" if self._stopping else "ok",
            "device": self.settings.device_id,
            "buffer": {
                "chunks": t.chunks,
                "bytes": t.bytes,
                "samples": t.samples,
                "budget_bytes": self.store.budget_bytes,
            },
        }
        if self.uploader is not None:
            detail["uplink"] = {"last_error": self.uploader.last_error}
        if self.supervisor is not None:
            detail["inference"] = self.supervisor.describe()
        failing = {url: err for url, err in self.scraper.last_error.items() if err}
        if failing:
            detail["scrape_errors"] = failing
        if self.alerts is not None:
            detail["alerts"] = self.alerts.health()
        return not self._stopping, detail

    async def watchdog(self, interval: float) -> None:
        """Ping systemd's watchdog only while the event loop *and* the database thread answer."""
        while True:
            try:
                await asyncio.wait_for(self.store.call(self.store.ping), timeout=interval)
            except (TimeoutError, StoreError) as exc:
                log.error("database thread not answering (%s); withholding the watchdog ping", exc)
            else:
                systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


async def serve(settings: AgentSettings) -> None:
    """Run the agent until SIGTERM or SIGINT (the ``run`` command)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Agent(settings) as agent:
        systemd.notify("READY=1\nSTATUS=buffering")
        interval = systemd.watchdog_interval()
        dog = asyncio.create_task(agent.watchdog(interval)) if interval else None
        await stop.wait()
        log.info("stopping")
        systemd.notify("STOPPING=1")
        if dog is not None:
            dog.cancel()
    log.info("stopped")
