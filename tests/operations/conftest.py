"""Fixtures for reload and status tests: /metrics pages served in the test process, counting scrapes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from tests.support import QuietHandler


class Page:
    """A /metrics page on 127.0.0.1 that counts how often it was fetched.

    Args:
        text: the page (Prometheus text format).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.hits = 0
        page = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                page.hits += 1
                self.answer(page.text.encode(), "text/plain; version=0.0.4")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pages() -> Iterator[list[Page]]:
    """Two pages, "a" and "b", each with a temperature over 50."""
    made = [Page("temperature_celsius 61\n"), Page("temperature_celsius 62\n")]
    yield made
    for page in made:
        page.close()
