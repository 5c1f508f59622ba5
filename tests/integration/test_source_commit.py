"""``buffer.source_commit_interval`` on a real agent (issue 16): the agent's own scrapes wait in memory
and are committed together; a pushed request is still committed before its 204 and takes the waiting
passes along; a clean stop commits what waits; a SIGKILL loses at most what waited, which the gauge
``backhaul_buffer_source_samples_waiting`` showed beforehand."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    Proc,
    QuietHandler,
    agent_config,
    buffer_contents,
    free_port,
    push,
    read_metrics,
    wait_until,
    write_toml,
)

SCRAPE_SECONDS = 0.2
WAITING = "backhaul_buffer_source_samples_waiting"
COMMITS = "backhaul_buffer_commits_total"


class Target:
    """A /metrics page that counts the scrapes it answered."""

    def __init__(self) -> None:
        self.hits = 0
        target = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                target.hits += 1
                self.answer(b"temperature_celsius 21.5\nfan_rpm 900\n", "text/plain; version=0.0.4")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.server.shutdown()
    t.server.server_close()


def start_agent(tmp_path: Path, target: Target, interval: float) -> tuple[Proc, str, Path]:
    port = free_port()
    db = tmp_path / "agent.db"
    scrape: dict[str, Any] = {
        "interval": SCRAPE_SECONDS,
        "timeout": SCRAPE_SECONDS,
        "targets": [{"job": "sensor", "url": target.url}],
    }
    config = agent_config(port, db, buffer={"source_commit_interval": interval}, scrape=scrape)
    agent = Proc("backhaul-agent", write_toml(tmp_path / "agent.toml", config), tmp_path / "agent.log").start()
    url = f"http://127.0.0.1:{port}"
    agent.wait_healthy(url)
    return agent, url, db


def scraped(db: Path) -> int:
    """Passes of the target's page in the buffer file (one temperature sample each)."""
    series = buffer_contents(db).series
    return sum(len(stamps) for labels, (stamps, _) in series.items() if ("__name__", "temperature_celsius") in labels)


def test_scrapes_wait_in_memory_ride_with_a_push_and_are_committed_at_a_clean_stop(
    tmp_path: Path, target: Target
) -> None:
    agent, url, db = start_agent(tmp_path, target, 600)
    try:
        wait_until(lambda: target.hits >= 5, timeout=10, what="five scrapes")
        page = read_metrics(url)
        assert page[COMMITS] == 0, "a scrape was committed although the interval is 10 minutes"
        assert page[WAITING] >= 5 * 2, page[WAITING]  # the page's two samples per pass, at least
        assert scraped(db) == 0

        # A pushed request is answered only once committed, and the waiting passes go with it.
        hits = target.hits
        assert push(url, {(("__name__", "pushed"),): ([int(time.time() * 1000)], [1.0])}) == [204]
        contents = buffer_contents(db).series
        assert (("__name__", "pushed"),) in contents
        assert scraped(db) >= hits - 1  # a pass may have been in flight when the push came
        assert read_metrics(url)[COMMITS] >= 1

        # SIGTERM: every pass that completed is committed before the agent exits.
        wait_until(lambda: target.hits >= hits + 5, timeout=10, what="five more scrapes")
        assert agent.stop() == 0
        assert target.hits - 1 <= scraped(db) <= target.hits
    finally:
        agent.stop()


def test_the_interval_commits_on_its_own_and_a_sigkill_loses_at_most_what_waited(
    tmp_path: Path, target: Target
) -> None:
    agent, url, db = start_agent(tmp_path, target, 1.0)
    try:
        # No push: the interval alone commits the passes, about once a second.
        wait_until(lambda: read_metrics(url)[COMMITS] >= 3, timeout=15, what="three timed commits")
        commits_at = read_metrics(url)[COMMITS]
        hits_at = target.hits
        assert commits_at <= hits_at / 2, (commits_at, hits_at)  # several passes per commit
        agent.kill()
        # What the kill lost is what waited: at most one interval of passes (5) and one in flight.
        lost = target.hits - scraped(db)
        assert 0 <= lost <= 1.0 / SCRAPE_SECONDS + 2, (target.hits, scraped(db))
        assert scraped(db) > 0
    finally:
        agent.stop()
