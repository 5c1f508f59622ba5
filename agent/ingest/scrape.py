"""Scraping: /metrics pages (Prometheus protobuf, text 0.0.4, OpenMetrics) and the agent's registry, into the buffer.

The protobuf exposition format is asked for first, since it is the one that carries native histograms
(``backhaul.wire.exposition``); a target that does not offer it answers in text. Native histograms
and each family's metadata (type, help, unit) are kept (metadata committed when new or changed).

Each target is an APScheduler interval job with ``max_instances=1`` and coalescing, and each scrape
has its own timeout, so a slow or dead target skips its own missed runs and never delays another.
Like Prometheus, every sample gets the target's ``job`` and ``instance`` labels (a scraped label of
the same name is kept as ``exported_<name>``) plus the target's configured labels, and every scrape
adds ``up``, ``scrape_duration_seconds`` and ``scrape_samples_scraped``. Timestamps in the page are
kept; samples without one get the scrape's start time. Parsing is prometheus_client's, off the event
loop (a node_exporter page takes tens of milliseconds of pure Python); a text page shaped like the
target's last one has only its numbers read (agent/ingest/textpage.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agent.ingest.sink import SampleSink
from agent.ingest.textpage import TextReader, families_to_series, text_metadata
from backhaul.errors import ScrapeError
from backhaul.lifecycle import Jobs
from backhaul.wire import WireError, exposition
from backhaul.wire.exposition import Page
from backhaul.wire.series import Labels, SeriesMap

log = logging.getLogger(__name__)

# Protobuf first (native histograms); then text, since prometheus_client's text parser is the faster
# and more forgiving of the two text parsers.
ACCEPT = (
    f"{exposition.MEDIA_TYPE};q=1,text/plain;version=0.0.4;q=0.5,"
    "application/openmetrics-text;version=1.0.0;q=0.3,*/*;q=0.1"
)


@dataclass
class Target:
    """A scrape target as the scraper runs it.

    Args:
        job: the ``job`` label.
        url: the page to fetch.
        interval: seconds between scrapes.
        timeout: seconds allowed for one scrape (fetch and parse).
        labels: extra labels for every sample (applied after job and instance).
    """

    job: str
    url: str
    interval: float
    timeout: float
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def instance(self) -> str:
        return urlsplit(self.url).netloc

    def base_labels(self) -> dict[str, str]:
        return {"job": self.job, "instance": self.instance, **self.labels}


def parse_page(text: str, content_type: str, base: dict[str, str], default_ms: int) -> SeriesMap:
    """A /metrics page as a ``SeriesMap``; raises :class:`ScrapeError` when it does not parse."""
    parser = parse_openmetrics if content_type.startswith("application/openmetrics-text") else parse_text
    try:
        return families_to_series(parser(text), base, default_ms)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ScrapeError(f"unparsable {content_type or 'page'}: {exc}") from exc


def parse_any(
    body: bytes, content_type: str, base: dict[str, str], default_ms: int, reader: TextReader | None = None
) -> Page:
    """A scraped page in any of the three formats; :class:`ScrapeError` when it does not parse.
    ``reader``: the target's, to read a text page whose shape held since the last one quickly."""
    if exposition.is_protobuf(content_type):
        try:
            return exposition.parse(body, base, default_ms)
        except WireError as exc:
            raise ScrapeError(f"unparsable protobuf page: {exc}") from exc
    text = body.decode("utf-8", errors="replace")
    openmetrics = content_type.startswith("application/openmetrics-text")
    parser = parse_openmetrics if openmetrics else parse_text
    try:
        if reader is not None and not openmetrics:
            series, metadata = reader.read(text, base, default_ms)
            return Page(series=series, metadata=metadata)
        families = list(parser(text))
        return Page(series=families_to_series(families, base, default_ms), metadata=text_metadata(families))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ScrapeError(f"unparsable {content_type or 'page'}: {exc}") from exc


def _report(base: dict[str, str], ms: int, up: float, duration: float, scraped: int) -> SeriesMap:
    """The synthetic series Prometheus adds to every scrape."""

    def labels(name: str) -> Labels:
        return tuple(sorted({"__name__": name, **base}.items()))

    return {
        labels("up"): ([ms], [up]),
        labels("scrape_duration_seconds"): ([ms], [duration]),
        labels("scrape_samples_scraped"): ([ms], [float(scraped)]),
    }


