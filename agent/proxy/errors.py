"""The proxy's errors.

ProxyError
├── ProxySetupError   the proxy cannot start as configured (TLS files)
└── UpstreamError     an upstream gave no answer (kind: connect, timeout, reset)
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base of the proxy's errors."""


class ProxySetupError(ProxyError):
    """The proxy cannot start as configured; the message names the setting."""


class UpstreamError(ProxyError):
    """An upstream gave no answer.

    Args:
        kind: ``connect`` (refused, unreachable, TLS), ``timeout`` or ``reset`` (the connection broke).
        upstream: ``local`` or ``cloud``.
        detail: for the log and the client.
    """

    def __init__(self, kind: str, upstream: str, detail: str) -> None:
        super().__init__(f"{upstream} upstream: {detail}")
        self.kind = kind
        self.upstream = upstream
        self.detail = detail
