"""Memory for decoding, bounded per request and across requests.

Decoded samples cost far more than their bytes on the wire: a chunk's sample is 16 bytes
uncompressed and about 110 as Python objects; an empty remote-write ``Sample`` is 2 bytes on the wire
and about 90 decoded. So the limit on decompressed bytes alone lets one small request cost gigabytes.
Each decoder therefore estimates what a request will cost *before* decoding it (from the counts a
chunk declares, or from a remote-write body's length) and refuses with :class:`TooLarge` what is over
``per_request``; :class:`DecodeBudget` then bounds what all requests being decoded hold together, so
that N devices sending at once cannot multiply it: a request waits for room, and gets
:class:`Unavailable` (503, retried) if none frees within ``wait`` seconds.

The figures below were measured with ``ru_maxrss`` on CPython 3.11 and are rounded up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from backhaul.errors import TooLarge, Unavailable

# Chunks: per sample (a timestamp int, a float, two list slots, the column arrays on the way), per
# byte of series table (label strings, tuples, the JSON parser's lists) and per uncompressed byte.
CHUNK_SAMPLE_BYTES = 120
CHUNK_TABLE_BYTE = 32
CHUNK_RAW_BYTE = 2
# Remote write 1.0: per sample decoded, and per byte of protobuf (upb's message objects, label pairs).
RW_SAMPLE_BYTES = 100
RW_BYTE = 10
# The least a remote-write sample can take on the wire (an empty Sample message: tag and length).
RW_MIN_SAMPLE_WIRE_BYTES = 2
# So one byte of protobuf can cost at most this much decoded.
RW_WORST_PER_BYTE = RW_BYTE + RW_SAMPLE_BYTES // RW_MIN_SAMPLE_WIRE_BYTES


def chunk_cost(n_series: int, n_samples: int, table_len: int, raw_len: int) -> int:
    """Estimated peak memory of decoding one uncompressed chunk of this shape."""
    return CHUNK_SAMPLE_BYTES * n_samples + CHUNK_TABLE_BYTE * table_len + CHUNK_RAW_BYTE * raw_len + 64 * n_series


def remote_write_cost(wire_bytes: int, samples: int) -> int:
    """Estimated memory of ``samples`` decoded from ``wire_bytes`` of uncompressed protobuf."""
    return RW_BYTE * wire_bytes + RW_SAMPLE_BYTES * samples


def remote_write_worst(wire_bytes: int) -> int:
    """The most ``wire_bytes`` of uncompressed protobuf can cost decoded (every sample empty)."""
    return RW_WORST_PER_BYTE * wire_bytes


class DecodeBudget:
    """Bytes of decoded memory that requests hold at once, handed out first come, first served.

    Args:
        capacity: what all requests together may hold.
        per_request: what one request may hold (at most ``capacity``); more is refused with
            :class:`TooLarge`, naming ``limit_name``.
        wait: seconds a request waits for room before it is answered 503.
        limit_name: the setting a person would raise, for the 413's reason.
    """

    def __init__(self, capacity: int, per_request: int, wait: float = 5.0, limit_name: str = "") -> None:
        self.capacity = capacity
        self.per_request = min(per_request, capacity)
        self.wait = wait
        self.limit_name = limit_name
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def check(self, cost: int, what: str) -> None:
        """:class:`TooLarge` when ``cost`` is over the per-request bound."""
        if cost > self.per_request:
            name = f"; the limit is {self.limit_name}" if self.limit_name else ""
            raise TooLarge(f"{what} decoded (about {cost:,} bytes, estimated before decoding{name})", self.per_request)

    @contextlib.asynccontextmanager
    async def reserve(self, cost: int, what: str) -> AsyncIterator[None]:
        """Hold ``cost`` bytes for the block; waits while others hold too much (FIFO)."""
        self.check(cost, what)
        if self._waiters or self.in_use + cost > self.capacity:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (cost, future)
            self._waiters.append(entry)
            try:
                await asyncio.wait_for(asyncio.shield(future), self.wait)
            except TimeoutError:
                if future.done():  # granted just as the wait ran out: keep it
                    pass
                else:
                    self._waiters.remove(entry)
                    future.cancel()
                    self._grant()
                    raise Unavailable(f"too much being decoded at once: {what} waited {self.wait:g} s") from None
            except BaseException:
                if future.done() and not future.cancelled():
                    self.in_use -= cost  # granted, but the waiter is gone
                elif entry in self._waiters:
                    self._waiters.remove(entry)
                future.cancel()
                self._grant()
                raise
        else:
            self.in_use += cost
        try:
            yield
        finally:
            self.in_use -= cost
            self._grant()

    def _grant(self) -> None:
        while self._waiters:
            cost, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.in_use + cost > self.capacity and self.in_use > 0:
                return
            self._waiters.popleft()
            self.in_use += cost
            future.set_result(None)