class Scraper:
    """Scrapes every target on its own schedule and commits the samples.

    Args:
        targets: what to scrape.
        sink: where samples go.
        registry: the agent's registry (scrape counters and per-target ``up`` for its /metrics).
        jobs: the agent's scheduled jobs (started by the agent).
        max_body_bytes: a bigger page fails the scrape.
        self_registry: when given, this registry itself is "scraped" every ``self_interval`` seconds.
        self_labels: job and instance labels for the self-scrape.
        clock: wall clock in seconds.
    """

    def __init__(
        self,
        targets: list[Target],
        sink: SampleSink,
        registry: CollectorRegistry,
        jobs: Jobs,
        max_body_bytes: int = 16 * 1024**2,
        self_registry: CollectorRegistry | None = None,
        self_interval: float = 0.0,
        self_labels: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.targets = targets
        self._sink = sink
        self._jobs_owner = jobs
        self._max_body = max_body_bytes
        self._self_registry = self_registry
        self._self_interval = self_interval
        self._self_labels = self_labels or {"job": "backhaul-agent", "instance": "localhost"}
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._jobs: list[Any] = []
        self._target_jobs: dict[str, Any] = {}  # url -> its job
        self._running: set[asyncio.Task[Any]] = set()
        self.scrapes = Counter(
            "backhaul_scrapes", "Scrapes by job and outcome (ok, failed)", ["job", "outcome"], registry=registry
        )
        self.target_up = Gauge(
            "backhaul_scrape_target_up",
            "1 if the target's last scrape succeeded",
            ["job", "instance"],
            registry=registry,
        )
        self.last_error: dict[str, str] = {}
        self._readers: dict[str, TextReader] = {}  # url -> the last text page's shape

    async def start(self) -> None:
        """Open the HTTP session and schedule every target (first scrapes within a second)."""
        self._session = aiohttp.ClientSession(headers={"Accept": ACCEPT, "User-Agent": "backhaul-agent"})
        now = datetime.now().astimezone()
        self._schedule(self.targets)
        if self._self_registry is not None and self._self_interval > 0:
            self._jobs.append(
                self._jobs_owner.add(
                    "self-scrape",
                    self._run_self,
                    "interval",
                    seconds=self._self_interval,
                    next_run_time=now + timedelta(seconds=0.5),
                )
            )

    def _schedule(self, targets: list[Target]) -> None:
        now = datetime.now().astimezone()
        for i, target in enumerate(targets):
            # Spread the first scrapes a little so targets sharing an interval do not all fire at once.
            first = now + timedelta(seconds=0.1 + (i % 10) * 0.05)
            self._target_jobs[target.url] = self._jobs_owner.add(
                f"scrape {target.job} {target.url}",
                self._run,
                "interval",
                args=(target,),
                seconds=target.interval,
                next_run_time=first,
            )

    def replace_targets(self, targets: list[Target]) -> None:
        """A reload: scrape ``targets`` from now on. A target that did not change keeps its schedule;
        a scrape in flight of a removed one finishes; a new or changed one is scraped within a second."""
        keep = {t.url: t for t in self.targets}
        fresh = [t for t in targets if keep.get(t.url) != t]
        wanted = {t.url for t in targets}
        for url in [u for u in self._target_jobs if u not in wanted or u in {t.url for t in fresh}]:
            job = self._target_jobs.pop(url)
            with contextlib.suppress(LookupError):
                job.remove()
            if url not in wanted:
                self.last_error.pop(url, None)
                self._readers.pop(url, None)
        self.targets = list(targets)
        if self._session is not None:  # started: else start() schedules them
            self._schedule(fresh)

    async def __aenter__(self) -> Scraper:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Unschedule, let scrapes in flight finish their commit or cancel them after a second, close."""
        for job in [*self._jobs, *self._target_jobs.values()]:
            try:
                job.remove()
            except LookupError:  # the scheduler is already shut down
                pass
        self._jobs.clear()
        self._target_jobs.clear()
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, target: Target) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            page = await self.scrape_page(target)
            await self._sink.commit(f"scrape:{target.job}", page.series, page.histograms, page.metadata)
        finally:
            self._running.discard(task)

    async def _run_self(self) -> None:
        assert self._self_registry is not None
        series = families_to_series(self._self_registry.collect(), self._self_labels, int(self._clock() * 1000))
        await self._sink.commit("self", series)

    async def scrape(self, target: Target) -> SeriesMap:
        """One scrape of ``target``: its float samples (see :meth:`scrape_page`)."""
        return (await self.scrape_page(target)).series

    async def scrape_page(self, target: Target) -> Page:
        """One scrape of ``target``: its samples plus up/scrape_duration_seconds/scrape_samples_scraped,
        native histograms and metadata."""
        started_wall = self._clock()
        started = time.perf_counter()
        ms = int(started_wall * 1000)
        base = target.base_labels()
        try:
            async with asyncio.timeout(target.timeout):
                body, content_type = await self._fetch(target)
                reader = self._readers.setdefault(target.url, TextReader())
                page = await asyncio.to_thread(parse_any, body, content_type, base, ms, reader)
        except (ScrapeError, TimeoutError) as exc:
            error = str(exc) or f"timed out after {target.timeout:g} s"
            page = Page()
        else:
            error = ""
        duration = time.perf_counter() - started
        scraped = sum(len(ts) for ts, _ in page.series.values()) + sum(len(ts) for ts, _ in page.histograms.values())
        up = 0.0 if error else 1.0
        self.target_up.labels(target.job, target.instance).set(up)
        self.scrapes.labels(target.job, "failed" if error else "ok").inc()
        previous = self.last_error.get(target.url, "")
        if error and error != previous:
            log.warning("scrape of %s (job %s) failed: %s", target.url, target.job, error)
        elif not error and previous:
            log.info("scrape of %s (job %s) works again", target.url, target.job)
        self.last_error[target.url] = error
        page.series.update(_report(base, ms, up, round(duration, 6), scraped))
        return page

    async def _fetch(self, target: Target) -> tuple[bytes, str]:
        assert self._session is not None, "Scraper.start() first"
        try:
            async with self._session.get(target.url) as resp:
                if resp.status != 200:
                    raise ScrapeError(f"HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > self._max_body:
                    raise ScrapeError(f"page of {resp.content_length} bytes exceeds {self._max_body}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self._max_body:
                        raise ScrapeError(f"page exceeds {self._max_body} bytes")
                return bytes(body), resp.headers.get("Content-Type", "")
        except aiohttp.ClientError as exc:
            raise ScrapeError(f"{type(exc).__name__}: {exc}") from exc
