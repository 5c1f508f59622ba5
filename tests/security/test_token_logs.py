"""Issue 12, finding 12: what a client sends never comes back in an answer or lands in the log.

A malformed or oversized ``Authorization`` header used to be answered 400 with the header's bytes (the
real token) and logged with them at ERROR, with a traceback; a body with ``Content-Encoding: gzip``
that is not gzip logged a 1.6 KB traceback even on the 401 path. Now: a 4xx, one short log line at
most, no secret, no traceback, on both programs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Running
from tests.security.conftest import raw_exchange
from tests.support import TOKEN

pytestmark = [pytest.mark.integration]

SECRET = TOKEN.encode()  # a real device token: it must appear in no answer and no log line


def hostile_requests(path: bytes) -> dict[str, bytes]:
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    return {
        "control character": head + b"Authorization: Bearer " + SECRET + b"\x01\r\nContent-Length: 0\r\n\r\n",
        "oversized": head + b"Authorization: Bearer " + SECRET + b"A" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
        "bad header name": head + b"Author\x7fization: Bearer " + SECRET + b"\r\nContent-Length: 0\r\n\r\n",
        "gzip, no token": head + b"Content-Encoding: gzip\r\nContent-Length: 10\r\n\r\n0123456789",
        "gzip, token": head
        + b"Authorization: Bearer "
        + SECRET
        + b"\r\nContent-Type: application/x-backhaul-batch\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\n"
        + b"0123456789",
    }


@pytest.mark.parametrize("program", ["agent", "collector"])
def test_bad_headers_and_bodies_leak_nothing(
    program: str, start_collector: Callable[..., Running], start_agent: Callable[..., Running]
) -> None:
    running = start_collector() if program == "collector" else start_agent(None)
    port = int(running.url.rsplit(":", 1)[1])
    path = b"/api/v1/batches" if program == "collector" else b"/api/v1/write"
    log_path = running.config.with_suffix(".log")
    before = log_path.read_bytes()
    for what, request in hostile_requests(path).items():
        answer = raw_exchange(port, request)
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
        assert 400 <= status < 500, f"{what}: answered {answer[:200]!r}"
        assert SECRET not in answer, f"{what}: the answer repeats the token: {answer!r}"
    running.proc.stop()  # the log is complete once the process has ended
    added = log_path.read_bytes()[len(before) :]
    assert SECRET not in added, added.decode(errors="replace")
    assert b"Traceback" not in added, added.decode(errors="replace")
    lines = [line for line in added.splitlines() if b" ERROR " in line or b" WARNING " in line]
    # One line at most per hostile request (the listener sums bad requests up), none of them long.
    assert len(lines) <= len(hostile_requests(path)), added.decode(errors="replace")
    assert all(len(line) < 300 for line in lines), lines
