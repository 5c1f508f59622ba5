"""One upstream the proxy relays to (the local server, the cloud model): its session, TLS, credentials.

Each upstream owns one keep-alive ``ClientSession`` (an async context manager). aiohttp's errors are
translated here, once, into :class:`UpstreamError`, so the relaying code never catches
``aiohttp.ClientError`` itself.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDict

from agent.proxy.errors import ProxySetupError, UpstreamError
from agent.proxy.settings import CloudSettings

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


def tls_context(cloud: CloudSettings) -> ssl.SSLContext | None:
    """A client TLS context when a CA file or client certificate is set (else aiohttp's default)."""
    if cloud.ca_file is None and cloud.client_cert is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(cloud.ca_file) if cloud.ca_file else None)
        if cloud.client_cert is not None:
            key = str(cloud.client_key) if cloud.client_key is not None else None
            context.load_cert_chain(str(cloud.client_cert), key)
    except (OSError, ssl.SSLError) as exc:
        raise ProxySetupError(f"proxy.cloud TLS files (ca_file, client_cert, client_key): {exc}") from exc
    return context


class Upstream:
    """An HTTP upstream with its own session.

    Args:
        name: ``local`` or ``cloud`` (the label on metrics and errors).
        base_url: where paths are appended.
        timeout: whole-request limit in seconds.
        token: when set, sent as ``Authorization: Bearer`` instead of the client's header.
        model_map: request ``model`` names to replace (JSON bodies only).
        ssl_context: TLS settings (None: aiohttp's default verification).
        server_name: the TLS name to verify when it differs from the URL's host.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        timeout: float,
        token: str = "",
        model_map: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._auth = f"Bearer {token}" if token else None
        self._model_map = dict(model_map or {})
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._server_name = server_name
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Upstream:
        if self._session is not None:
            raise RuntimeError(f"the {self.name} upstream is open already")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, ssl=self._ssl),
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
        extra: dict[str, Any] = {}
        if self._server_name is not None:
            extra["server_hostname"] = self._server_name
        try:
            return await self._session.request(
                method, self.base_url + path_qs, headers=headers, data=body, allow_redirects=False, **extra
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
