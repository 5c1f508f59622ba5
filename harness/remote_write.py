"""Playing the device's Prometheus: remote-write requests to an agent, once or as a steady stream.

:func:`push` sends samples once. :class:`Sender` is a thread that "scrapes" on a fixed rate and retries
each request until it is acknowledged, as Prometheus' remote write does, recording what the agent
acknowledged. :class:`RecordingSender` sends one request per scrape and notes every attempt, for
tests and soaks that kill the agent and must know which request was in flight.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.client import HTTPException

from backhaul.wire import remote_write as rw
from backhaul.wire.series import Labels, SeriesMap
from backhaul.wire.varint import varint
from harness.net import http

RW_HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
Point = tuple[Labels, int]  # a sample's identity: its series and timestamp (ms)


def push(agent_url: str, series: SeriesMap, per_request: int = 500) -> list[int]:
    """Send samples as Prometheus does (snappy protobuf); returns each request's status."""
    return [http("POST", f"{agent_url}/api/v1/write", body, RW_HEADERS)[0] for body in rw.encode(series, per_request)]


class Sender(threading.Thread):
    """Plays a Prometheus: pushes one "scrape" of ``series`` series every ``interval`` seconds and
    retries a request on 5xx or no answer until it is answered, as Prometheus' remote write does.
    Records every sample acknowledged (``acked``: point -> value) with a 2xx or refused with a 4xx
    (``refused`` lists those statuses).

    Args:
        agent_url: the agent's base URL.
        series: series per scrape (``test_metric_<i % 20>{job="sender",series="<i>"}``).
        interval: seconds from one scrape to the next (a slow pass is not made up for).
        per_request: series per request (one sample each); a scrape takes several requests if smaller.
        start_ms: the first scrape's timestamp (default: an hour ago).
        step_ms: how far each scrape's timestamp moves on.
        timeout: seconds one request may take.
    """

    def __init__(
        self,
        agent_url: str,
        series: int = 200,
        interval: float = 0.05,
        per_request: int = 500,
        start_ms: int | None = None,
        step_ms: int = 1000,
        timeout: float = 10,
    ) -> None:
        super().__init__(daemon=True)
        self.agent_url = agent_url
        self.series = series
        self.interval = interval
        self.per_request = per_request
        self.next_ms = start_ms or int(time.time() * 1000) - 3_600_000
        self.step_ms = step_ms
        self.timeout = timeout
        self.acked: dict[Point, float] = {}
        self.unacknowledged: set[Point] = set()
        self.refused: list[int] = []
        self.retries = 0
        self.scrapes = 0
        self._stop_event = threading.Event()

    def scrape(self) -> SeriesMap:
        ts = self.next_ms
        self.next_ms += self.step_ms
        k = self.scrapes
        self.scrapes += 1
        return {
            (("__name__", f"test_metric_{i % 20}"), ("job", "sender"), ("series", str(i))): (
                [ts],
                [float(k * (i + 1)) + i / 7],
            )
            for i in range(self.series)
        }

    def acknowledged(self, part: SeriesMap) -> None:
        """Record a request the agent answered (a subclass may keep less)."""
        for labels, (stamps, values) in part.items():
            for t, v in zip(stamps, values, strict=True):
                self.acked[(labels, t)] = v

    def abandoned(self, part: SeriesMap) -> None:
        """Record a request that was never answered because the sender stopped: the agent may have
        committed it before dying, so it may legitimately arrive."""
        self.unacknowledged.update((labels, t) for labels, (stamps, _) in part.items() for t in stamps)

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.monotonic()
            items = list(self.scrape().items())
            # one request per `per_request` series, recorded as soon as it is answered
            for start in range(0, len(items), self.per_request):
                part = dict(items[start : start + self.per_request])
                if not self._send_until_acked(rw.encode(part)[0]):
                    self.abandoned(part)
                    return
                self.acknowledged(part)
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _post(self, body: bytes) -> int:
        """One attempt; 0 when there was no (complete) answer."""
        try:
            status, _, _ = http("POST", f"{self.agent_url}/api/v1/write", body, RW_HEADERS, timeout=self.timeout)
        except (OSError, HTTPException):  # refused, reset, or killed mid-answer (a torn status line)
            return 0
        return status

    def _send_until_acked(self, body: bytes) -> bool:
        """True once the request is answered 2xx or 4xx; False if the sender stops before that."""
        while True:
            status = self._post(body)
            if 200 <= status < 300:
                return True
            if 400 <= status < 500:
                self.refused.append(status)
                return True
            if self._stop_event.is_set():
                return False
            self.retries += 1
            time.sleep(0.05)

    def stop(self, timeout: float = 60) -> None:
        self._stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "sender stuck"


