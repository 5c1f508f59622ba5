"""What the proxy asks of the device's metered link before it escalates a request.

Escalated requests travel over the same link as the bulk upload, so they spend the same budget.
The uplink's budgets and windows (issue 13) do not exist yet; until they do, the agent passes
:class:`UnmeteredLink`, which always allows and only counts. When they land, the uplink's budget
implements :class:`LinkGate` (``blocked()`` from its budget and window state, ``count()`` adding
to the bytes it has spent) and ``agent/app.py`` passes it instead; the proxy does not change.
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


class UnmeteredLink:
    """A link without budget or window: never blocked; counts bytes in ``backhaul_proxy_link_bytes_total``.

    Args:
        registry: where the counter is registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._bytes = Counter(
            "backhaul_proxy_link_bytes",
            "Bytes escalated requests put on the link, as counted for its budget (none applies yet)",
            registry=registry,
        )

    def blocked(self) -> str | None:
        return None

    def count(self, nbytes: int) -> None:
        self._bytes.inc(nbytes)
