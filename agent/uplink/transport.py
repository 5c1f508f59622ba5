"""How a batch body reaches the collector: a tiny interface, one HTTP implementation.

The uploader only sees :class:`Reply` or :class:`TransportError`, never aiohttp's exceptions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from backhaul import __version__
from backhaul.wire.batch import CONTENT_TYPE


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str


class TransportError(Exception):
    """No HTTP answer: refused, reset, timed out, DNS ... (``reason`` is a short metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _short(exc: Exception) -> str:
    """aiohttp may put a whole half-received response in the message: keep the log line readable."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


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

    def __init__(self, url: str, token: str, timeout: float) -> None:
        self._url = url
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": CONTENT_TYPE,
            "User-Agent": f"backhaul-agent/{__version__}",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, body: bytes) -> Reply:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as resp:
                text = (await resp.content.read(4096)).decode("utf-8", "replace")
                return Reply(resp.status, dict(resp.headers), text)
        except TimeoutError as exc:
            raise TransportError("timeout", f"no complete answer within {self._timeout.total} s") from exc
        except aiohttp.ClientConnectionError as exc:
            raise TransportError("connection", _short(exc)) from exc
        except aiohttp.ClientError as exc:
            raise TransportError("http", _short(exc)) from exc
        except asyncio.CancelledError:
            raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
