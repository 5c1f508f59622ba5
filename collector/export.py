"""``GET /api/v1/export``: stored samples as JSON lines, in VictoriaMetrics' export format.

    /api/v1/export?match[]={__name__="up",job="node"}&start=1700000000&end=2024-01-01T00:00:00Z

One line per series: ``{"metric":{...labels},"values":[...],"timestamps":[...ms]}``, each series once,
its samples in time order, one per timestamp (:mod:`collector.store.reader`). ``match[]`` may repeat
(union); regular expressions are RE2's, fully anchored, as in PromQL. ``start``/``end`` take Unix
seconds (fractions allowed) or RFC 3339; both are inclusive and optional. Prometheus stale markers
are left out: they mark the end of a series, they are not values. Native histograms are left out
too: this format has no place for them (query them in the TSDB that forwarding feeds).

Guard rails (``[export]``): at most ``max_series`` series and ``max_samples`` samples from at most
``max_tables`` stored series tables, and without both start and end at most
``unbounded_max_samples``; over one, 422 naming it, decided from the
store's index before the first byte. The matching, the decoding and the JSON run on worker threads
and the answer is streamed a group of series at a time, so memory stays bounded and the event loop
(``/healthz``, uploads) keeps answering during a large export.

400: no ``match[]``, a selector that does not parse, a ``start``/``end`` that is no time (or outside
the signed 64-bit range of milliseconds), an ``end`` before ``start``, naming the field.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime

from aiohttp import web

from backhaul.errors import InputError, OverLimit
from backhaul.selector import Selector
from backhaul.wire.remote_write import is_stale_marker
from collector.config import CollectorSettings
from collector.store import Store
from collector.store.matching import Limits
from collector.store.reader import Chosen, Reader

_MIN_MS, _MAX_MS = -(2**63), 2**63 - 1
_SLICE = 8192


def parse_time(text: str | None, default_ms: int, field: str = "time") -> int:
    """Unix seconds or RFC 3339 to milliseconds; raises InputError naming ``field``."""
    if text is None or text == "":
        return default_ms
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError):
            raise InputError(f"{field}: {text[:64]!r} is neither Unix seconds nor an RFC 3339 time") from None
    if not math.isfinite(seconds):
        raise InputError(f"{field}: {text[:64]!r} is not a finite time")
    ms = round(seconds * 1000)
    if not _MIN_MS <= ms <= _MAX_MS:
        raise InputError(f"{field}: {text[:64]!r} is outside the range of times in milliseconds (signed 64-bit)")
    return ms


def _number(value: float) -> float | str:
    # JSON has no NaN/Inf; VictoriaMetrics writes them as these strings.
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return value


def lines(group: list[tuple[Chosen, list[int], list[float]]]) -> bytes:
    """JSON lines of a group of series (on a worker thread: this is most of an export's CPU)."""
    out: list[bytes] = []
    for chosen, stamps, values in group:
        keep = [i for i, v in enumerate(values) if not is_stale_marker(v)]
        if not keep:
            continue
        if len(keep) < len(values):
            stamps, values = [stamps[i] for i in keep], [values[i] for i in keep]
        numbers = [_number(v) for v in values]
        if len(stamps) <= _SLICE:  # the common case: one call
            line = {"metric": chosen.labels, "values": numbers, "timestamps": stamps}
            out.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
            continue
        metric = json.dumps(chosen.labels, separators=(",", ":"))
        out.append(f'{{"metric":{metric},"values":[{_pieces(numbers)}],"timestamps":[{_pieces(stamps)}]}}\n'.encode())
    return b"".join(out)


def _pieces(items: list[float | str] | list[int]) -> str:
    """A JSON array's items, encoded a slice at a time: each C call stays short, so a long series
    never holds the GIL long enough to stall the event loop."""
    return ",".join(
        json.dumps(items[i : i + _SLICE], separators=(",", ":"))[1:-1] for i in range(0, len(items), _SLICE)
    )


class Exporter:
    """Args: the store and the settings (``[export]`` limits, the device label)."""

    def __init__(self, store: Store, settings: CollectorSettings) -> None:
        self._reader = Reader(store, settings.device_label)
        self._settings = settings.export

    async def handle(self, request: web.Request) -> web.StreamResponse:
        texts = request.query.getall("match[]", [])
        if not texts:
            raise InputError('missing match[] (a series selector such as {__name__="up"})')
        start_text, end_text = request.query.get("start"), request.query.get("end")
        start = parse_time(start_text, _MIN_MS, "start")
        end = parse_time(end_text, _MAX_MS, "end")
        if start > end:
            # as Prometheus answers: an empty range is a mistake to name, not an empty answer to compute
            raise InputError(f"end: {(end_text or '')[:64]!r} is before start {(start_text or '')[:64]!r}")
        selectors = [Selector.parse(t) for t in texts]
        s = self._settings
        plan = await self._reader.plan(selectors, start, end, Limits(s.max_series, s.max_samples, s.max_tables))
        if not (start_text and end_text) and plan.samples_bound > s.unbounded_max_samples:
            raise OverLimit(
                f"the selection holds up to {plan.samples_bound} samples: give start and end to export more than"
                f" {s.unbounded_max_samples} ([export] unbounded_max_samples)",
                "unbounded_max_samples",
            )
        response = web.StreamResponse(headers={"Content-Type": "application/stream+json"})
        await response.prepare(request)
        async for group in self._reader.read(plan):
            await response.write(await asyncio.to_thread(lines, group))
        await response.write_eof()
        return response
