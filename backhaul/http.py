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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from yarl import URL

from backhaul.errors import PeerError
from backhaul.tls import ClientTls, tls_problem

# The answer's body is kept for log lines and error details only: its start is enough.
READ_LIMIT = 4096


@dataclass
class Reply:
    """A peer's answer: status, headers, the start of the body, and the body bytes that went out."""

    status: int
    headers: dict[str, str]
    text: str
    sent_bytes: int = 0

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
    """

    def __init__(
        self,
        timeout: float,
        user_agent: str,
        token: str = "",
        headers: Mapping[str, str] | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.timeout = timeout
        self._tls = tls
        self._headers = {**(headers or {}), "User-Agent": user_agent}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """POST ``body`` to ``url`` (``headers`` on top of the client's); any answer is a Reply."""
        if self._session is None:
            # Created on first use: a session belongs to the running event loop.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        sent = {**self._headers, **headers} if headers else self._headers
        tls = self._tls
        try:
            async with self._session.post(
                url,
                data=body,
                headers=sent,
                ssl=tls.context if tls is not None else True,
                server_hostname=tls.server_name if tls is not None else None,
            ) as resp:
                text = (await resp.content.read(READ_LIMIT)).decode("utf-8", "replace")
                return Reply(resp.status, dict(resp.headers), text, len(body))
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            raise PeerError("timeout", f"no complete answer within {self.timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            problem = tls_problem(exc)
            if problem is not None:
                raise PeerError("tls", f"{problem} (at {URL(url).host}:{URL(url).port})") from exc
            kind = "connection" if isinstance(exc, aiohttp.ClientConnectionError) else "http"
            raise PeerError(kind, short(exc)) from exc

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
