"""Issue 12, finding 8: slow and idle connections must not exhaust either program's descriptors.

A real Prometheus keeps delivering to an agent that runs under systemd's default limit of 1024 open
files while an attacker holds 1,100 idle connections to the same port (reconnecting whatever the agent
closes), and the agent's log stays small. Unfinished headers, bodies that never arrive and idle
keep-alive connections are closed on time by both programs."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Running
from tests.security.conftest import IdleFlood, closed_within
from tests.support import TOKEN, free_port, metric_value, wait_until

pytestmark = [pytest.mark.integration]

ACCEPTED = 'backhaul_ingest_requests_total{code="204"}'


def delivered(url: str) -> float:
    """Remote-write requests the agent accepted; 0 while it does not answer at all."""
    try:
        return metric_value(url, ACCEPTED)
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_prometheus_keeps_delivering_while_1100_idle_connections_are_held(
    tmp_path: Path, limited_agent: Callable[..., tuple[object, str]], prometheus: Callable[[int], str]
) -> None:
    _, url = limited_agent(nofile=1024)
    port = int(url.rsplit(":", 1)[1])
    flood = IdleFlood(port, 1100)
    flood.start()
    try:
        wait_until(lambda: flood.open_now >= 1100, 30, "the flood's 1,100 connections")
        time.sleep(2)  # the agent has seen them all (and run out of descriptors, before the fix)
        prometheus(port)  # it connects now, while the flood holds on
        wait_until(lambda: delivered(url) > 0, 60, "Prometheus' first delivery through the flood")
        # ... and it keeps delivering, not just once: every few seconds for 20 s.
        seen = metric_value(url, ACCEPTED)
        for _ in range(4):
            time.sleep(5)
            now = metric_value(url, ACCEPTED)
            assert now > seen, "Prometheus stopped delivering during the flood"
            seen = now
        assert flood.is_alive() and flood.open_now >= 1000  # the attacker never let go
        assert metric_value(url, "backhaul_http_connections_closed_total", 'reason="evicted"') > 0
    finally:
        flood.stop()
    log = (tmp_path / "agent.log").read_bytes()
    assert len(log) < 32 * 1024, f"the agent's log grew to {len(log)} bytes:\n{log[-3000:].decode(errors='replace')}"
    assert b"Traceback" not in log


@pytest.fixture
def endpoints(start_collector: Callable[..., Running], start_agent: Callable[..., Running]) -> dict[str, int]:
    """An agent and a collector with 1 s timeouts: the port of each."""
    fast = {"host": "127.0.0.1", "header_timeout": 1, "body_timeout": 1, "idle_timeout": 1}
    cport, aport = free_port(), free_port()
    start_collector(port=cport, listen={**fast, "port": cport})
    start_agent(None, port=aport, listen={**fast, "port": aport})
    return {"agent": aport, "collector": cport}


# Each program's upload endpoint and the headers of a request there (the collector's with a token,
# so that its handler gets as far as reading the body).
REQUESTS = {
    "agent": b"POST /api/v1/write HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-protobuf\r\n",
    "collector": b"POST /api/v1/batches HTTP/1.1\r\nHost: c\r\nContent-Type: application/x-backhaul-batch\r\n"
    + f"Authorization: Bearer {TOKEN}\r\n".encode(),
}


@pytest.mark.parametrize("program", ["agent", "collector"])
def test_slow_connections_are_closed_on_time(endpoints: dict[str, int], program: str) -> None:
    port = endpoints[program]

    # A connection that never sends a byte.
    with socket.create_connection(("127.0.0.1", port)) as s:
        took = closed_within(s, 5)
        assert took is not None and took < 3, f"{program}: a silent connection still open after {took} s"

    # Headers dripping in, a byte every 0.2 s, never finished: the header timeout counts from the start.
    with socket.create_connection(("127.0.0.1", port)) as s:
        start = time.monotonic()
        s.settimeout(0.2)
        closed = False
        for byte in REQUESTS[program] * 3:
            try:
                s.send(bytes([byte]))
                if s.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if time.monotonic() - start > 5:
                break
        assert closed and time.monotonic() - start < 3, f"{program}: dripping headers kept the connection"

    # Complete headers, a body announced and never sent.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(REQUESTS[program] + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        took = closed_within(s, 5)
        assert took is not None and took < 3, f"{program}: a missing body kept the connection for {took} s"

    # A keep-alive connection after one complete request, then silence.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(2)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        took = closed_within(s, 5)
        assert took is not None and took < 3, f"{program}: an idle keep-alive connection stayed {took} s"
