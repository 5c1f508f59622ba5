"""Posting to a peer over HTTP: the one place where aiohttp's errors become the project's own.

Every sender (the agent's uploader transports and its alert channel, the collector's forwarders to a
time-series database and to Alertmanager) posts through an :class:`HttpClient`. It owns its aiohttp
session, so no sender shares a connection pool with another (an alert never waits behind a batch),
and it answers with a :class:`Reply` or raises :class:`~backhaul.errors.PeerError` whose ``kind`` is
``timeout``, ``connection`` or ``http``. What it raises is fit for a log line: one line, at most 200
characters of aiohttp's message (which can hold a half-received response), and never a request
header, so an ``Authorization`` value cannot reach the log. With a :class:`~backhaul.tls.ClientTls` it
verifies the server against its CA and presents its client certificate, asking for the newest context
on every request (a reload applies to the next connection); a TLS failure is ``kind`` ``tls``.

A client may be given the :class:`LinkHooks` of a metered link (the bulk uplink's cap, budgets and
windows, or the alert lane's own budget). Then every request is first admitted by the link (refused
with ``PeerError("blocked", reason)`` before a byte goes out), its body is streamed in the link's
slices, each waiting for the cap's tokens, and every byte of it is counted: the request line and
headers as aiohttp sends them, the body as it goes, the answer's status line, headers and body. A
failed attempt is counted as far as it got, since those bytes were paid for too.

A client may also be given ``source``: asked before every request for the local address to bind the
connection to (one of several links, ``[[uplink.links]] source_address``; None: the kernel picks). Each
address has its own session and pool, so a switch of link never reuses a connection of the old one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace, TracebackType
from typing import Protocol

import aiohttp
from yarl import URL

from backhaul.errors import PeerError
from backhaul.tls import ClientTls, tls_problem

# The answer's body is kept for log lines and error details only: its start is enough.
READ_LIMIT = 4096
# Bodies are streamed to a metered link in slices of at most this size.
SLICE = 16 * 1024


class LinkHooks(Protocol):
    """What a metered link asks of each request sent over it (see the module docstring)."""

    async def admit(self, nbytes: int) -> str | None:
        """Before a request with a body of ``nbytes``: None if it may go now, else why not."""
        ...

    async def take(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may go out (a cap); return at once for a link without one."""
        ...

    def count(self, nbytes: int) -> None:
        """``nbytes`` went out or came in."""
        ...

    def done(self) -> None:
        """The request admitted last is over (answered or failed)."""
        ...

    def slack(self, nbytes: int) -> float:
        """Seconds to add to the timeout of a request with ``nbytes`` of body (time a cap adds)."""
        ...


