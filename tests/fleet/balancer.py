"""A round-robin HTTP load balancer on 127.0.0.1, in a thread: what several collector instances sit
behind in production. A target that does not answer gets 502, like nginx's, so the agent retries
(and its retry goes to the next target)."""

from __future__ import annotations

import itertools

import aiohttp
from aiohttp import web

from tests.support import LoopbackProxy


class RoundRobin(LoopbackProxy):
    def __init__(self, targets: list[str]) -> None:
        super().__init__(session_timeout=10)
        self.targets = targets
        self.forwarded = dict.fromkeys(targets, 0)
        self.failed = 0  # requests answered 502 (target down)
        self._next = itertools.cycle(targets)

    async def relay(self, request: web.Request, body: bytes, headers: dict[str, str]) -> web.Response:
        target = next(self._next)
        try:
            answer = await self.post(target, request.path, body, headers)
        except aiohttp.ClientError as exc:
            self.failed += 1
            return web.Response(status=502, text=f"upstream {target}: {exc}\n")
        self.forwarded[target] += 1
        return answer