@dataclass
class Attempt:
    """One try at sending a request: when it started and ended, and the status (0: no answer)."""

    ts: int  # the scrape's timestamp: one request per scrape, so it names the request
    start: float
    end: float | None = None
    status: int | None = None


class RecordingSender(Sender):
    """A :class:`Sender` with one request per scrape that notes every attempt (which request was in
    flight when the agent died, and how it ended).

    Args:
        agent_url, series, interval, start_ms, timeout: as for :class:`Sender`.
        step_ms: how far each scrape's timestamp moves on (100 ms by default).
        noisy: values that barely compress (fills a byte budget with fewer samples); the value of
            series ``i`` at ``ts`` is then :meth:`noisy_value` ``(ts, i)``.
        keep_attempts: how many of the latest attempts to keep (None: all).
    """

    def __init__(
        self,
        agent_url: str,
        series: int,
        interval: float,
        noisy: bool = False,
        start_ms: int | None = None,
        step_ms: int = 100,
        timeout: float = 10,
        keep_attempts: int | None = None,
    ) -> None:
        super().__init__(
            agent_url,
            series=series,
            interval=interval,
            per_request=series,
            start_ms=start_ms,
            step_ms=step_ms,
            timeout=timeout,
        )
        self.noisy = noisy
        self.attempts: deque[Attempt] = deque(maxlen=keep_attempts)
        self.fresh = threading.Event()  # set when a request goes out for the first time
        self._labels: dict[Labels, Labels] = {}
        self._ts = 0
        self._first_attempt = False

    @staticmethod
    def noisy_value(ts: int, series: int) -> float:
        return math.sin(ts * 0.0129898 + series * 78.233) * 43758.5453 % 1.0

    def scrape(self) -> SeriesMap:
        self._ts = self.next_ms
        out: SeriesMap = {}
        for i, (labels, (stamps, values)) in enumerate(super().scrape().items()):
            labels = self._labels.setdefault(labels, labels)  # one tuple per series, not per sample
            if self.noisy:
                values = [self.noisy_value(self._ts, i)]
            out[labels] = (stamps, values)
        return out

    def _send_until_acked(self, body: bytes) -> bool:
        self._first_attempt = True
        return super()._send_until_acked(body)

    def _post(self, body: bytes) -> int:
        attempt = Attempt(self._ts, time.monotonic())
        self.attempts.append(attempt)
        if self._first_attempt:
            self.fresh.set()
            self._first_attempt = False
        attempt.status = super()._post(body)
        attempt.end = time.monotonic()
        return attempt.status

    def wait_fresh_request(self, timeout: float = 5) -> None:
        """Until a new request (not a retry) goes out."""
        self.fresh.clear()
        assert self.fresh.wait(timeout), "the sender sent nothing new"


# -- by hand: bytes the encoder never makes (labels that are not UTF-8) ------------------------------


def raw_label(name: bytes, value: bytes) -> bytes:
    """A remote-write 1.0 ``Label`` field of a ``TimeSeries``, with any bytes as name and value."""
    inner = b"\x0a" + varint(len(name)) + name + b"\x12" + varint(len(value)) + value
    return b"\x0a" + varint(len(inner)) + inner


def raw_series(labels: list[bytes], ts: int, value_bits: bytes = b"\0" * 8) -> bytes:
    """A ``WriteRequest`` field holding one ``TimeSeries`` of ``labels`` (from :func:`raw_label`) and
    one sample; requests are such fields put together, then snappy-compressed."""
    sample = b"\x09" + value_bits + b"\x10" + varint(ts)
    inner = b"".join(labels) + b"\x12" + varint(len(sample)) + sample
    return b"\x0a" + varint(len(inner)) + inner
