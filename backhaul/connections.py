"""The connections of one HTTP listener: timeouts, the cap, and errors answered without echo.

Used by :class:`backhaul.listener.Listener` (whose docstring says what each limit means). Every
connection's protocol is a :class:`_Guarded` wrapper around aiohttp's own handler: it tells the
:class:`ConnectionGuard` when the connection starts, when bytes arrive and when it ends; the guard's
middleware tells it when a request's handler starts and ends. One timer per connection enforces
whichever limit applies at the moment (headers, body, idle). The idle connections are kept in LRU
order, so at the cap the one idle the longest is closed to make room.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

# One summary line per this many seconds at most.
LOG_EVERY = 60.0


class ListenerMetrics:
    """Args: registry, and the metric name prefix (``backhaul`` or ``backhaul_collector``)."""

    def __init__(self, registry: CollectorRegistry | None, prefix: str) -> None:
        self.open = Gauge(f"{prefix}_http_connections", "Open HTTP connections", registry=registry)
        self.closed = Counter(
            f"{prefix}_http_connections_closed",
            "HTTP connections the listener closed or refused, by reason "
            "(idle_timeout, header_timeout, body_timeout, evicted, refused, bad_request)",
            ["reason"],
            registry=registry,
        )


class _Tally:
    """Counts events and logs them as one line per LOG_EVERY seconds (the first one at once)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._counts: collections.Counter[str] = collections.Counter()
        self._next = 0.0
        self._flush: asyncio.TimerHandle | None = None

    def add(self, what: str) -> None:
        self._counts[what] += 1
        now = time.monotonic()
        if now >= self._next:
            self.flush()
            self._next = now + LOG_EVERY
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self._next - now, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._counts:
            parts = ", ".join(f"{what} {n}" for what, n in self._counts.most_common())
            log.warning("%s: closed or refused connections: %s", self._name, parts)
            self._counts.clear()


@dataclass(eq=False)
class _Conn:
    transport: asyncio.Transport
    busy: int = 0  # requests whose handler runs
    timer: asyncio.TimerHandle | None = None
    reason: str = ""  # what the timer enforces
    request: web.BaseRequest | None = None


def _handshake_problem(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    if isinstance(exc, TimeoutError):
        return "not finished in time"
    return type(exc).__name__


def _safe_reason(exc: BaseException | None) -> str:
    """What a parse error means, in words that quote nothing the client sent."""
    if isinstance(exc, LineTooLong):
        return "a request line or header is too long"
    if isinstance(exc, BadStatusLine):
        return "malformed request line"
    if isinstance(exc, HttpProcessingError):
        return "malformed request headers or body framing"
    return "malformed request"


class _Handler(web.RequestHandler):
    """aiohttp's connection handler with answers and log lines that never repeat what the client sent."""

    guard: ConnectionGuard

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)  # a bug: logged with its traceback
        self.guard.note("bad_request", type(exc).__name__ if exc is not None else "unknown")
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot answer the error")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        resp = web.Response(status=status, text=f"{status} {phrase}: {_safe_reason(exc)}\n")
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError | ConnectionError | RequestPayloadError):
            # A client that sent a broken body or went away: its business, one counted line at most.
            self.guard.note("bad_request", type(exc).__name__)
            return
        super().log_exception(*args, **kw)


