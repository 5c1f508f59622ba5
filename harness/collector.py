"""What a collector holds, read back through its export API (VictoriaMetrics' JSON-lines format)."""

from __future__ import annotations

import json
import math
import sqlite3
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from backhaul.wire import chunk as chunkfmt
from backhaul.wire.chunk import Codec, Contents
from backhaul.wire.series import Labels
from harness.agent import LOSS_CAUSES
from harness.config import READ_HEADERS
from harness.metrics import read_metrics
from harness.net import http

EVERYTHING = '{__name__=~".+"}'


def export(
    collector_url: str, selector: str = EVERYTHING, timeout: float = 10, context: ssl.SSLContext | None = None
) -> list[dict[str, Any]]:
    """``GET /api/v1/export`` for ``selector`` with the harness's read token: one dict per line
    (``metric``, ``values``, ``timestamps``). ``context``: TLS settings for an https collector."""
    query = urllib.parse.urlencode({"match[]": selector})
    url = f"{collector_url}/api/v1/export?{query}"
    status, body, _ = http("GET", url, headers=READ_HEADERS, timeout=timeout, context=context)
    if status != 200:
        raise AssertionError(f"export answered {status}: {body[:300]!r}")
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def exported_samples(
    collector_url: str,
    selector: str = EVERYTHING,
    drop: tuple[str, ...] = ("device_id",),
    context: ssl.SSLContext | None = None,
) -> dict[Labels, dict[int, float]]:
    """Collector contents as {labels without ``drop``: {timestamp: value}}."""
    out: dict[Labels, dict[int, float]] = {}
    for line in export(collector_url, selector, context=context):
        labels = tuple(sorted((k, v) for k, v in line["metric"].items() if k not in drop))
        values = [float(v) for v in line["values"]]  # "NaN", "Inf", "-Inf" arrive as strings
        out.setdefault(labels, {}).update(zip(line["timestamps"], values, strict=True))
    return out


def same_value(a: float, b: float) -> bool:
    """Equal, counting NaN as equal to NaN (a stored NaN must come back as NaN)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def reported_losses(collector_url: str, device: str) -> dict[str, int]:
    """The losses ``device`` reported, by cause, as its collector exposes them: the agent's persistent
    counters (compare :func:`harness.agent.agent_loss_counters`), not its per-process ones."""
    page = read_metrics(collector_url)
    name = "backhaul_collector_device_reported_lost_samples"
    return {cause: int(page.get(f'{name}{{cause="{cause}",device="{device}"}}', 0)) for cause in LOSS_CAUSES}


def stored_contents(db: Path) -> dict[str, Contents]:
    """Everything an embedded (SQLite) collector store holds (chunks and tables, both zstd), read from
    its file (read-only), per device: float samples, native histograms and metadata, which the export
    cannot show (its format has no place for native histograms)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    codec = Codec()
    out: dict[str, Contents] = {}
    try:
        rows = conn.execute(
            "SELECT c.device, t.data, d.data FROM chunks c JOIN chunk_tables t ON t.id = c.table_id"
            " JOIN chunk_data d ON d.id = c.id ORDER BY c.id"
        )
        for device, table, frame in rows:
            stripped, table = codec.decompress(frame, 1 << 30), codec.decompress(table, 1 << 30)
            out.setdefault(device, Contents()).add(chunkfmt.decode_contents(chunkfmt.join_table(stripped, table)))
        return out
    finally:
        conn.close()
