"""The proxy's errors, in the project's tree (:mod:`backhaul.errors`).

PeerError
└── UpstreamError     an upstream gave no answer (kind: connect, timeout, reset)
"""

from __future__ import annotations

from backhaul.errors import PeerError


class UpstreamError(PeerError):
    """An upstream gave no answer.

    Args:
        kind: ``connect`` (refused, unreachable, TLS), ``timeout`` or ``reset`` (the connection broke).
        upstream: ``local`` or ``cloud``.
        detail: for the log and the client.
    """

    def __init__(self, kind: str, upstream: str, detail: str) -> None:
        super().__init__(kind, f"{upstream} upstream: {detail}")
        self.upstream = upstream
        self.detail = detail