class _Guarded(asyncio.Protocol):
    """The transport's protocol: admits the connection through the guard, does the TLS handshake when
    the listener has TLS (so that the guard's timer, its cap and its log cover handshakes too), then
    hands everything on to aiohttp's handler."""

    def __init__(self, guard: ConnectionGuard, inner: _Handler) -> None:
        self._guard = guard
        self._inner = inner
        self._conn: _Conn | None = None
        self._pending: list[bytes] | None = None  # data decrypted before the handler was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._conn = self._guard.admit(transport)
        if self._conn is None:
            return
        if self._guard.tls is None:
            self._inner.connection_made(transport)
        else:
            self._pending = []
            self._guard.handshake(self, self._conn)

    def secured(self, transport: asyncio.Transport) -> None:
        """The handshake is done: the handler starts on the TLS transport, with what already arrived."""
        pending, self._pending = self._pending or [], None
        self._inner.connection_made(transport)
        for data in pending:
            self._inner.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._conn is None:
            return
        self._guard.activity(self._conn)
        if self._pending is not None:
            self._pending.append(data)
        else:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._conn is not None and self._pending is None:
            self._inner.eof_received()
        return None  # as aiohttp's handler: the transport closes its side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._guard.forget(self._conn)
            if self._pending is None:
                self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    """Timeouts and the cap for one listener's connections (see the module docstring).

    Args:
        header, body, idle: the timeouts, in seconds (``header_timeout``, ``body_timeout``, ``idle_timeout``).
        cap: the connection cap in force (``max_connections``, or lower to fit the open-file limit).
        metrics: where closes are counted.
        name: the listener, for log lines.
        tls: the context to do a server-side TLS handshake with on every connection, or None.
    """

    def __init__(
        self,
        header: float,
        body: float,
        idle: float,
        cap: int,
        metrics: ListenerMetrics,
        name: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.cap = cap
        self.tls = tls
        self._handshakes: set[asyncio.Task[None]] = set()
        self._header, self._body, self._idle = header, body, idle
        self._metrics = metrics
        self._tally = _Tally(name)
        self._conns: dict[asyncio.Transport, _Conn] = {}
        self._idle_lru: collections.OrderedDict[_Conn, None] = collections.OrderedDict()
        metrics.open.set_function(lambda: len(self._conns))

    def protocol_factory(self, server: web.Server, **handler_args: Any) -> Callable[[], asyncio.Protocol]:
        loop = asyncio.get_running_loop()

        def make() -> asyncio.Protocol:
            inner = _Handler(server, loop=loop, **handler_args)
            inner.guard = self
            return _Guarded(self, inner)

        return make

    def note(self, reason: str, detail: str = "") -> None:
        self._metrics.closed.labels(reason).inc()
        self._tally.add(f"{reason} ({detail})" if detail else reason)

    # -- connection events --

    def admit(self, transport: asyncio.Transport) -> _Conn | None:
        if len(self._conns) >= self.cap:
            if self._idle_lru:
                oldest, _ = self._idle_lru.popitem(last=False)
                self._close(oldest, "evicted")
            else:
                self.note("refused", f"{self.cap} connections busy")
                transport.abort()
                return None
        conn = _Conn(transport)
        self._conns[transport] = conn
        self._idle_lru[conn] = None
        self._arm(conn, "header_timeout", self._header)
        return conn

    def handshake(self, protocol: _Guarded, conn: _Conn) -> None:
        task = asyncio.get_running_loop().create_task(self._handshake(protocol, conn))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, protocol: _Guarded, conn: _Conn) -> None:
        assert self.tls is not None
        raw = conn.transport
        try:
            secured = await asyncio.get_running_loop().start_tls(
                raw, protocol, self.tls, server_side=True, ssl_handshake_timeout=self._header
            )
        except (OSError, TimeoutError) as exc:
            # A client certificate from an unknown CA, plain HTTP on the TLS port, a scanner: one counted
            # line a minute, saying what failed (never what the client sent).
            if conn.transport in self._conns:
                self.forget(conn)
                self.note("tls_handshake", _handshake_problem(exc))
            return
        if secured is None or conn.transport not in self._conns:  # closed meanwhile (a timeout, the cap)
            return
        del self._conns[raw]
        conn.transport = secured
        self._conns[secured] = conn
        protocol.secured(secured)

    def activity(self, conn: _Conn) -> None:
        if conn.busy:
            return
        if conn in self._idle_lru:
            self._idle_lru.move_to_end(conn)
        if conn.reason == "idle_timeout":  # a new request begins: its headers are now on the clock
            self._arm(conn, "header_timeout", self._header)

    def forget(self, conn: _Conn) -> None:
        self._cancel(conn)
        self._conns.pop(conn.transport, None)
        self._idle_lru.pop(conn, None)

    def started(self, request: web.BaseRequest) -> _Conn | None:
        conn = self._conns.get(request.transport) if request.transport is not None else None
        if conn is None:
            return None
        conn.busy += 1
        self._idle_lru.pop(conn, None)
        self._cancel(conn)
        if request.body_exists and not request.content.is_eof():
            conn.request = request
            self._arm(conn, "body_timeout", self._body)
        return conn

    def finished(self, conn: _Conn | None) -> None:
        if conn is None or conn.transport not in self._conns:
            return
        conn.busy -= 1
        if conn.busy == 0:
            conn.request = None
            self._idle_lru[conn] = None
            self._arm(conn, "idle_timeout", self._idle)

    # -- timers --

    def _arm(self, conn: _Conn, reason: str, delay: float) -> None:
        self._cancel(conn)
        conn.reason = reason
        conn.timer = asyncio.get_running_loop().call_later(delay, self._expired, conn)

    def _cancel(self, conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.reason = ""

    def _expired(self, conn: _Conn) -> None:
        conn.timer = None
        if conn.reason == "body_timeout" and (conn.request is None or conn.request.content.is_eof()):
            return  # the body is in; the handler is still at work, which is no timeout of ours
        self._close(conn, conn.reason)

    def _close(self, conn: _Conn, reason: str) -> None:
        if reason == "idle_timeout":
            self._metrics.closed.labels(reason).inc()  # routine: counted, not logged
        else:
            self.note(reason)
        self.forget(conn)
        if reason == "body_timeout":
            conn.transport.abort()  # the handler waiting for the body sees the connection gone
        else:
            conn.transport.close()

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._cancel(conn)
        for task in self._handshakes:
            task.cancel()
        self._tally.flush()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        conn = self.started(request)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            self.finished(conn)
