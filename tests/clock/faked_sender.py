"""A remote-write sender meant to run under libfaketime, as a device's local Prometheus would: it
stamps each scrape with its (faked) wall clock, retries every request until it is answered, and
writes one JSON line per acknowledged scrape with what the test needs to know the sample's true
time: CLOCK_BOOTTIME at the stamp, which libfaketime leaves alone (FAKETIME_DONT_FAKE_MONOTONIC).

    python -m tests.clock.faked_sender AGENT_URL OUT.jsonl [--series N] [--interval S]

It stops on SIGTERM. Waits use Event.wait, not time.sleep: under libfaketime 0.9.10 with an offset
and an unfaked monotonic clock, Python's time.sleep fails with EINVAL (its absolute monotonic
deadline is shifted by the fake offset). The agent never calls time.sleep.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from http.client import HTTPException
from pathlib import Path

from backhaul.wire import remote_write as rw
from backhaul.wire.series import SeriesMap
from harness.net import http
from harness.remote_write import RW_HEADERS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--series", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with args.out.open("a") as out:
        k = 0
        while not stop.is_set():
            boot_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            ts = int(time.time() * 1000)
            series: SeriesMap = {
                (("__name__", "faked_clock_value"), ("series", str(i))): ([ts], [float(k)]) for i in range(args.series)
            }
            (body,) = rw.encode(series, args.series)
            while True:
                try:
                    status = http("POST", f"{args.url}/api/v1/write", body, RW_HEADERS, timeout=5)[0]
                except (OSError, HTTPException):
                    status = 0
                if 200 <= status < 500 or stop.is_set():
                    break
                stop.wait(0.05)
            if 200 <= status < 300:
                out.write(json.dumps({"k": k, "ts": ts, "boot_ns": boot_ns, "status": status}) + "\n")
                out.flush()
            k += 1
            stop.wait(args.interval)


if __name__ == "__main__":
    main()
