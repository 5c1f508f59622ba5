"""Proxies on 127.0.0.1, each in a thread with its own event loop: HTTP ones between an agent and a collector
that play with the answers, a TCP proxy that counts the bytes on the wire, and a TLS front for a plain server."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from typing import Self

import aiohttp
from aiohttp import web

from harness.net import free_port


class LoopbackProxy:
    """A real HTTP proxy on 127.0.0.1 in a thread of its own, relaying POSTs (with their Authorization
    and Content-Type) to what :meth:`relay` decides. Subclasses say where, and what happens to the
    answer; the lifecycle (``with proxy: ...``) is here once.

    Args:
        session_timeout: total seconds a relayed request may take (None: aiohttp's default).
    """

    _session: aiohttp.ClientSession
    _runner: web.AppRunner

    def __init__(self, session_timeout: float | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._session_timeout = session_timeout
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def relay(self, request: web.Request, body: bytes, headers: dict[str, str]) -> web.Response:
        raise NotImplementedError

    async def post(self, target: str, path: str, body: bytes, headers: dict[str, str]) -> web.Response:
        async with self._session.post(target + path, data=body, headers=headers) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type=resp.content_type)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
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

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()
            # answers still held (for an agent that died meanwhile) are abandoned
            held = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


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


class TlsFront:
    """TLS in front of a plain TCP server on 127.0.0.1, as a cloud's load balancer terminates it: bytes
    pass both ways unchanged (streams included), in a thread with its own event loop.

    Args:
        target_port: the plain server's port.
        context: the server-side TLS context (a certificate made at test time, e.g. with trustme).
    """

    def __init__(self, target_port: int, context: ssl.SSLContext) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.connections = 0  # completed TLS handshakes
        self._target = target_port
        self._context = context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
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

    def __enter__(self) -> Self:
        self._thread.start()
        start = asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self._context)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            held = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            await asyncio.sleep(0.05)  # transports close on the loop's next turns: let them

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class CountingProxy:
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
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.down = False
        self._lock = threading.Lock()
        self.sent: dict[str, int] = {}  # path -> bytes client -> target
        self.received: dict[str, int] = {}  # path -> bytes target -> client
        self.reads: list[tuple[float, str, int]] = []  # (monotonic time, path, bytes) client -> target
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="counting-proxy")
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
        asyncio.run_coroutine_threadsafe(self._set_down(down), self._loop).result(10)

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

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        )
        self._ready.set()
        self._loop.run_forever()

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

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            self._cut()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
