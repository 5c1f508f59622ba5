"""Security headers on every collector answer, and the fleet page's Content-Security-Policy.

Every answer: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy:
no-referrer`` and a policy that allows nothing (``default-src 'none'; frame-ancestors 'none'``). The
fleet page gets a policy that allows exactly its own inline script and style, by their SHA-256, and
fetches to its own origin: an injected script or style, a frame around the page, a form or a base URL
elsewhere are all refused by the browser.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re

from aiohttp import web

from backhaul.web import Handler

DEFAULT_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_INLINE = re.compile(rb"<(script|style)(?:\s[^>]*)?>(.*?)</\1\s*>", re.S | re.I)


@functools.lru_cache(maxsize=4)
def page_policy(html: bytes) -> str:
    """The Content-Security-Policy for ``html``: its inline scripts and styles, by hash, and nothing else."""
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for tag, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        hashes[tag.lower()].append(f"'sha256-{digest}'")
    script = " ".join(hashes[b"script"]) or "'none'"
    style = " ".join(hashes[b"style"]) or "'none'"
    return (
        f"default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the headers every answer carries (a page's own policy is kept)."""
    h = response.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("Content-Security-Policy", DEFAULT_POLICY)


def page(handler: Handler) -> Handler:
    """Serve an HTML page with the policy made for its body."""

    async def with_policy(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            response.headers["Content-Security-Policy"] = page_policy(response.body)
            response.headers["Cache-Control"] = "no-store"
        return response

    return with_policy
