"""The bandwidth cap (``uplink.max_bytes_per_second``): a token bucket on the write side of bulk uploads.

The HTTP post helper streams a request body in small slices and takes tokens for each slice (and for
the request's headers) before it goes out, so a 4 MiB batch leaves at the capped rate instead of in
one burst that fills the link the inference traffic also needs. The bucket holds at most one second
of tokens: after a quiet spell the link sees at most a second's worth of the cap at once, and that
second covers the pause between two batches (waiting for the answer, sealing the next one), so a
drain runs at the cap over a minute instead of a sixth below it.

Taking more than is there leaves a debt that the next taker waits out too, so takers sharing one
bucket (the remote-write transport's consecutive requests) stay under the rate together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

BURST_SECONDS = 1.0
# A slice is about 1/20 s of the rate, between these sizes: small enough to pace, big enough to be cheap.
MIN_SLICE = 512
MAX_SLICE = 16 * 1024
# The cap reads as "throttling" for this long after a taker last had to wait.
THROTTLED_FOR = 1.0


class TokenBucket:
    """Args:
    rate: bytes per second.
    monotonic: the clock tokens accrue by (seconds); sleep: how to wait (both replaceable in tests).
    """

    def __init__(
        self,
        rate: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.slice = int(min(MAX_SLICE, max(MIN_SLICE, rate / 20)))
        self.burst = max(float(self.slice), rate * BURST_SECONDS)
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = self.burst
        self._at = monotonic()
        self._waited_at = -float("inf")
        self.waiting = 0  # takers waiting right now

    def _refill(self) -> float:
        now = self._monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return now

    def charge(self, nbytes: int) -> None:
        """Take ``nbytes`` without waiting (bytes already on their way, e.g. a correction)."""
        self._refill()
        self._tokens -= nbytes

    async def take(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may go out."""
        self._refill()
        self._tokens -= nbytes
        if self._tokens >= 0:
            return
        self.waiting += 1
        try:
            await self._sleep(-self._tokens / self.rate)
        finally:
            self.waiting -= 1
            self._waited_at = self._monotonic()

    @property
    def throttling(self) -> bool:
        """Whether uploads are being held to the cap right now (a taker waits, or waited a moment ago)."""
        return self.waiting > 0 or self._monotonic() - self._waited_at < THROTTLED_FOR

    def seconds_for(self, nbytes: int) -> float:
        """How long ``nbytes`` take at the capped rate."""
        return nbytes / self.rate
