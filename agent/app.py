"""Wires the agent's components together and owns their lifecycle.

Start (each step through one :class:`~backhaul.lifecycle.Lifecycle`, so a failure unwinds all that
started): the buffer -> the clock keeper (its eras are in the buffer) -> the background tasks
(staging, uploader, clock) -> the alert lane -> the scheduler
(maintenance, alert evaluation, scrapes) -> the supervised inference server -> the sources -> the
listener -> READY=1.
SIGTERM (the same steps in reverse, within ``shutdown_grace``): STOPPING=1 -> the inference server
gets its SIGTERM at once (its grace runs alongside) -> stop listening (requests in flight finish) ->
sources -> scheduler (a maintenance pass in progress finishes) -> commit what was accepted -> the
alert lane (marks the stop as clean) -> cancel the tasks (a sealed batch stays sealed for next time)
-> close the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from agent import reload
from agent.alerts.builtin import Readings
from agent.alerts.lane import AlertLane
from agent.alerts.setup import build_lane
from agent.buffer.staging import Staging
from agent.buffer.store import BufferStore
from agent.clock import ingest as clock_ingest
from agent.clock.clocks import Clocks, read_boot_id
from agent.clock.keeper import TimeKeeper
from agent.config import AgentSettings
from agent.http import build_app
from agent.ingest.remote_write import RemoteWriteReceiver
from agent.ingest.sink import SampleSink
from agent.metrics import AgentMetrics
from agent.sources import Sources
from agent.status import AgentStatus, health
from agent.uplink.build import transports_for
from agent.uplink.links import Links
from agent.uplink.transport import Transport
from agent.uplink.uploader import Uploader
from backhaul import __version__, systemd
from backhaul.errors import StoreError
from backhaul.lifecycle import Jobs, Lifecycle, TaskGroup, watchdog
from backhaul.listener import Listener, ListenerMetrics
from backhaul.reload import ConfigReload
from backhaul.tls import ClientTls, keep_current

if TYPE_CHECKING:
    # Imported where it is built: the supervisor's psutil only for an agent that runs an inference server.
    from agent.supervisor import CrashLoop, Supervisor

log = logging.getLogger(__name__)

# A start that fails unwinds what it started within this long.
START_FAILURE_GRACE = 5.0


class Agent:
    """The running agent, as an async context manager.

    Args:
        settings: the whole configuration.
        registry: metrics registry (a fresh one per agent by default).
        transport: upload transport (HTTP to ``uplink.url`` by default; None if no URL is set).
        clock: wall clock in seconds.
        clocks: the clocks the clock keeper reads (default: ``clock``, CLOCK_BOOTTIME, the boot id).
        reload_from: loads the config again for a reload (SIGHUP); None: only TLS files are re-read.
    """

    def __init__(
        self,
        settings: AgentSettings,
        registry: CollectorRegistry | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        clocks: Clocks | None = None,
        reload_from: Callable[[], AgentSettings] | None = None,
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
        u = settings.uplink
        # One TLS holder for everything the agent sends to its uplink (batches, alerts, remote write).
        self.tls = ClientTls(u.ca_file, u.client_cert, u.client_key, u.server_name) if u.tls_configured else None
        # The links bulk uploads (and inference escalations) take, a transport each (a test's: one for all).
        self.links = Links(settings.uplink, clock)
        self.transports: dict[str, Transport] = {}
        if transport is None and settings.uplink.url is not None:
            self.transports = transports_for(settings, self.links, self.tls)
        elif transport is not None:
            self.transports = {link.name: transport for link in self.links.bulk()}
        self.jobs = Jobs(self.registry)
        self.timekeeper = TimeKeeper(
            settings.clock,
            self.store,
            self.metrics.clock,
            b.max_age.total_seconds(),
            settings.ingest.max_future.total_seconds(),
            clocks or Clocks(wall=clock, boot_id=lambda: read_boot_id(settings.clock.boot_id_file)),
            on_released=lambda: self.uploader.notify_data() if self.uploader else None,
            on_expired=self.metrics.buffer.expired.inc,
            on_backward_jump=lambda _jump: self.jobs.rewind(),
        )
        self.uploader: Uploader | None = None
        if self.transports:
            self.uploader = Uploader(
                settings.uplink,
                settings.device_id,
                self.store,
                self.transports,
                self.metrics.uplink,
                clock,
                link=self.links,
                time_keeper=self.timekeeper,
            )
        self.staging = Staging(
            self.store,
            self.metrics.buffer,
            b.commit_delay_ms / 1000,
            b.max_pending_samples,
            on_commit=self.uploader.notify_data if self.uploader else lambda: None,
            clock=clock,
            defer_for=b.source_commit_interval.total_seconds(),
            rider=self.timekeeper.recorder.rider(),
            defer_series=b.source_commit_max_series,
        )
        self.tasks = TaskGroup()
        inf = settings.inference
        self.supervisor: Supervisor | None = None
        if inf.command:
            from agent.supervisor import Supervisor

            self.supervisor = Supervisor(inf, self.registry, self._crash_loop)
        self.alerts: AlertLane | None = None
        if settings.alerts.enabled:
            self.alerts = build_lane(
                settings,
                self._readings(),
                self.metrics.alerts,
                clock,
                lambda series: clock_ingest.submit(self.timekeeper, self.staging, series),  # its own samples
                self.tls,
                self.links.alert_route,
            )
        observe = self.alerts.engine.observe if self.alerts is not None else None
        self.receiver = RemoteWriteReceiver(
            self.staging,
            settings.ingest,
            b,
            self.metrics.ingest,
            clock,
            observe,
            settings.uplink.device_label,
            self.timekeeper,
        )
        self.sink = SampleSink(
            self.staging,
            self.metrics.ingest,
            self.registry,
            b.max_age.total_seconds(),
            settings.ingest.max_future.total_seconds(),
            clock,
            observe,
            self.timekeeper,
        )
        local_down = self.supervisor.unavailable if self.supervisor is not None else None
        self.sources = Sources(settings, self.sink, self.registry, self.jobs, clock, local_down, self.links)
        self._lifecycle: Lifecycle | None = None
        self._started = False
        self._stopping = False
        self.port: int | None = None
        self.config = ConfigReload("agent", settings, reload_from, self.registry, clock=clock)
        reload.register(self.config, self)
        self.status = AgentStatus(self, clock)

    def _readings(self) -> Readings:
        """What the built-in alert checks read, as typed callables into the components."""
        store, uploader, supervisor, links = self.store, self.uploader, self.supervisor, self.links
        return Readings(
            buffer_bytes=lambda: store.totals.bytes,
            budget_bytes=store.budget_bytes,
            disk_path=store.path.parent,
            disk_floor=store.min_free_bytes,
            evicted_total=lambda: float(store.evicted_samples),
            upload_error=lambda: uploader.last_error if uploader is not None else None,
            clock_skew=self.timekeeper.skew_seconds,
            inference_crash_loop=(lambda: supervisor.in_crash_loop) if supervisor is not None else None,
            uplink_budget=links.budget_reading(lambda: uploader is not None and uploader.blocked == "budget"),
        )

    def _crash_loop(self, _event: CrashLoop) -> None:
        # The built-in InferenceCrashLoop check reads the supervisor's state: evaluate at once.
        if self.alerts is not None:
            self.alerts.request_evaluation()

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def proxy(self) -> Any:
        return self.sources.proxy

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def __aenter__(self) -> Agent:
        if self._started:
            raise RuntimeError("an Agent can be started once")
        self._started = True
        life = self._lifecycle = Lifecycle("agent")
        try:
            await self._start(life)
        except BaseException:
            self._stopping = True
            await life.stop(START_FAILURE_GRACE)
            raise
        log.info("agent %s listening on %s:%s", self.settings.device_id, self.settings.listen.host, self.port)
        return self

    async def _start(self, life: Lifecycle) -> None:
        s = self.settings
        await life.enter("buffer", self.store)
        await self.links.attach(self.store)
        await life.enter("clock", self.timekeeper)
        self.metrics.buffer.watch_buffer(lambda: self.store.totals, self.store.budget_bytes, self._clock)
        self.metrics.buffer.watch_disk(self.store.path.parent, self.store.min_free_bytes)
        self.metrics.info.info({"version": __version__, "device": s.device_id, "buffer_id": self.store.buffer_id})
        if self.uploader is not None:
            life.on_stop("uplink connections", self._close_transports)
        await life.enter("background tasks", self.tasks)
        self.tasks.spawn("staging", self.staging.run())
        self.tasks.spawn("clock", self.timekeeper.run())
        if self.alerts is not None:
            # Its own queue file, thread and sender: alerts never wait behind the bulk upload.
            await life.enter("alert lane", self.alerts)
        # Everything accepted so far is committed before the alert lane and the tasks stop.
        life.on_stop("staging", self.staging.drain)
        if self.uploader is not None:
            self.tasks.spawn("uploader", self.uploader.run())
        self.tasks.spawn("status", self.status.run())
        proxy = self.sources.proxy
        keep_current([self.tls, proxy.tls if proxy is not None else None], life, self.tasks)
        # Expire once right away: a device off for weeks should not upload stale data first.
        self.tasks.spawn("first expiry", self._expire(), forever=False)
        await life.enter("scheduler", self.jobs)
        self.jobs.add("maintenance", self._maintain, "interval", seconds=s.buffer.maintenance_interval.total_seconds())
        if self.alerts is not None:
            self.jobs.add(
                "alert evaluation", self.alerts.evaluate, "interval", seconds=s.alerts.eval_interval.total_seconds()
            )
        if self.supervisor is not None:
            await life.enter("inference process", self.supervisor)
        await life.enter("sources", self.sources)
        await self._listen(life)
        # Runs first at stop: the child's grace then runs alongside the rest of the shutdown.
        life.on_stop("stopping flag", self._begin_stop)

    async def _listen(self, life: Lifecycle) -> None:
        s = self.settings
        app = build_app(
            self.receiver, self.registry, self.health, int(s.ingest.max_request_bytes), self.status.snapshot
        )
        listener = Listener(
            app,
            s.listen.host,
            s.listen.port,
            s.listen,
            ListenerMetrics(self.registry, "backhaul"),
            "agent listener",
            shutdown_timeout=s.shutdown_grace.total_seconds() / 2,
        )
        await life.enter("listener", listener)
        self.port = listener.port

    def request_reload(self) -> None:
        """SIGHUP: re-read the config and apply what can change without a restart (agent/reload.py)."""
        if self._lifecycle is None or self._stopping:
            log.info("SIGHUP ignored: not running")
            return
        self.tasks.spawn("reload", self.reload(), forever=False)

    async def reload(self) -> bool:
        """One reload; True when the new config is in force (apart from what needs a restart)."""
        outcome = await self.config.reload(self._lifecycle)
        self.settings = self.config.current
        return outcome.ok

    async def _begin_stop(self) -> None:
        self._stopping = True
        if self.supervisor is not None:
            self.supervisor.begin_stop()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        life, self._lifecycle = self._lifecycle, None
        if life is None:
            return  # never started, or a failed start already unwound
        await life.stop(self.settings.shutdown_grace.total_seconds())

    async def _close_transports(self) -> None:
        if self.uploader is not None:
            for transport in {id(t): t for t in self.uploader.transports()}.values():
                await transport.close()

    # -- maintenance -------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        await self._expire()
        await self._compact()
        await self.links.flush()  # e.g. the proxy's escalated bytes

    async def _expire(self) -> None:
        # By the best estimate of true time: the buffer's timestamps are corrected ones.
        cutoff = int((self.timekeeper.true_now() - self.settings.buffer.max_age.total_seconds()) * 1000)
        try:
            losses = await self.store.call(self.store.expire, cutoff)
        except StoreError as exc:
            log.error("expiry failed: %s", exc)
            return
        if losses.expired:
            self.metrics.buffer.expired.inc(losses.expired)
            log.warning("expired %d samples older than %s", losses.expired, self.settings.buffer.max_age)
            if self.uploader is not None:
                self.uploader.notify_data()
        try:
            await self.timekeeper.expire_held()  # held samples, aged by CLOCK_BOOTTIME
        except StoreError as exc:
            log.error("expiry of held samples failed: %s", exc)

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
            self.metrics.buffer.compacted.inc(merged)

    # -- health ------------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """For /healthz (agent/status.py): healthy, and the detail."""
        return health(self)

    async def alive(self) -> bool:
        """For the watchdog: the event loop answers (we are here) and so does the database thread."""
        try:
            return await self.store.call(self.store.ping)
        except StoreError as exc:
            log.error("database thread not answering (%s); withholding the watchdog ping", exc)
            return False


async def serve(settings: AgentSettings, reload_from: Callable[[], AgentSettings] | None = None) -> None:
    """Run the agent until SIGTERM or SIGINT (the ``run`` command); SIGHUP reloads ``reload_from``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(settings, reload_from=reload_from)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    async with agent:
        systemd.notify("READY=1\nSTATUS=buffering")
        interval = systemd.watchdog_interval()
        dog = None
        if interval:
            dog = agent.tasks.spawn("watchdog", watchdog(interval, agent.alive, systemd.ping_watchdog))
        await stop.wait()
        log.info("stopping")
        systemd.notify("STOPPING=1")
        if dog is not None:
            dog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dog
    log.info("stopped")
