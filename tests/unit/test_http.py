"""backhaul.http, the one place aiohttp's errors become PeerError, against real sockets on 127.0.0.1;
and backhaul.retry, what an answer means and how long to wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from backhaul.errors import PeerError
from backhaul.http import HttpClient
from backhaul.retry import Backoff, Verdict, verdict
from tests.support import free_port

TOKEN = "sekrit-token-never-logged"
Raw = Callable[[bytes], Awaitable[str]]


@pytest.fixture
async def raw_peer() -> AsyncIterator[Raw]:
    """A peer that answers every request with the given bytes, as they are, then hangs up."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_any_answer_is_a_reply_with_what_went_out() -> None:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(status=503, text="busy\n", headers={"Retry-After": "7"})

    app = web.Application()
    app.router.add_post("/x", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with HttpClient(2, "test/1", TOKEN, {"X-A": "1"}) as client:
            reply = await client.post(f"http://127.0.0.1:{port}/x", b"12345", {"X-A": "2"})
    finally:
        await runner.cleanup()
    assert (reply.status, reply.text, reply.sent_bytes, reply.ok) == (503, "busy\n", 5, False)
    assert reply.headers["Retry-After"] == "7"
    assert seen[0]["Authorization"] == f"Bearer {TOKEN}" and seen[0]["X-A"] == "2"  # per call wins
    assert seen[0]["User-Agent"] == "test/1"


async def test_nothing_listening_is_a_connection_error() -> None:
    async with HttpClient(2, "test/1") as client:
        with pytest.raises(PeerError) as caught:
            await client.post(f"http://127.0.0.1:{free_port()}/x", b"")
    assert caught.value.kind == "connection"
    assert caught.value.detail.startswith("ClientConnectorError: ")


async def test_a_peer_that_never_answers_is_a_timeout_within_the_limit() -> None:
    stalled: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stalled.append(writer)  # keeps the connection open and says nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        async with HttpClient(0.3, "test/1") as client:
            with pytest.raises(PeerError) as caught:
                await client.post(f"http://127.0.0.1:{port}/x", b"x")
    finally:
        for writer in stalled:
            writer.close()
        server.close()
        await server.wait_closed()
    assert caught.value.kind == "timeout"
    assert str(caught.value) == "timeout: no complete answer within 0.3 s"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage " + b"y" * 3000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nBad Header Line " + b"x" * 3000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + b"q" * 100,
    ],
)
async def test_a_garbled_answer_reads_as_one_short_line_without_the_token(raw_peer: Raw, answer: bytes) -> None:
    url = await raw_peer(answer)
    async with HttpClient(2, "test/1", TOKEN) as client:
        with pytest.raises(PeerError) as caught:
            await client.post(url, b"body")
    exc = caught.value
    assert exc.kind == "http"
    assert "\n" not in str(exc) and len(exc.detail) <= len("ClientResponseError: ") + 200
    assert TOKEN not in str(exc) and TOKEN not in repr(exc)


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (200, "", Verdict.OK),
        (204, "", Verdict.OK),
        (408, "", Verdict.RETRY),
        (429, "", Verdict.RETRY),
        (500, "", Verdict.RETRY),
        (503, "", Verdict.RETRY),
        (401, "", Verdict.MISCONFIGURED),
        (403, "", Verdict.MISCONFIGURED),
        (404, "", Verdict.MISCONFIGURED),
        (400, 'unsupported path requested: "/api/v1/wrong"', Verdict.MISCONFIGURED),
        (400, "out of bounds", Verdict.REFUSED),
        (413, "too big", Verdict.REFUSED),
        (302, "", Verdict.REFUSED),
    ],
)
def test_answers_are_classified_the_same_for_every_sender(status: int, text: str, expected: Verdict) -> None:
    assert verdict(status, text) is expected


def test_backoff_honours_what_the_peer_asked_up_to_its_maximum_and_slows_down_for_config_errors() -> None:
    backoff = Backoff(1, 8, rng=lambda: 1.0)
    assert backoff.next(3.0) == 3.0 and backoff.next(60.0) == 8  # Retry-After, capped
    assert backoff.next() == 4  # the asked delays still counted as failures
    backoff.reset()
    backoff.slow()
    assert backoff.next() == 8  # a wrong token or URL: straight to the long delays
