"""The alert lane's sender: sends queued messages the moment they are queued, until acknowledged.

Messages go oldest first. Each is offered to the channels in their configured order until one
acknowledges it (fallbacks); then it leaves the queue. If every channel failed and at least one failure
was transient, the sender backs off (``backoff_min`` doubling up to ``backoff_max``, with jitter) and
tries again; if every channel refused the message as malformed, it is dropped and counted
(DESIGN.md delivery contract 6: 4xx means "drop it").
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from agent.alerts.budget import AlertBudget
from agent.alerts.channels import Channel
from agent.alerts.metrics import AlertMetrics
from agent.alerts.queue import AlertQueue, Entry
from backhaul.errors import AlertFormatError, PeerError, Refused, StoreError
from backhaul.retry import Backoff
from backhaul.wire import alert as wire

log = logging.getLogger(__name__)


class AlertSender:
    """Args: the queue; channels in fallback order; metrics; backoff bounds (s); wall clock (s);
    the jitter source (a float in [0, 1), for tests); the MAC key each message is signed with as it
    leaves (``backhaul.wire.alert.token_key`` of the device's token); the lane's byte budget the
    channels charge (saved after each attempt), None for none."""

    def __init__(
        self,
        queue: AlertQueue,
        channels: list[Channel],
        metrics: AlertMetrics,
        backoff_min: float,
        backoff_max: float,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        key: bytes = b"",
        budget: AlertBudget | None = None,
    ) -> None:
        self._budget = budget
        self._queue = queue
        self._key = key
        self._channels = channels
        self._metrics = metrics
        self._backoff = Backoff(backoff_min, backoff_max, rng)
        self._clock = clock
        self._wake = asyncio.Event()
        self._wake.set()  # messages may wait from the last run
        self.last_error: str | None = None

    def reconfigure(self, channels: list[Channel], key: bytes) -> list[Channel]:
        """A reload: offer messages to ``channels`` (signed with ``key``) from the next one on;
        returns the channels no longer used, for the caller to close."""
        old, self._channels, self._key = self._channels, channels, key
        self._wake.set()  # a message that waits for a channel that works may go now
        return old

    def notify(self) -> None:
        """A message was queued: send it now."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                entries = await self._queue.call(self._queue.peek, 20)
            except StoreError as exc:
                log.error("alert queue: %s", exc)
                await asyncio.sleep(self._backoff.next())
                self._wake.set()
                continue
            for entry in entries:
                try:
                    delivered = await self._deliver(entry)
                except Exception as exc:  # e.g. the queue could not delete it: it is simply sent again
                    log.error("alert %d: %s", entry.seq, exc)
                    self.last_error = f"queue: {exc}"
                    delivered = False
                await self._save_spent()
                if not delivered:
                    delay = self._backoff.next()
                    log.warning("alert %d not delivered (%s); retrying in %.1f s", entry.seq, self.last_error, delay)
                    await asyncio.sleep(delay)
                    break
                self._backoff.reset()
            if entries:
                self._wake.set()  # more may wait, or the failed one is retried

    async def _save_spent(self) -> None:
        if self._budget is None:
            return
        day, spent = self._budget.unsaved()
        if not spent:
            return
        try:
            await self._queue.call(self._queue.add_spent, day, spent)
        except StoreError as exc:
            log.warning("alert queue: could not save the bytes alerts spent: %s", exc)
            self._budget.unsave(spent)

    async def _deliver(self, entry: Entry) -> bool:
        """Offer one message to the channels; True when it may leave the queue."""
        transient = False
        try:
            body = wire.sign(entry.body, self._key)
        except AlertFormatError as exc:  # only a damaged queue file could hold one: it can never be sent
            log.error("alert %d in the queue is not a valid message (%s): dropped", entry.seq, exc)
            self._metrics.alerts_dropped.labels("malformed").inc()
            await self._queue.call(self._queue.remove, entry.seq)
            return True
        for channel in self._channels:
            try:
                await channel.send(body)
            except Refused as exc:
                self._metrics.alert_failures.labels(channel.name, exc.kind).inc()
                log.error("alert %d refused by %s: %s", entry.seq, channel.name, exc)
                self.last_error = str(exc)
                continue
            except PeerError as exc:
                self._metrics.alert_failures.labels(channel.name, exc.kind).inc()
                self.last_error = f"{channel.name}: {exc}"
                transient = True
                continue
            except Exception as exc:  # a bug in one channel must not stop the lane
                log.exception("alert channel %s failed unexpectedly", channel.name)
                self.last_error = f"{channel.name}: internal error {exc!r}"
                transient = True
                continue
            self._metrics.alerts_sent.labels(channel.name).inc()
            self._metrics.alert_delivery_seconds.observe(max(0.0, self._clock() - entry.created_ms / 1000))
            self.last_error = None
            await self._queue.call(self._queue.remove, entry.seq)
            self._metrics.alerts_queued.set(self._queue.length)
            return True
        if transient or not self._channels:
            return False
        self._metrics.alerts_dropped.labels("refused").inc()
        await self._queue.call(self._queue.remove, entry.seq)
        await self._queue.call(self._queue.count_rejected)
        self._metrics.alerts_queued.set(self._queue.length)
        return True
