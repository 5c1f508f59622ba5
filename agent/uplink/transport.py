"""How a batch reaches the collector: a tiny interface, one HTTP implementation.

The uploader hands over the batch as structure (its header and chunk frames); the transport encodes
the body once, after any table rewrite. The uploader only sees a :class:`~backhaul.http.Reply` or a
:class:`~backhaul.errors.PeerError`, never aiohttp's exceptions (:mod:`backhaul.http` translates them).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Protocol

from agent.uplink.tables import TableRefs
from backhaul import __version__
from backhaul.http import HttpClient, LinkHooks, Reply
from backhaul.tls import ClientTls
from backhaul.wire import batch as batchfmt
from backhaul.wire.batch import CONTENT_TYPE, TABLES_HEADER, BatchHeader

# Bigger batches (a backlog's batches of large chunks, where the table is a small share) go as they are
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
    async def send(self, header: BatchHeader, frames: list[bytes]) -> Reply:
        """Send one batch; a Reply for any answer, :class:`~backhaul.errors.PeerError` for none
        (``kind`` "blocked" when the link did not admit it). ``Reply.sent_bytes`` is the body bytes
        that went out for the batch."""
        ...

    async def close(self) -> None: ...


class HttpTransport:
    """POSTs batches to the collector's batch endpoint with a bearer token.

    Args:
        url: the collector's batch endpoint, e.g. ``https://collector:9300/api/v1/batches``.
        token: this device's bearer token.
        timeout: seconds for the whole request, connect to last byte of the reply.
        zstd_level: for chunks re-compressed without their series table.
        tls: the uplink's TLS settings for an https URL (None: the system's CAs).
        link: the metered link batches go over (its cap, budgets, windows), None for none.
        source: the local address to bind connections to, asked per request (None: never bound).
    """

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float,
        zstd_level: int = 3,
        tls: ClientTls | None = None,
        link: LinkHooks | None = None,
        source: Callable[[], str | None] | None = None,
    ) -> None:
        self._url = url
        headers = {"Content-Type": CONTENT_TYPE}
        agent = f"backhaul-agent/{__version__}"
        self._client = HttpClient(timeout, agent, token, headers, tls=tls, link=link, source=source)
        self._zstd_level = zstd_level
        self.tables = TableRefs(zstd_level)

    def set_token(self, token: str) -> None:
        """A reload: the next batches carry ``token``."""
        self._client.set_token(token)

    async def send(self, header: BatchHeader, frames: list[bytes]) -> Reply:
        """Send one batch; once the collector keeps series tables, chunks whose table it already has
        go without it. A collector that no longer has a table answers 409 naming it: the batch is
        sent again at once with its tables."""
        if not self.tables.supported or sum(len(f) for f in frames) > TABLE_REFS_MAX_BODY:
            reply = await self._post(header, frames)
            self._learn(reply, [])
            return reply
        sent_header, sent, digests = await asyncio.to_thread(self.tables.rewrite, header, frames)
        reply = await self._post(sent_header, sent)
        if reply.status == 409:  # the only 409 a collector gives: it lacks a table this batch refers to
            unknown = _unknown_tables(reply.text)
            self.tables.forget(digests if unknown is None else unknown)
            sent_header, sent, digests = await asyncio.to_thread(self.tables.rewrite, header, frames, False)
            reply = await self._post(sent_header, sent)
        self._learn(reply, digests)
        return reply

    async def _post(self, header: BatchHeader, frames: list[bytes]) -> Reply:
        return await self._client.post(self._url, batchfmt.encode(header, frames))

    def _learn(self, reply: Reply, digests: list[str]) -> None:
        if not reply.ok:
            return
        keeps = any(k.lower() == TABLES_HEADER.lower() and v == "1" for k, v in reply.headers.items())
        if keeps:
            self.tables.acknowledged(digests)
        elif self.tables.supported:
            self.tables = TableRefs(self._zstd_level)  # another collector behind the same address: start over
        self.tables.supported = keeps

    async def close(self) -> None:
        await self._client.close()
