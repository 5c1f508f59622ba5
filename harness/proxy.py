"""Proxies on 127.0.0.1, each in a thread with its own event loop: HTTP ones between an agent and a collector,
and a TLS front for a plain server."""

from __future__ import annotations

import asyncio
import ssl
import threading
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
