"""What latency histograms cost: classic buckets (a float series per bucket) against native histograms.

    .venv/bin/python -m bench.histogram_cost [--series 48] [--minutes 60] [--interval 5] [--seed 1]

The workload is an inference server's latency histograms, scraped every ``--interval`` seconds:
request duration, time to first token, time per output token and queue time, for 2 models x 3
routes x 2 status classes (``--series`` histograms in all), with observations drawn from log-normal
distributions around realistic medians at a few requests per second. Each histogram is kept three
ways, as the same observations:

- classic: 20 bucket bounds + the +Inf bucket as ``_bucket{le}`` series, plus ``_sum`` and ``_count``
  (23 float samples per histogram and scrape), in a version 2 chunk;
- native, exponential: schema 3 (Prometheus' default resolution), integer buckets, in a version 3 chunk;
- native, custom buckets: schema -53 over the same 20 bounds as the classic histogram (what a
  receiver may turn a classic histogram into), in a version 3 chunk.

For each, bytes per histogram (one histogram at one scrape: the fair unit) are given for the chunk as
the buffer stores it (raw, and zstd as stored and sent) at three chunk spans: one scrape per chunk
(an online agent's group commits), one minute, and an hour (a compacted backlog); next to the same
data as Prometheus remote write 1.0 and 2.0 (snappy protobuf, one request per scrape). The classic
rows also give bytes per float sample. Encoding and decoding times are CPU time per histogram.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import TypeVar

from backhaul.wire import chunk
from backhaul.wire import histogram as hist
from backhaul.wire import remote_write as rw
from backhaul.wire import remote_write_v2 as v2
from backhaul.wire.histogram import Histogram, HistogramSeriesMap
from backhaul.wire.metadata import Metadata, MetadataMap
from backhaul.wire.series import Labels, SeriesMap

START_MS = 1_790_000_000_000
SCHEMA = 3
BOUNDS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
    0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
# (metric, median seconds, log-normal sigma, requests per second per series)
METRICS = (
    ("vllm_e2e_request_latency_seconds", 1.8, 0.9, 2.0),
    ("vllm_time_to_first_token_seconds", 0.09, 0.8, 2.0),
    ("vllm_time_per_output_token_seconds", 0.025, 0.35, 60.0),
    ("vllm_request_queue_time_seconds", 0.004, 1.6, 2.0),
)
MODELS = ("llama-3.1-8b", "qwen2.5-7b")
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
STATUSES = ("2xx", "5xx")


@dataclass
class _State:
    """One histogram's cumulative state, the three ways."""

    labels: Labels
    median: float
    sigma: float
    rate: float
    count: int = 0
    total: float = 0.0
    classic: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    native: dict[int, int] = field(default_factory=dict)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        at = next((i for i, b in enumerate(BOUNDS) if value <= b), len(BOUNDS))
        self.classic[at] += 1
        index = math.ceil(math.log2(value) * 2**SCHEMA)
        self.native[index] = self.native.get(index, 0) + 1


@dataclass
class Scrape:
    """Everything one scrape of all the histograms gives, in the three representations."""

    t: int
    classic: SeriesMap
    native: HistogramSeriesMap
    custom: HistogramSeriesMap


