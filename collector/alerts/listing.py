"""``GET /api/v1/alerts``: the latest state of each alert instance as JSON, newest change first;
filters ``?device=``, ``?state=firing|resolved``."""

from __future__ import annotations

import math

from aiohttp import web

from backhaul.errors import InputError
from collector.store import Store


class AlertLister:
    """Args: the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def handle(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state not in (None, "firing", "resolved"):
            raise InputError("state must be firing or resolved")
        device = request.query.get("device")
        found = await self._store.alerts(device, state)
        out = []
        for a in found:
            item = a.as_dict()
            item["fingerprint"] = f"{a.fingerprint:08x}"
            if a.value is not None and not math.isfinite(a.value):
                item["value"] = str(a.value)  # JSON has no Inf
            out.append(item)
        return web.json_response({"alerts": out})
