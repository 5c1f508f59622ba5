"""``GET /api/v1/export``: stored samples as JSON lines, in VictoriaMetrics' export format.

    /api/v1/export?match[]={__name__="up",job="node"}&start=1700000000&end=2024-01-01T00:00:00Z

One line per series: ``{"metric":{...labels},"values":[...],"timestamps":[...ms]}``. ``match[]`` may
repeat (union). ``start``/``end`` take Unix seconds (fractions allowed) or RFC 3339; both are
inclusive and optional. Prometheus stale markers are left out: they mark the end of a series, they
are not values.
"""

from __future__ import annotations

import json
import math
from datetime import datetime

from aiohttp import web

from backhaul.errors import SelectorError
from backhaul.selector import Selector
from backhaul.wire.remote_write import is_stale_marker
from collector.store import Store

# Series fetched per query: few round trips to the store thread, bounded memory per step.
SERIES_PER_QUERY = 500


def parse_time(text: str | None, default_ms: int) -> int:
    """Unix seconds or RFC 3339 to milliseconds; raises ValueError with the offending text."""
    if text is None or text == "":
        return default_ms
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise ValueError(f"{text!r} is neither Unix seconds nor an RFC 3339 time") from None


def _number(value: float) -> float | str:
    # JSON has no NaN/Inf; VictoriaMetrics writes them as these strings.
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return value


class Exporter:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def handle(self, request: web.Request) -> web.StreamResponse:
        texts = request.query.getall("match[]", [])
        if not texts:
            raise web.HTTPBadRequest(text='missing match[] (a series selector such as {__name__="up"})\n')
        try:
            selectors = [Selector.parse(t) for t in texts]
            start = parse_time(request.query.get("start"), -(2**63))
            end = parse_time(request.query.get("end"), 2**63 - 1)
        except (SelectorError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from exc

        store = self._store
        series = await store.series()
        chosen = [(sid, labels) for sid, labels in series if any(s.matches(labels) for s in selectors)]
        response = web.StreamResponse(headers={"Content-Type": "application/stream+json"})
        await response.prepare(request)
        chosen.sort(key=lambda item: sorted(item[1].items()))
        for first in range(0, len(chosen), SERIES_PER_QUERY):
            page = chosen[first : first + SERIES_PER_QUERY]
            found = await store.samples([sid for sid, _ in page], start, end)
            lines = []
            for sid, labels in page:
                stamps, values = found.get(sid, ([], []))
                keep = [i for i, v in enumerate(values) if not is_stale_marker(v)]
                if keep:
                    line = {
                        "metric": labels,
                        "values": [_number(values[i]) for i in keep],
                        "timestamps": [stamps[i] for i in keep],
                    }
                    lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
            await response.write(b"".join(lines))
        await response.write_eof()
        return response
