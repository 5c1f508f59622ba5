"""Plain HTTP on 127.0.0.1: free ports, one blocking request, JSON pages, and polling until something holds.

Blocking ``urllib`` on purpose: the callers are test bodies, benchmark drivers and the demo, all
synchronous, and a helper with no event loop of its own can be called from any thread.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class QuietHandler(BaseHTTPRequestHandler):
    """A test server's request handler that logs nothing and answers with :meth:`answer`."""

    def answer(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """One request: ``(status, body, headers)``. An HTTP error status comes back as a status; no answer
    at all (refused, reset, timed out, a TLS failure) raises :class:`OSError`. ``context``: TLS settings
    for an https URL (a test CA, a client certificate)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def get_json(url: str, timeout: float = 1) -> dict[str, Any] | None:
    """A JSON object from ``GET url``; None when nothing answers or the answer is not a JSON object."""
    try:
        _, body, _ = http("GET", url, timeout=timeout)
    except OSError:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def wait_until(
    predicate: Callable[[], T | Literal[False] | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``predicate`` until it returns something true, and return that; AssertionError after ``timeout``.

    The result is never None or False, so callers need not narrow an Optional predicate's result."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
