"""A scrape target that serves native histograms in the protobuf exposition format (and, to a scraper
that does not ask for protobuf, a text page without them), as client_golang does.

    python -m tests.integration.native_target PORT

Every scrape adds a few observations to ``rpc_duration_seconds`` (schema 3, an integer histogram,
labelled ``method``), so successive samples differ; ``rpc_total`` counts the scrapes.
"""

from __future__ import annotations

import math
import sys
import threading
from http.server import ThreadingHTTPServer

from backhaul.wire import exposition
from backhaul.wire.histogram import Histogram, from_indexed
from harness.net import QuietHandler

SCHEMA = 3
OBSERVATIONS = (0.0, 0.003, 0.012, 0.05, 0.05, 0.2, 0.9, 2.5, 7.0)


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scrapes = 0
        self.buckets: dict[str, dict[int, int]] = {"get": {}, "put": {}}
        self.zero: dict[str, int] = {"get": 0, "put": 0}
        self.sums: dict[str, float] = {"get": 0.0, "put": 0.0}
        self.counts: dict[str, int] = {"get": 0, "put": 0}

    def observe(self, method: str, v: float) -> None:
        self.counts[method] += 1
        self.sums[method] += v
        if v == 0:
            self.zero[method] += 1
            return
        index = math.ceil(math.log2(v) * 2**SCHEMA - 1e-9)
        self.buckets[method][index] = self.buckets[method].get(index, 0) + 1

    def histogram(self, method: str) -> Histogram:
        spans, deltas = from_indexed(sorted(self.buckets[method].items()), is_float=False)
        return Histogram(
            count=self.counts[method],
            sum=self.sums[method],
            schema=SCHEMA,
            zero_threshold=2**-128,
            zero_count=self.zero[method],
            positive_spans=spans,
            positive=deltas,
        )


STATE = _State()


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        with STATE.lock:
            STATE.scrapes += 1
            for k, v in enumerate(OBSERVATIONS):
                STATE.observe("get", v * (1 + STATE.scrapes % 3))
                if k % 2:
                    STATE.observe("put", v)
            histograms = [({"method": m}, STATE.histogram(m)) for m in ("get", "put")]
            scrapes = STATE.scrapes
        if "application/vnd.google.protobuf" in self.headers.get("Accept", ""):
            counter = exposition.MetricFamily(name="rpc_total", help="Scrapes served.", type=exposition.COUNTER)
            counter.metric.add().counter.value = scrapes
            family = exposition.native_family("rpc_duration_seconds", "RPC latency.", histograms)
            body = exposition.encode([family, counter])
            content_type = exposition.MEDIA_TYPE
        else:
            body = f"# HELP rpc_total Scrapes served.\n# TYPE rpc_total counter\nrpc_total {scrapes}\n".encode()
            content_type = "text/plain; version=0.0.4"
        self.answer(body, content_type)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), _Handler).serve_forever()