def workload(n_series: int, scrapes: int, interval_s: float, seed: int) -> tuple[list[Scrape], MetadataMap]:
    rng = random.Random(seed)
    combos = [(m, r, s) for m in MODELS for r in ROUTES for s in STATUSES]
    states: list[_State] = []
    for i in range(n_series):
        name, median, sigma, rate = METRICS[i % len(METRICS)]
        model, route, status = combos[(i // len(METRICS)) % len(combos)]
        labels = (("__name__", name), ("instance", "edge-0001:8000"), ("job", "vllm"), ("model", model),
                  ("route", route), ("status", status))  # fmt: skip
        share = 0.05 if status == "5xx" else 1.0
        states.append(
            _State(labels, median * (3 if status == "5xx" else 1), sigma, rate * share * rng.uniform(0.3, 1.5))
        )
    out = []
    for k in range(scrapes):
        t = START_MS + int(k * interval_s * 1000)
        classic: SeriesMap = {}
        native: HistogramSeriesMap = {}
        custom: HistogramSeriesMap = {}
        for s in states:
            mean = s.rate * interval_s
            for _ in range(max(0, round(rng.gauss(mean, math.sqrt(mean))))):
                s.observe(rng.lognormvariate(math.log(s.median), s.sigma))
            name = s.labels[0][1]
            rest = s.labels[1:]
            cumulative = 0
            for bound, n in zip((*BOUNDS, math.inf), s.classic, strict=True):
                cumulative += n
                le = "+Inf" if math.isinf(bound) else repr(bound)
                classic[(("__name__", f"{name}_bucket"), *rest[:2], ("le", le), *rest[2:])] = (
                    [t],
                    [float(cumulative)],
                )
            classic[(("__name__", f"{name}_count"), *rest)] = ([t], [float(s.count)])
            classic[(("__name__", f"{name}_sum"), *rest)] = ([t], [s.total])
            spans, deltas = hist.from_indexed(sorted(s.native.items()), is_float=False)
            native[s.labels] = (
                [t],
                [Histogram(count=s.count, sum=s.total, schema=SCHEMA, zero_threshold=2.0**-128,
                           positive_spans=spans, positive=deltas)],
            )  # fmt: skip
            c_spans, c_deltas = hist.from_indexed(list(enumerate(s.classic)), is_float=False)
            custom[s.labels] = (
                [t],
                [Histogram(count=s.count, sum=s.total, schema=hist.CUSTOM_BUCKETS_SCHEMA,
                           positive_spans=c_spans, positive=c_deltas, custom_values=BOUNDS)],
            )  # fmt: skip
        out.append(Scrape(t, classic, native, custom))
    metadata = {name: Metadata("histogram", f"{name} (bench)", "seconds") for name, *_ in METRICS}
    return out, metadata


V = TypeVar("V")  # the value kind: float for classic series, Histogram for native ones


def merge(parts: list[dict[Labels, tuple[list[int], list[V]]]]) -> dict[Labels, tuple[list[int], list[V]]]:
    merged: dict[Labels, tuple[list[int], list[V]]] = {}
    for part in parts:
        for labels, (ts, vals) in part.items():
            entry = merged.setdefault(labels, ([], []))
            entry[0].extend(ts)
            entry[1].extend(vals)
    return merged


def chunk_cost(
    scrapes: list[Scrape], per_chunk: int, pick: str, metadata: MetadataMap, codec: chunk.Codec
) -> tuple[int, int, float, float]:
    """Raw and zstd bytes of the chunks, and seconds to encode and to decode them."""
    raw_total = zstd_total = 0
    encode_s = decode_s = 0.0
    for start in range(0, len(scrapes), per_chunk):
        group = scrapes[start : start + per_chunk]
        began = time.process_time()
        if pick == "classic":
            raw = chunk.encode(merge([s.classic for s in group]))
        else:
            hs = merge([getattr(s, pick) for s in group])
            raw = chunk.encode({}, hs, metadata if start == 0 else None)
        frame = codec.compress(raw)
        encode_s += time.process_time() - began
        began = time.process_time()
        chunk.decode_contents(codec.decompress(frame, 1 << 30))
        decode_s += time.process_time() - began
        raw_total += len(raw)
        zstd_total += len(frame)
    return raw_total, zstd_total, encode_s, decode_s


def remote_write_cost(scrapes: list[Scrape], pick: str, metadata: MetadataMap) -> tuple[int, int]:
    """Snappy bytes of one remote-write request per scrape, 1.0 and 2.0."""
    one = two = 0
    for k, s in enumerate(scrapes):
        meta = metadata if k == 0 else None
        if pick == "classic":
            one += sum(map(len, rw.encode(s.classic, metadata=meta)))
            two += sum(map(len, v2.encode(s.classic, metadata=metadata)))
        else:
            hs = getattr(s, pick)
            one += sum(map(len, rw.encode({}, histograms=hs, metadata=meta)))
            two += sum(map(len, v2.encode(None, hs, metadata=metadata)))
    return one, two


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=48, help="histograms (default 48)")
    ap.add_argument("--minutes", type=float, default=60, help="minutes of scrapes (default 60)")
    ap.add_argument("--interval", type=float, default=5, help="scrape interval in seconds (default 5)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    n_scrapes = int(args.minutes * 60 / args.interval)
    began = time.perf_counter()
    scrapes, metadata = workload(args.series, n_scrapes, args.interval, args.seed)
    histograms = args.series * n_scrapes
    float_samples = histograms * (len(BOUNDS) + 3)
    last = scrapes[-1].native
    buckets = sum(h.bucket_count() for _, (_, hs) in last.items() for h in hs) / len(last)
    print(
        f"{args.series} latency histograms, {n_scrapes} scrapes every {args.interval:g} s "
        f"({histograms:,} histogram samples; classic: {len(BOUNDS) + 1} buckets + _sum + _count = "
        f"{float_samples:,} float samples; native schema {SCHEMA}: {buckets:.1f} populated buckets per "
        f"histogram at the end)"
    )
    per_minute = max(1, round(60 / args.interval))
    spans: list[tuple[str, int]] = [
        ("1 scrape", 1),
        ("1 min", per_minute),
        ("1 h", max(1, round(3600 / args.interval))),
    ]
    codec = chunk.Codec()
    rows: list[tuple[str, list[str]]] = []
    timing: list[str] = []
    for label, pick in (
        ("classic buckets", "classic"),
        ("native, schema 3", "native"),
        ("native, custom (-53)", "custom"),
    ):
        cells = []
        for _, per_chunk in spans:
            raw, zst, encode_s, decode_s = chunk_cost(scrapes, per_chunk, pick, metadata, codec)
            cells.append(f"{raw / histograms:8.1f} / {zst / histograms:6.2f}")
            if per_chunk == per_minute:
                timing.append(
                    f"{label}: encode {encode_s / histograms * 1e6:.1f} us, "
                    f"decode {decode_s / histograms * 1e6:.1f} us per histogram (1-minute chunks)"
                )
        one, two = remote_write_cost(scrapes, pick, metadata)
        cells += [f"{one / histograms:8.1f}", f"{two / histograms:8.1f}"]
        rows.append((label, cells))
        if pick == "classic":
            per_sample = [f"{float(c.split('/')[1]) * histograms / float_samples:6.2f}" for c in cells[:3]]
            rows.append(("  (per float sample)", [f"{'':>8}   {p}" for p in per_sample] + ["", ""]))

    head = ["chunk, 1 scrape", "chunk, 1 min", "chunk, 1 h", "RW 1.0", "RW 2.0"]
    print()
    print("Bytes per histogram sample (chunk: raw / zstd as stored and sent; remote write: snappy)")
    print(f"{'':24}" + "".join(f"{h:>20}" for h in head))
    for label, cells in rows:
        print(f"{label:24}" + "".join(f"{c:>20}" for c in cells))
    print()
    for line in timing:
        print(line)
    print(f"took {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
