"""The agent's own sources, each only when configured: scrape targets (and the agent's own registry),
host and GPU metrics, the model's identity, and the proxy in front of the inference server.

An async context manager: entering starts them, leaving stops them (proxy first, then the scraper,
then host metrics), so their samples stop arriving before the buffer's last commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from agent.config import AgentSettings
from agent.ingest.model import ModelInfo
from agent.ingest.scrape import Scraper, Target
from agent.ingest.sink import SampleSink
from backhaul.lifecycle import Jobs

if TYPE_CHECKING:
    # Imported where they are built: the host sampler (psutil) and the proxy cost memory the agent
    # should not pay for a part that is not configured.
    from agent.ingest.host import HostSampler
    from agent.proxy.link import LinkGate
    from agent.proxy.server import InferenceProxy


def scrape_targets(settings: AgentSettings) -> list[Target]:
    """The ``[[scrape.targets]]`` (and the inference server's metrics_url) as the scraper runs them."""
    sc = settings.scrape
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
    inf = settings.inference
    if inf.metrics_url is not None:
        targets.append(
            Target("inference", str(inf.metrics_url), sc.interval.total_seconds(), sc.timeout.total_seconds())
        )
    for t in targets:
        t.timeout = min(t.timeout, t.interval)  # a scrape never outlives its interval
    return targets


class Sources:
    """Args: the settings; the sink samples go to; the agent's registry; its jobs; wall clock (s);
    ``local_down``: why the supervised inference server cannot serve now (None: it can), for the
    proxy's cloud fallback; ``link``: the metered link escalated requests count against."""

    def __init__(
        self,
        settings: AgentSettings,
        sink: SampleSink,
        registry: CollectorRegistry,
        jobs: Jobs,
        clock: Callable[[], float] = time.time,
        local_down: Callable[[], str | None] | None = None,
        link: LinkGate | None = None,
    ) -> None:
        s = settings
        sc = s.scrape
        targets = scrape_targets(s)
        inf = s.inference
        self.scraper = Scraper(
            targets,
            sink,
            registry,
            jobs,
            int(sc.max_body_bytes),
            self_registry=registry,
            self_interval=sc.self_interval.total_seconds(),
            self_labels={"job": "backhaul-agent", "instance": s.device_id},
            clock=clock,
        )
        self.host: HostSampler | None = None
        if s.host.enabled:
            from agent.ingest.host import HostSampler

            self.host = HostSampler(
                sink,
                s.buffer.path.parent,
                s.host.interval.total_seconds(),
                {"job": "host", "instance": s.device_id},
                s.host.nvidia_smi,
                s.host.tegrastats,
                clock,
            )
        self.proxy: InferenceProxy | None = None
        if s.proxy.enabled:
            from agent.proxy.server import InferenceProxy

            self.proxy = InferenceProxy(s.proxy, registry, local_down, link)
        self.model: ModelInfo | None = None
        if inf.model_name or inf.model_version or inf.model_path:
            self.model = ModelInfo(registry, inf.model_name, inf.model_version, inf.model_path)
        self._stack = AsyncExitStack()

    def scrape_errors(self) -> dict[str, str]:
        return {url: err for url, err in self.scraper.last_error.items() if err}

    async def __aenter__(self) -> Sources:
        stack = self._stack
        try:
            if self.model is not None:
                stack.push_async_callback(_cancel, asyncio.create_task(self.model.compute_digest(), name="model"))
            if self.host is not None:
                stack.push_async_callback(_cancel, asyncio.create_task(self.host.run(), name="host metrics"))
            await stack.enter_async_context(self.scraper)
            if self.proxy is not None:
                await stack.enter_async_context(self.proxy)
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
