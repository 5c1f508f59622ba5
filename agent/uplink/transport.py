"""How a batch body reaches the collector: a tiny interface, one HTTP implementation.

The uploader only sees :class:`Reply` or :class:`~backhaul.errors.PeerError`, never aiohttp's exceptions.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from agent.uplink.tables import TableRefs
from backhaul import __version__
from backhaul.errors import PeerError
from backhaul.wire.batch import CONTENT_TYPE, TABLES_HEADER


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str
    sent_bytes: int = 0  # the body as it went out (0: the body the uploader gave)


def _short(exc: Exception) -> str:
    """aiohttp may put a whole half-received response in the message: keep the log line readable."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# Bigger bodies (a backlog's batches of large chunks, where the table is a small share) go as they are
# stored: rewriting them would cost the device memory and CPU for little.
TABLE_REFS_MAX_BODY = 1024 * 1024


def _unknown_tables(text: str) -> list[str] | None:
    """The digests a 409 answer says the collector does not have, or None if it is another 409."""
    try:
        found = json.loads(text).get("unknown_tables")
    except (ValueError, AttributeError):
        return None
    return [d for d in found if isinstance(d, str)] if isinstance(found, list) else None


class Transport(Protocol):
    async def send(self, body: bytes) -> Reply: ...

    async def close(self) -> None: ...


class HttpTransport:
    """POSTs batch bodies to the collector's batch endpoint with a bearer token.

    Args:
        url: the collector's batch endpoint, e.g. ``https://collector:9300/api/v1/batches``.
        token: this device's bearer token.
        timeout: seconds for the whole request, connect to last byte of the reply.
    """

    def __init__(self, url: str, token: str, timeout: float, zstd_level: int = 3) -> None:
        self._url = url
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": CONTENT_TYPE,
            "User-Agent": f"backhaul-agent/{__version__}",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.tables = TableRefs(zstd_level)

    async def send(self, body: bytes) -> Reply:
        """Send one batch; once the collector keeps series tables, chunks whose table it already has
        go without it. A collector that no longer has a table answers 409 naming it: the batch is
        sent again at once with its tables."""
        if not self.tables.supported or len(body) > TABLE_REFS_MAX_BODY:
            reply = await self._post(body)
            self._learn(reply, [])
            return reply
        sent, digests = await asyncio.to_thread(self.tables.rewrite, body)
        reply = await self._post(sent)
        if reply.status == 409:  # the only 409 a collector gives: it lacks a table this body refers to
            unknown = _unknown_tables(reply.text)
            self.tables.forget(digests if unknown is None else unknown)
            sent, digests = await asyncio.to_thread(self.tables.rewrite, body, False)
            reply = await self._post(sent)
        self._learn(reply, digests)
        reply.sent_bytes = len(sent)
        return reply

    def _learn(self, reply: Reply, digests: list[str]) -> None:
        if not 200 <= reply.status < 300:
            return
        keeps = any(k.lower() == TABLES_HEADER.lower() and v == "1" for k, v in reply.headers.items())
        if keeps:
            self.tables.acknowledged(digests)
        elif self.tables.supported:
            self.tables = TableRefs()  # another collector behind the same address: start over
        self.tables.supported = keeps

    async def _post(self, body: bytes) -> Reply:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as resp:
                text = (await resp.content.read(4096)).decode("utf-8", "replace")
                return Reply(resp.status, dict(resp.headers), text)
        except TimeoutError as exc:
            raise PeerError("timeout", f"no complete answer within {self._timeout.total} s") from exc
        except aiohttp.ClientConnectionError as exc:
            raise PeerError("connection", _short(exc)) from exc
        except aiohttp.ClientError as exc:
            raise PeerError("http", _short(exc)) from exc
        except asyncio.CancelledError:
            raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
