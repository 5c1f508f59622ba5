"""A fault-injecting proxy between the agent and the collector, on 127.0.0.1, in its own thread.

It speaks raw TCP (asyncio streams) so it can do what an HTTP library would not: reset a connection
mid-request, send half a response, or swallow a request and never answer. Every connection carries
exactly one request: the proxy reads it, acts according to the mode current *when the connection was
accepted*, and answers (if at all) with ``Connection: close``, so an HTTP client cannot keep reusing
a connection accepted under an earlier mode.

Modes (``proxy.mode = ...``, switchable at any time from the test's thread):

``pass``           forward the request, relay the whole answer
``delay``          wait ``proxy.delay`` seconds, then forward as ``pass``
``drop``           accept and close at once, without reading anything
``reset``          read part of the request, then reset the connection (SO_LINGER 0 + close: RST)
``half_response``  forward (the collector stores the batch), relay only part of the answer's head, close
``error_storm``    answer 500, 502 or 503 itself (some with ``Retry-After``) without forwarding
``black_hole``     read the request, never answer, keep the socket open until the client gives up
``reply_lost``     forward (the collector stores the batch), then close without answering
``mixed``          each connection picks one of the modes above at random (seeded)
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter

from tests.support import free_port

log = logging.getLogger(__name__)

FAULTS = ("delay", "drop", "reset", "half_response", "error_storm", "black_hole", "reply_lost")
SINGLE_MODES = ("pass", *FAULTS)
MODES = (*SINGLE_MODES, "mixed")

_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_MAX_HEAD = 64 * 1024


class BadRequest(Exception):
    """The client sent something this proxy does not understand (chunked body, no Content-Length ...)."""


def _split_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``head`` (without the final blank line) as its first line and its header fields."""
    first, *rest = head.split(b"\r\n")
    fields = []
    for line in rest:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadRequest(f"malformed header line {line[:80]!r}")
        fields.append((name.strip(), value.strip()))
    return first, fields


