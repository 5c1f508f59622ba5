"""Scrape targets for the footprint benchmark: what every forwarder scrapes, and a count of what it was served.

- :class:`Upstream` passes a real exporter's page through (node_exporter's text page: the pass-through
  asks for nothing else, so every forwarder parses the same format);
- :class:`SyntheticPages` renders the deterministic workload of bench/workload.py as text exposition,
  at any series count, optionally with series churn (a ``gen`` label that moves on for a share of
  the series at every round), so that the same page goes to every forwarder in the same 5 s round;
- :class:`CountingTarget` serves either to one forwarder and counts the sample lines it served.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Protocol

from backhaul.wire.series import SeriesMap
from bench.workload import INTERVAL_MS, Workload
from harness import QuietHandler

TEXT = "text/plain; version=0.0.4; charset=utf-8"
# Prometheus adds these per target itself; a page carrying them would clash with the scraper's own.
_SCRAPER_SERIES = ("up", "scrape_")


class Pages(Protocol):
    def page(self) -> tuple[bytes, str]: ...


class Upstream:
    """A real exporter's /metrics, fetched anew for every scrape."""

    def __init__(self, url: str) -> None:
        self.url = url

    def page(self) -> tuple[bytes, str]:
        with urllib.request.urlopen(self.url, timeout=10) as reply:
            return reply.read(), reply.headers.get("Content-Type", TEXT)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class SyntheticPages:
    """About ``series`` series of the bench workload as one text page per 5 s round (rounds counted from
    the first request), the same page for everyone in a round. With ``churn`` (0..1), that share of
    the series takes a new ``gen`` value at every round, so the unique series over ``r`` rounds are
    about ``series * (1 + churn * r)``."""

    def __init__(self, series: int, churn: float = 0.0) -> None:
        self._workload = Workload(series, minutes=24 * 60, start_ms=0)
        self._rounds: Iterator[tuple[int, SeriesMap]] = self._workload.rounds()
        self._round = -1
        self._values: list[float] = []
        self._started = 0.0
        self._lock = threading.Lock()
        self._body = b""
        self._renewed = round(churn * self._workload.n_series)
        self._heads: list[str] = []  # "name{labels" per series, the closing brace added per round
        self._kept: list[bool] = []
        for labels in self._workload.labels:
            name = dict(labels)["__name__"]
            keep = not name.startswith(_SCRAPER_SERIES)
            self._kept.append(keep)
            # the workload's own target labels stay, renamed the way Prometheus renames a clash
            pairs = [(("exported_" + k) if k in ("job", "instance") else k, v) for k, v in labels if k != "__name__"]
            self._heads.append(name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs))
        self.series = sum(self._kept)

    def unique_series(self, rounds: int) -> int:
        """How many distinct series ``rounds`` rounds of pages carry."""
        return self.series + self._renewed * max(0, rounds - 1) * self.series // len(self._heads)

    def page(self) -> tuple[bytes, str]:
        with self._lock:
            now = time.monotonic()
            if self._round < 0:
                self._started = now
            target = int((now - self._started) * 1000 // INTERVAL_MS)
            while self._round < target:
                _, samples = next(self._rounds)
                self._values = [v[0] for _, v in samples.values()]
                self._round += 1
                self._body = b""
            if not self._body:
                self._body = self._render(self._round)
            return self._body, TEXT

    def _render(self, r: int) -> bytes:
        n = len(self._heads)
        lines = []
        for i, (head, keep, value) in enumerate(zip(self._heads, self._kept, self._values, strict=True)):
            if not keep:
                continue
            if self._renewed:
                sep = "," if not head.endswith("{") else ""
                lines.append(f'{head}{sep}gen="{(r * self._renewed + i) // n}"}} {value!r}\n')
            else:
                lines.append(f"{head}}} {value!r}\n")
        return "".join(lines).encode()


class CountingTarget:
    """One forwarder's scrape target: serves ``pages`` and counts the sample lines it served."""

    def __init__(self, pages: Pages) -> None:
        target = self
        self.samples = 0
        self.scrapes = 0

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                body, content_type = pages.page()
                target.samples += sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
                target.scrapes += 1
                self.answer(body, content_type)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="target", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
