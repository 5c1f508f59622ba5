"""Both programs' HTTP listener: an aiohttp app behind timeouts, a connection cap and quiet errors.

aiohttp alone keeps a connection that never finishes its headers, or never sends its body, for about
an hour, and accepts connections until ``accept()`` fails for want of descriptors, which asyncio then
logs with a traceback per attempt. A :class:`Listener` puts each connection under a
:class:`~backhaul.connections.ConnectionGuard`:

- ``header_timeout``: from the connection's start, or from the first byte after an idle spell, the
  request's headers must be complete within this long (TLS handshakes share the limit);
- ``body_timeout``: once the headers are in, the body must arrive within this long;
- ``idle_timeout``: a keep-alive connection with no request is closed after this long;
- ``max_connections``: at the cap, a new connection closes the one idle the longest (an idle flood
  cannot lock a sender out); only when every connection is busy with a request is it refused. The cap
  is kept below the process's open-file limit (raised to its hard limit first) so ``accept()`` never
  runs out of descriptors.

A request aiohttp cannot parse (a header line over 8 KiB, a control character in a header) is answered
400 with a fixed sentence — never the bytes that offended, which may be a token — and logged as one
line without them. What the guard closes is counted (``<prefix>_http_connections_closed_total{reason}``)
and summed up in at most one log line a minute, so a flood cannot fill the disk with the log.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from aiohttp import web
from pydantic import Field

from backhaul.connections import LOG_EVERY, ConnectionGuard
from backhaul.connections import ListenerMetrics as ListenerMetrics  # part of the listener's interface
from backhaul.settings import Section
from backhaul.tls import ServerTls

log = logging.getLogger(__name__)

# Descriptors kept free for everything else a program opens (databases, outgoing connections, files).
FD_RESERVE_MIN = 64
# The listen backlog, which is also how many connections asyncio accepts in one go before any of them
# is seen by the guard: the cap leaves room for one such burst.
BACKLOG = 128


class ListenLimits(Section):
    """Timeouts and the connection cap of an HTTP listener (the ``[listen]`` section of both programs)."""

    max_connections: int = Field(512, ge=1, le=1_000_000)
    header_timeout: timedelta = Field(timedelta(seconds=10), gt=timedelta(0))
    body_timeout: timedelta = Field(timedelta(seconds=60), gt=timedelta(0))
    idle_timeout: timedelta = Field(timedelta(seconds=60), gt=timedelta(0))


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class _Site(web.BaseSite):
    """A TCP site whose connections go through the guard's protocol factory."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        factory: Callable[[], asyncio.Protocol],
        secure: bool,
    ) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._host, self._port = host, port
        self._factory = factory
        self._secure = secure

    @property
    def name(self) -> str:
        return f"{'https' if self._secure else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        # Plain TCP: the guard does each TLS handshake itself (under its timer, its cap and its log).
        self._server = await loop.create_server(
            self._factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs a traceback for every ``accept()`` that finds no descriptor: make it one line a minute."""
    previous = loop.get_exception_handler()
    if getattr(previous, "backhaul_quiet", False):
        return
    last = [0.0]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            if time.monotonic() - last[0] >= LOG_EVERY:
                last[0] = time.monotonic()
                log.error("out of file descriptors: %s (connections wait in the kernel's queue)", exc.strerror)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.backhaul_quiet = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


class Listener:
    """An aiohttp application served on ``host:port`` under a :class:`ConnectionGuard`, as an async
    context manager; :attr:`port` is the bound port once entered.

    Args:
        app: the application (the guard adds its middleware in front of the app's own).
        host, port: where to listen (port 0: any free port).
        limits: timeouts and the cap (``[listen]``).
        metrics: the listener's metrics.
        name: for log lines.
        tls: the server's certificates, or None for plain HTTP.
        shutdown_timeout: how long requests in flight may finish at stop.
    """

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        limits: ListenLimits,
        metrics: ListenerMetrics,
        name: str,
        tls: ServerTls | None = None,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self._app = app
        self._host, self._port = host, port
        self._limits = limits
        self._metrics = metrics
        self._name = name
        self._tls = tls
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self.guard: ConnectionGuard | None = None
        self.port: int | None = None

    async def __aenter__(self) -> Listener:
        limits = self._limits
        soft = raise_open_files_limit()
        cap = min(limits.max_connections, max(1, soft - BACKLOG - max(FD_RESERVE_MIN, soft // 8)))
        if cap < limits.max_connections:
            log.warning(
                "%s: listen.max_connections %d lowered to %d: this process may open only %d files (LimitNOFILE)",
                self._name,
                limits.max_connections,
                cap,
                soft,
            )
        guard = self.guard = ConnectionGuard(
            limits.header_timeout.total_seconds(),
            limits.body_timeout.total_seconds(),
            limits.idle_timeout.total_seconds(),
            cap,
            self._metrics,
            self._name,
            self._tls.listening_context() if self._tls is not None else None,
        )
        self._app.middlewares.insert(0, guard.middleware)
        _quiet_accept_errors(asyncio.get_running_loop())
        runner = self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        assert runner.server is not None
        factory = guard.protocol_factory(
            runner.server,
            access_log=None,
            # The guard closes idle connections first; aiohttp's own timer is the backstop.
            keepalive_timeout=(limits.idle_timeout + limits.header_timeout).total_seconds(),
            # Bodies reach the handlers as sent: each format decompresses within its own limits
            # (a gzip body aiohttp could not decode used to end in a traceback, even unauthenticated).
            auto_decompress=False,
        )
        try:
            site = _Site(runner, self._host, self._port, factory, self._tls is not None)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        runner, self._runner = self._runner, None
        if self.guard is not None:
            self.guard.close()
        if runner is not None:
            await runner.cleanup()