@dataclass
class Reply:
    """A peer's answer: status, headers, the start of the body, and the body bytes that went out."""

    status: int
    headers: dict[str, str]
    text: str
    sent_bytes: int = 0
    # Bytes on the wire for this request and its answer, headers included (counted on a metered link).
    wire_bytes: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def short(exc: BaseException) -> str:
    """An exception as one readable line: its type and the first line of its message, cut at 200."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class HttpClient:
    """POSTs bodies and translates every failure to :class:`PeerError`; an async context manager.

    Args:
        timeout: seconds for a whole request, from connecting to the last byte of the answer.
        user_agent: the ``User-Agent`` header, e.g. ``backhaul-agent/1.2.0``.
        token: a bearer token sent as ``Authorization`` (never logged), or "" for none.
        headers: more headers sent with every request (the two above win).
        tls: CA, client certificate and server name to use for https URLs (None: the system's CAs).
        link: the metered link the requests go over (None: not metered, not paced).
        source: the local address to bind each request's connection to, asked per request (see the
            module docstring); None: never bound.
    """

    def __init__(
        self,
        timeout: float,
        user_agent: str,
        token: str = "",
        headers: Mapping[str, str] | None = None,
        tls: ClientTls | None = None,
        link: LinkHooks | None = None,
        source: Callable[[], str | None] | None = None,
    ) -> None:
        self.timeout = timeout
        self._source = source
        self._sessions: dict[str, aiohttp.ClientSession] = {}  # by bound local address
        self._tls = tls
        self._headers = {**(headers or {}), "User-Agent": user_agent}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None
        self.link = link
        self._counted = 0  # bytes of the request in progress counted so far

    def _open(self) -> aiohttp.ClientSession:
        address = self._source() if self._source is not None else None
        session = self._session if address is None else self._sessions.get(address)
        if session is None:
            # Created on first use: a session belongs to the running event loop.
            traces = []
            if self.link is not None:
                trace = aiohttp.TraceConfig()
                trace.on_request_headers_sent.append(self._headers_sent)
                traces.append(trace)
            connector = aiohttp.TCPConnector(local_addr=(address, 0)) if address is not None else None
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), trace_configs=traces, connector=connector
            )
            if address is None:
                self._session = session
            else:
                self._sessions[address] = session
        return session

    def _count(self, nbytes: int) -> None:
        if self.link is not None:
            self._counted += nbytes
            self.link.count(nbytes)

    async def _headers_sent(
        self, _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
    ) -> None:
        # As aiohttp writes them: "POST /path HTTP/1.1", then "Name: value" lines, then a blank line.
        line = len(params.method) + len(params.url.raw_path_qs) + 12
        self._count(line + sum(len(k) + len(v) + 4 for k, v in params.headers.items()) + 2)

    async def _paced(self, body: bytes, link: LinkHooks) -> AsyncIterator[bytes]:
        for start in range(0, len(body), SLICE):
            piece = body[start : start + SLICE]
            await link.take(len(piece))
            yield piece
            # Counted once aiohttp wrote it to a live connection (a dead one raises at the yield).
            self._count(len(piece))
            await asyncio.sleep(0)  # let a reset from the peer be seen before the next slice

    def set_token(self, token: str) -> None:
        """A reload: the next requests carry ``token`` ("" for none)."""
        headers = {k: v for k, v in self._headers.items() if k != "Authorization"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers

    async def post(self, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """POST ``body`` to ``url`` (``headers`` on top of the client's); any answer is a Reply."""
        session = self._open()
        sent = {**self._headers, **headers} if headers else self._headers
        link = self.link
        if link is None:
            return await self._post(session, url, body, sent, self.timeout)
        reason = await link.admit(len(body))
        if reason is not None:
            raise PeerError("blocked", reason)
        self._counted = 0
        try:
            # Headers are paced like the body (aiohttp sends them before the first slice).
            await link.take(sum(len(k) + len(v) + 4 for k, v in sent.items()) + 200)
            streamed = {**sent, "Content-Length": str(len(body))}
            reply = await self._post(
                session, url, self._paced(body, link), streamed, self.timeout + link.slack(len(body))
            )
        finally:
            link.done()
        reply.wire_bytes = self._counted
        return reply

    async def _post(
        self,
        session: aiohttp.ClientSession,
        url: str,
        data: bytes | AsyncIterator[bytes],
        headers: Mapping[str, str],
        seconds: float,
    ) -> Reply:
        size = len(data) if isinstance(data, bytes) else int(headers["Content-Length"])
        tls = self._tls
        try:
            async with session.post(
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
                ssl=tls.context if tls is not None else True,
                server_hostname=tls.server_name if tls is not None else None,
            ) as resp:
                read = await resp.content.read(READ_LIMIT)
                text = read.decode("utf-8", "replace")
                # The answer: status line, headers and body (its declared length, or what was read).
                answer = len(resp.reason or "") + 15 + sum(len(k) + len(v) + 4 for k, v in resp.raw_headers) + 2
                self._count(answer + (resp.content_length if resp.content_length is not None else len(read)))
                return Reply(resp.status, dict(resp.headers), text, size)
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            raise PeerError("timeout", f"no complete answer within {seconds:g} s") from exc
        except aiohttp.ClientError as exc:
            problem = tls_problem(exc)
            if problem is not None:
                raise PeerError("tls", f"{problem} (at {URL(url).host}:{URL(url).port})") from exc
            kind = "connection" if isinstance(exc, aiohttp.ClientConnectionError) else "http"
            raise PeerError(kind, short(exc)) from exc

    async def close(self) -> None:
        sessions = [*self._sessions.values(), *([self._session] if self._session is not None else [])]
        self._session, self._sessions = None, {}
        for session in sessions:
            await session.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
