"""Operator credentials for the read endpoints: everything the collector holds is every device's data.

    GET /api/v1/export, /api/v1/fleet, /fleet, /api/v1/alerts, /metrics

need a ``[read]`` token (:mod:`collector.read_settings`), sent as ``Authorization: Bearer <token>`` or,
so that a browser can open the fleet page, as the password of HTTP basic auth (any user name). Device
tokens are a separate list and never read: a token that is both is refused at start. Only digests are
compared, in constant time. ``[read] auth = "none"`` opens the endpoints; the start log says so.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging

from aiohttp import web

from backhaul.errors import AuthError, ConfigError
from backhaul.web import Handler
from collector.read_settings import ReadSettings
from collector.store import Store
from collector.tokens import token_digest

log = logging.getLogger(__name__)

READ_ENDPOINTS = "/api/v1/export, /api/v1/fleet, /fleet, GET /api/v1/alerts and /metrics"
# Browsers show a login dialog for Basic; API clients see that a bearer token works too.
PAGE_CHALLENGE = 'Basic realm="backhaul", charset="UTF-8"'
API_CHALLENGE = 'Bearer realm="backhaul", Basic realm="backhaul", charset="UTF-8"'


def presented_token(authorization: str | None) -> str | None:
    """The token in a ``Bearer`` header, or the password of a ``Basic`` one; None when there is neither."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


class ReadAuth:
    """Checks read credentials; :meth:`protect` wraps a read endpoint's handler.

    Args:
        settings: the ``[read]`` section.
    """

    def __init__(self, settings: ReadSettings) -> None:
        self.open = settings.auth == "none"
        self._digests = [(t.name, t.digest()) for t in settings.tokens]

    def log_start(self) -> None:
        if self.open:
            log.warning(
                'read endpoints (%s) are open to anyone who reaches the listener: [read] auth = "none"', READ_ENDPOINTS
            )
        elif not self._digests:
            log.warning("read endpoints (%s) answer 401 to everyone: no [read] tokens are configured", READ_ENDPOINTS)
        else:
            log.info("read endpoints need a [read] token (%d configured)", len(self._digests))

    async def refuse_device_tokens(self, store: Store) -> None:
        """A read token that is also a device's token would let that device read: refuse to start."""
        for name, digest in self._digests:
            found = await store.registration(digest)
            if found is not None:
                raise ConfigError(
                    f"invalid config: read.tokens: the token of {name!r} is device {found.device!r}'s token too; "
                    "a device token must never read"
                )

    def reader(self, authorization: str | None, challenge: str) -> str:
        """The name of the operator the header authenticates; :class:`AuthError` (401) otherwise."""
        token = presented_token(authorization)
        if token is None:
            raise AuthError(401, "a read credential is required: a [read] token as bearer, or basic auth", challenge)
        digest = token_digest(token)
        found = None
        for name, expected in self._digests:  # every entry compared: the time says nothing about which
            if hmac.compare_digest(digest, expected):
                found = name
        if found is None:
            raise AuthError(401, "not a read token (device tokens cannot read)", challenge)
        return found

    def protect(self, handler: Handler, page: bool = False) -> Handler:
        """``handler`` behind the read credential (``page``: a browser's page, which asks for basic auth)."""
        if self.open:
            return handler
        challenge = PAGE_CHALLENGE if page else API_CHALLENGE

        async def protected(request: web.Request) -> web.StreamResponse:
            self.reader(request.headers.get("Authorization"), challenge)
            return await handler(request)

        return protected
