"""Proxies on 127.0.0.1, each in a thread with its own event loop: HTTP ones between an agent and a collector
that play with the answers, a TCP proxy that counts the bytes on the wire, and a TLS front for a plain server."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

import aiohttp
from aiohttp import web

from harness.net import free_port

T = TypeVar("T")


class LoopThread:
    """A server on 127.0.0.1 with its own event loop in a daemon thread; ``with server: ...`` runs
    :meth:`start` on that loop, and at the end :meth:`stop`, then cancels whatever still runs there
    (answers held for an agent that died meanwhile, connections in flight)."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=name)

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        pass

    def call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the server's loop and wait for it (10 s at most)."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(10)

    def __enter__(self) -> Self:
        self._thread.start()
        self.call(self.start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def finish() -> None:
            await self.stop()
            held = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            await asyncio.sleep(0.05)  # transports close on the loop's next turns: let them

        self.call(finish())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class LoopbackProxy(LoopThread):
    """A real HTTP proxy on 127.0.0.1 in a thread of its own, relaying POSTs (with their Authorization
    and Content-Type) to what :meth:`relay` decides. Subclasses say where, and what happens to the
    answer; the lifecycle (``with proxy: ...``) is here once.

    Args:
        session_timeout: total seconds a relayed request may take (None: aiohttp's default).
    """

    _session: aiohttp.ClientSession
    _runner: web.AppRunner

    def __init__(self, session_timeout: float | None = None) -> None:
        super().__init__("loopback-proxy")
        self.url = f"http://127.0.0.1:{self.port}"
        self._session_timeout = session_timeout

    async def relay(self, request: web.Request, body: bytes, headers: dict[str, str]) -> web.Response:
        raise NotImplementedError

    async def post(self, target: str, path: str, body: bytes, headers: dict[str, str]) -> web.Response:
        async with self._session.post(target + path, data=body, headers=headers) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type=resp.content_type)

    async def start(self) -> None:
        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            return await self.relay(request, body, headers)

        timeout = aiohttp.ClientTimeout(total=self._session_timeout) if self._session_timeout else None
        self._session = aiohttp.ClientSession(timeout=timeout) if timeout else aiohttp.ClientSession()
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/{tail:.*}", forward)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()


class DelayProxy(LoopbackProxy):
    """Forwards to ``target`` and, while ``delay`` > 0, holds the answer back that long *after* the
    target has answered: a collector that stored a batch but whose reply is late (or lost, if the
    agent dies meanwhile).

    Args:
        target: the collector's base URL.
        delay: seconds to hold each answer (may be changed while running).
    """

    def __init__(self, target: str, delay: float = 0.0) -> None:
        super().__init__()
        self.target = target
        self.delay = delay
        self.forwarded = 0

    async def relay(self, request: web.Request, body: bytes, headers: dict[str, str]) -> web.Response:
        answer = await self.post(self.target, request.path, body, headers)
        self.forwarded += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return answer


class TlsFront(LoopThread):
    """TLS in front of a plain TCP server on 127.0.0.1, as a cloud's load balancer terminates it: bytes
    pass both ways unchanged (streams included), in a thread with its own event loop.

    Args:
        target_port: the plain server's port.
        context: the server-side TLS context (a certificate made at test time, e.g. with trustme).
    """

    def __init__(self, target_port: int, context: ssl.SSLContext) -> None:
        super().__init__("tls-front")
        self.url = f"https://127.0.0.1:{self.port}"
        self.connections = 0  # completed TLS handshakes
        self._target = target_port
        self._context = context
        self._server: asyncio.Server | None = None

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            target_r, target_w = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pump(client_r, target_w), self._pump(target_r, client_w))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self._context)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


class CountingProxy(LoopThread):
    """A TCP proxy on 127.0.0.1 that counts every byte on the wire, in a thread of its own: what a
    carrier bills. Bytes are counted per direction and per connection, each connection named by the
    path of its first HTTP request (``/api/v1/batches``, ``/api/v1/alerts``), so one link's bulk and
    alert traffic can be told apart; every read is recorded with its time, for rates over a window.

    While ``down`` is set the link is gone: nothing listens (connections are refused, as when a
    carrier's link is down: no byte goes) and the connections that were open are cut.

    Args:
        target: ``(host, port)`` of the collector.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__("counting-proxy")
        self.target = target
        self.url = f"http://127.0.0.1:{self.port}"
        self.down = False
        self._lock = threading.Lock()
        self.sent: dict[str, int] = {}  # path -> bytes client -> target
        self.received: dict[str, int] = {}  # path -> bytes target -> client
        self.reads: list[tuple[float, str, int]] = []  # (monotonic time, path, bytes) client -> target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def total(self, path: str | None = None) -> int:
        """Bytes both ways, for connections of ``path`` (None: all)."""
        with self._lock:
            paths = [path] if path is not None else list(self.sent.keys() | self.received.keys())
            return sum(self.sent.get(p, 0) + self.received.get(p, 0) for p in paths)

    def sent_between(self, start: float, end: float, path: str | None = None) -> int:
        """Bytes sent towards the target between two ``time.monotonic()`` instants."""
        with self._lock:
            return sum(n for t, p, n in self.reads if start <= t < end and (path is None or p == path))

    def set_down(self, down: bool) -> None:
        self.down = down
        self.call(self._set_down(down))

    async def _set_down(self, down: bool) -> None:
        if down:
            if self._server is not None:
                self._server.close()
                self._server = None
            self._cut()
        elif self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def _add(self, table: dict[str, int], path: str, n: int, record: bool) -> None:
        with self._lock:
            table[path] = table.get(path, 0) + n
            if record:
                self.reads.append((time.monotonic(), path, n))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        first = await reader.read(64 * 1024)
        parts = first.split(b" ", 2)
        path = parts[1].decode(errors="replace").split("?")[0] if len(parts) > 2 else "?"
        self._add(self.sent, path, len(first), True)
        up_writer.write(first)
        await asyncio.gather(
            self._pump(reader, up_writer, path, self.sent, True),
            self._pump(up_reader, writer, path, self.received, False),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.transport.abort()
            self._writers.discard(w)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, table: dict[str, int], up: bool
    ) -> None:
        try:
            while not self.down:
                data = await reader.read(64 * 1024)
                if not data:
                    break
                self._add(table, path, len(data), up)
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut()
