"""One upstream the proxy relays to (the local server, the cloud model): its session, TLS, credentials.

Each upstream owns one keep-alive ``ClientSession`` (an async context manager). aiohttp's errors are
translated here, once, into :class:`UpstreamError`, so the relaying code never catches
``aiohttp.ClientError`` itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDict

from agent.proxy.errors import UpstreamError
from backhaul.tls import ClientTls

# RFC 9110 hop-by-hop headers, plus what aiohttp recomputes (length, host) and compression, which the
# proxy asks the upstreams not to use (it must read token counts), and the proxy's own routing header.
_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "x-backhaul-route",
    }
)


def forwardable(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _DROP)


def header_bytes(headers: Mapping[str, str]) -> int:
    """Roughly what the headers take on the wire ("Name: value\\r\\n" each)."""
    return sum(len(k) + len(v) + 4 for k, v in headers.items())


class Upstream:
    """An HTTP upstream with its own session.

    Args:
        name: ``local`` or ``cloud`` (the label on metrics and errors).
        base_url: where paths are appended.
        timeout: whole-request limit in seconds.
        token: when set, sent as ``Authorization: Bearer`` instead of the client's header.
        model_map: request ``model`` names to replace (JSON bodies only).
        tls: TLS settings, reloaded when their files change (None: the system's CAs, the URL's host).
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        timeout: float,
        token: str = "",
        model_map: Mapping[str, str] | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._auth = f"Bearer {token}" if token else None
        self._model_map = dict(model_map or {})
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Upstream:
        if self._session is not None:
            raise RuntimeError(f"the {self.name} upstream is open already")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            auto_decompress=False,  # bytes pass through as the upstream sent them
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def maps_models(self) -> bool:
        return bool(self._model_map)

    def headers(self, incoming: Mapping[str, str]) -> CIMultiDict[str]:
        headers = forwardable(incoming)
        if self._auth is not None:
            headers["Authorization"] = self._auth
        return headers

    def body(self, raw: bytes, parsed: dict[str, Any] | None) -> bytes:
        """The body to send: ``raw``, or re-encoded with the mapped model name."""
        if not self._model_map or parsed is None:
            return raw
        model = parsed.get("model")
        if not isinstance(model, str) or model not in self._model_map:
            return raw
        return json.dumps({**parsed, "model": self._model_map[model]}).encode()

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """The upstream's response once its headers arrived (the caller reads and releases it)."""
        assert self._session is not None, f"open the {self.name} upstream first"
        tls = self._tls  # its context is read per request: renewed certificates apply at once
        try:
            return await self._session.request(
                method,
                self.base_url + path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
                ssl=tls.context if tls is not None else True,
                server_hostname=tls.server_name if tls is not None else None,
            )
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("connect", self.name, f"{self.base_url} unreachable: {exc.strerror or exc}") from exc
        except TimeoutError as exc:
            raise UpstreamError("timeout", self.name, f"no answer within {self.timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("reset", self.name, f"failed: {type(exc).__name__}") from exc

    async def chunk(self, response: aiohttp.ClientResponse) -> bytes:
        """The next piece of the body as it arrives (b"" at its end); a broken connection is an UpstreamError."""
        with self._answer_errors():
            return await response.content.readany()

    async def read(self, response: aiohttp.ClientResponse) -> bytes:
        with self._answer_errors():
            return await response.read()

    @contextlib.contextmanager
    def _answer_errors(self) -> Iterator[None]:
        """While an answer's body is read: aiohttp's errors become :class:`UpstreamError`."""
        try:
            yield
        except TimeoutError as exc:
            raise UpstreamError("timeout", self.name, f"answer not complete within {self.timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("reset", self.name, f"answer broke off: {type(exc).__name__}") from exc
