"""A round-robin HTTP load balancer on 127.0.0.1, in a thread: what several collector instances sit
behind in production. A target that does not answer gets 502, like nginx's, so the agent retries
(and its retry goes to the next target)."""

from __future__ import annotations

import asyncio
import itertools
import threading

import aiohttp
from aiohttp import web

from tests.support import free_port


class RoundRobin:
    def __init__(self, targets: list[str]) -> None:
        self.targets = targets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.forwarded = dict.fromkeys(targets, 0)
        self.failed = 0  # requests answered 502 (target down)
        self._next = itertools.cycle(targets)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            target = next(self._next)
            try:
                async with self._session.post(target + request.path, data=body, headers=headers) as resp:
                    text = await resp.read()
                    self.forwarded[target] += 1
                    return web.Response(status=resp.status, body=text, content_type=resp.content_type)
            except aiohttp.ClientError as exc:
                self.failed += 1
                return web.Response(status=502, text=f"upstream {target}: {exc}\n")

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/{tail:.*}", forward)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> RoundRobin:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
