"""What the proxy asks of the device's metered link before it escalates a request.

Escalated requests travel over the same link as the bulk upload, so they spend the same budget. The
agent passes the uplink's :class:`~agent.uplink.link.Link` (issue 13) as the proxy's
:class:`LinkGate`: ``blocked()`` says "window" outside the upload windows and "budget" once the
budget is spent, ``count()`` adds to the bytes it has spent. The proxy wraps it in
:class:`CountedLink`, which also counts what it charged in ``backhaul_proxy_link_bytes_total``.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter


class LinkGate(Protocol):
    """The link as the proxy sees it."""

    def blocked(self) -> str | None:
        """None if the link may carry bulk traffic now, else why not (e.g. ``"budget"``, ``"window"``)."""
        ...

    def count(self, nbytes: int) -> None:
        """``nbytes`` that escalated traffic put on the link (sent and received), for the budget."""
        ...


class CountedLink:
    """Counts escalated bytes in ``backhaul_proxy_link_bytes_total`` and passes the question and the
    bytes on to ``link``; without one the link is unmetered (never blocked).

    Args:
        registry: where the counter is registered.
        link: the metered link (the uplink's), or None.
    """

    def __init__(self, registry: CollectorRegistry, link: LinkGate | None = None) -> None:
        self.link = link
        self._bytes = Counter(
            "backhaul_proxy_link_bytes",
            "Bytes escalated requests put on the link, as charged to its budget",
            registry=registry,
        )

    def blocked(self) -> str | None:
        return self.link.blocked() if self.link is not None else None

    def count(self, nbytes: int) -> None:
        self._bytes.inc(nbytes)
        if self.link is not None:
            self.link.count(nbytes)


class UnmeteredLink(CountedLink):
    """A link without budget or window: never blocked; only counts (a proxy run on its own, tests).

    Args:
        registry: where the counter is registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