def _join_head(first: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"\r\n".join([first, *(name + b": " + value for name, value in fields)]) + b"\r\n\r\n"


def _with_connection_close(head: bytes) -> bytes:
    """``head`` (ending in the blank line) with any ``Connection`` field replaced by ``close``."""
    first, fields = _split_head(head[:-4])
    fields = [(n, v) for n, v in fields if n.lower() != b"connection"]
    fields.append((b"Connection", b"close"))
    return _join_head(first, fields)


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` (``http://host:port``) with faults injected.

    Args:
        target: base URL of the collector.
        mode: the initial mode (see the module's docstring).
        delay: seconds the ``delay`` mode waits before forwarding.
        seed: seeds the random choices (``mixed``, error statuses, cut points).
        mixed: the modes ``mixed`` picks from.

    Use as a context manager (``with FaultProxy(url) as proxy:``); ``url`` is what the agent talks to.
    """

    def __init__(
        self,
        target: str,
        mode: str = "pass",
        delay: float = 1.0,
        seed: int = 0,
        mixed: tuple[str, ...] = SINGLE_MODES,
    ) -> None:
        parsed = urllib.parse.urlsplit(target)
        assert parsed.hostname and parsed.port, target
        self.target_host, self.target_port = parsed.hostname, parsed.port
        self.delay = delay
        self.mixed = mixed
        self.mode = mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._connections: Counter[str] = Counter()  # accepted, by the mode that handled them
        self._forwarded: Counter[str] = Counter()  # requests the target answered, by mode
        self._errors: list[str] = []
        self._open = 0  # connections being handled right now
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._startup_error: BaseException | None = None

    # -- the test's side ---------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; one of {MODES}")
        if value == "mixed" and not set(self.mixed) <= set(SINGLE_MODES):
            raise ValueError(f"mixed picks from {SINGLE_MODES}, not {self.mixed}")
        self._mode = value

    @property
    def connections(self) -> dict[str, int]:
        """Connections accepted so far, by the mode that handled them (``mixed`` resolved)."""
        with self._lock:
            return dict(self._connections)

    @property
    def forwarded(self) -> dict[str, int]:
        """Requests that reached the target and were answered by it, by mode."""
        with self._lock:
            return dict(self._forwarded)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open

    @property
    def errors(self) -> list[str]:
        """Unexpected problems in the proxy itself (a client disconnecting is not one)."""
        with self._lock:
            return list(self._errors)

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        if self._startup_error is not None:
            self._thread.join(10)
            raise RuntimeError("fault proxy did not start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close the listener, cancel and await every connection's handler, stop the loop."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        assert not self._thread.is_alive(), "fault proxy thread did not end"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the proxy's thread ------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._accept, "127.0.0.1", self.port, limit=_MAX_HEAD)
            )
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        me = asyncio.current_task()
        # the handlers, and any task they left behind (none expected): cancel until nothing is left
        while pending := [t for t in asyncio.all_tasks() if t is not me]:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self._mode
        if mode == "mixed":
            mode = self._rng.choice(self.mixed)
        with self._lock:
            self._connections[mode] += 1
            self._open += 1
        try:
            await getattr(self, "_" + mode)(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client (or the target) went away: part of the game
        except (BadRequest, asyncio.LimitOverrunError, OSError) as exc:
            with self._lock:
                self._errors.append(f"{mode}: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()

    # -- HTTP plumbing -------------------------------------------------------------------------------

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        """One request's head (with ``Connection: close``) and body; the body must have a Content-Length."""
        head = await reader.readuntil(b"\r\n\r\n")
        _, fields = _split_head(head[:-4])
        length = 0
        for name, value in fields:
            if name.lower() == b"transfer-encoding":
                raise BadRequest("chunked request bodies are not supported")
            if name.lower() == b"content-length":
                length = int(value)
        return _with_connection_close(head), await reader.readexactly(length)

    async def _forward(self, mode: str, head: bytes, body: bytes) -> bytes:
        """Send the request to the target and return its whole answer (it closes after it).

        A target that is down is answered ``502`` by the proxy, as a real reverse proxy would.
        """
        try:
            reader, writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError as exc:
            return self._response(502, f"proxy: collector unreachable: {exc}")
        try:
            writer.write(head + body)
            await writer.drain()
            answer = await reader.read()  # the request said Connection: close
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()
        if b"\r\n\r\n" not in answer:
            return self._response(502, "proxy: no complete answer from the collector")
        with self._lock:
            self._forwarded[mode] += 1
        end = answer.index(b"\r\n\r\n") + 4
        return _with_connection_close(answer[:end]) + answer[end:]

    @staticmethod
    def _response(status: int, text: str, extra: dict[str, str] | None = None) -> bytes:
        body = (text + "\n").encode()
        fields = {
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Length": str(len(body)),
            "Date": email.utils.formatdate(usegmt=True),
            "Connection": "close",
            **(extra or {}),
        }
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        return head.encode() + b"\r\n" + body

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    # -- the modes -----------------------------------------------------------------------------------

    async def _pass(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await self._read_request(reader)
        await self._reply(writer, await self._forward("pass", head, body))

    async def _delay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await self._read_request(reader)
        await asyncio.sleep(self.delay)
        await self._reply(writer, await self._forward("delay", head, body))

    async def _drop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return  # closed by the caller at once

    async def _reset(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        _, fields = _split_head(head[:-4])
        length = next((int(v) for n, v in fields if n.lower() == b"content-length"), 0)
        if length > 1:
            await reader.readexactly(self._rng.randrange(1, length))  # the request is half read
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # close with linger 0: RST, not FIN

    async def _half_response(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await self._read_request(reader)
        answer = await self._forward("half_response", head, body)
        # cut inside the status line or the header fields, so the client never learns the status
        end_of_head = answer.index(b"\r\n\r\n")
        await self._reply(writer, answer[: self._rng.randrange(1, end_of_head)])

    async def _error_storm(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._read_request(reader)
        status = self._rng.choice((500, 502, 503))
        extra = {}
        pick = self._rng.random()
        if pick < 0.3:
            extra["Retry-After"] = "1"
        elif pick < 0.5:
            extra["Retry-After"] = email.utils.formatdate(time.time() + 1, usegmt=True)
        await self._reply(writer, self._response(status, f"proxy: injected {status}", extra))

    async def _black_hole(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._read_request(reader)
        while await reader.read(4096):  # never answer; wait until the client gives up and closes
            pass

    async def _reply_lost(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await self._read_request(reader)
        await self._forward("reply_lost", head, body)  # stored at the collector; the answer is dropped
