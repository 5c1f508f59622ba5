"""Where the floor is for a remote-write request in CPython: the least work it takes next to the agent's.

``.venv/bin/python -m bench.decode_floor [--series N]``: one request of the bench workload's N series
(bench/workload.py) x 1 sample, snappy-compressed as Prometheus sends it, timed in this process (the
best of 7 runs each, in microseconds per sample):

- snappy and the protobuf parse;
- the same, then each series' labels and its sample touched from Python, and nothing else;
- the agent's whole decode (``backhaul.wire.remote_write.decode``, its label sets cached);
- the chunk encode with zstd that the commit does (``backhaul.wire.chunk.Codec.encode``);
- the time the cycle collector takes during ten decodes and encodes, at CPython's default threshold
  and at the agent's (``backhaul.memory.collect_less_often``), with the imports frozen as the agent
  does.

The first two are what any Python receiver pays; compare them with vmagent's CPU per sample in the
ingest benchmark (``bench.foundation``), which includes its whole ingest.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable

import cramjam

from backhaul import memory
from backhaul.wire import chunk
from backhaul.wire import remote_write as rw
from backhaul.wire.remote_write.decoding import LabelCache, Limits, decode
from bench.workload import Workload


def request_body(series: int) -> tuple[bytes, int]:
    """A snappy-compressed WriteRequest of one round of the workload, and its series count."""
    _, samples = next(Workload(series, 1, 1_780_000_000_000).rounds())
    (body,) = rw.encode(samples)
    return body, len(samples)


def best(work: Callable[[], object], runs: int = 7) -> float:
    fastest = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def collector_seconds(work: Callable[[], object]) -> float:
    """Seconds the cycle collector ran during ``work``."""
    spent, started = 0.0, 0.0

    def timer(phase: str, info: dict[str, int]) -> None:
        nonlocal spent, started
        if phase == "start":
            started = time.perf_counter()
        else:
            spent += time.perf_counter() - started

    gc.callbacks.append(timer)
    try:
        work()
    finally:
        gc.callbacks.remove(timer)
    return spent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=10_000)
    args = ap.parse_args(argv)
    body, n = request_body(args.series)

    def parse() -> object:
        return rw.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))

    def touch() -> None:
        for ts in rw.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(body))).timeseries:
            _ = ts.labels
            sample = ts.samples[0]
            _ = (sample.timestamp, sample.value)

    cache, limits = LabelCache(), Limits()
    decoded = decode(body, limits, cache)
    codec = chunk.Codec()
    rows = [
        ("snappy + protobuf parse", best(parse)),
        ("+ each series' labels and sample touched from Python", best(touch)),
        ("the agent's decode (label sets cached)", best(lambda: decode(body, limits, cache))),
        ("the chunk encode with zstd", best(lambda: codec.encode(decoded.series))),
    ]
    gc.freeze()
    for young in (gc.get_threshold()[0], memory.YOUNG_THRESHOLD):
        memory.collect_less_often(young)
        spent = collector_seconds(lambda: [codec.encode(decode(body, limits, cache).series) for _ in range(10)])
        rows.append((f"cycle collector during decode + encode, threshold {young:,}", spent / 10))
    print(f"one remote-write request: {n:,} series x 1 sample, {len(body):,} bytes")
    for name, seconds in rows:
        print(f"{name:<56} {seconds / n * 1e6:6.2f} us/sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
