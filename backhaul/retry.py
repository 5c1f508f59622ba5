"""Retry timing shared by every sender: the agent's uploader and the collector's forwarders."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable


class Backoff:
    """Exponential backoff with "equal jitter" (half the step fixed, half random), never below ``minimum``."""

    def __init__(self, minimum: float, maximum: float, rng: Callable[[], float] = random.random) -> None:
        self.minimum, self.maximum, self._rng = minimum, maximum, rng
        self.failures = 0

    def next(self) -> float:
        step = min(self.maximum, self.minimum * 2**self.failures)
        self.failures += 1
        return float(max(self.minimum, step / 2 + self._rng() * step / 2))

    def reset(self) -> None:
        self.failures = 0


def retry_after(headers: dict[str, str], now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), if any."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
