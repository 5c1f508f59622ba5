"""Answering HTTP requests with the error tree: the one place where an error becomes a status.

Handlers raise (:mod:`backhaul.errors`) instead of building error responses. :func:`respond` turns
what they raise into the answer: its ``status`` and ``reason`` (bad input 400, too large 413, a wrong
credential 401/403 with ``WWW-Authenticate``, trouble with the store or an overload 503 with
``Retry-After``). Anything else is a bug: logged once with its traceback and answered 500, the only
500 the programs ever send.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from backhaul.errors import AuthError, BackhaulError, InputError, Unavailable, UnknownTables

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: BackhaulError, what: str = "request") -> web.Response:
    """The answer for an error a handler raised (``what`` names the endpoint in the log line)."""
    status = exc.status if 400 <= exc.status < 600 else 500
    headers: dict[str, str] = {}
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, AuthError) and status == 401:
        headers["WWW-Authenticate"] = exc.challenge
    (log.warning if status >= 500 else log.info)("%s refused (%d): %s", what, status, exc.reason)
    if isinstance(exc, UnknownTables):
        body = json.dumps({"unknown_tables": exc.digests, "reason": exc.reason})
        return web.Response(status=status, text=body, content_type="application/json", headers=headers)
    return web.Response(status=status, text=exc.reason + "\n", headers=headers)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body; one declared or found larger than ``limit`` bytes is refused (413)."""
    if request.content_length is not None and request.content_length > limit:
        raise InputError(f"request body of {request.content_length} bytes exceeds the limit of {limit}", 413)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:  # more than aiohttp's client_max_size (set to ``limit``)
        raise InputError(f"request body exceeds the limit of {limit} bytes", 413) from None


async def respond(handler: Handler, request: web.Request, what: str = "request") -> web.StreamResponse:
    """Run ``handler``; errors of the tree become their answers, anything else a logged 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # aiohttp's own answers (404, 405, 413 for bodies over client_max_size)
    except BackhaulError as exc:
        return error_response(exc, what)
    except ConnectionError:
        # The client went away mid-request, or the listener closed a body that did not arrive in time
        # (backhaul.listener): nobody is left to answer, and nothing to log but the listener's count.
        return web.Response(status=408, text="request not received in full\n")
    except Exception:
        log.exception("%s %s failed: a bug", request.method, request.path)
        return web.Response(status=500, text="internal error (logged)\n")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """For every route: the same mapping, so no handler can answer 500 for a known error."""
    return await respond(handler, request)
