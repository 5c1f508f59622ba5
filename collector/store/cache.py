"""A least-recently-used cache bounded by the weight of what it holds (series, samples, bytes).

The store keeps no structure that grows with the number of series it holds: what it remembers of
tables and chunks lives in caches like this one, so memory stays flat whatever the fleet's size.
Not thread-safe: each owner uses its own from one thread at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """Args:
    max_weight: what the entries may weigh together; the least recently used go first.
    weight: an entry's weight (default 1: a count of entries).
    """

    def __init__(self, max_weight: int, weight: Callable[[V], int] | None = None) -> None:
        self.max_weight = max_weight
        self._weight = weight or (lambda _: 1)
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.total = 0

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V) -> None:
        weight = self._weight(value)
        old = self._entries.pop(key, None)
        if old is not None:
            self.total -= old[1]
        if weight > self.max_weight:
            return  # bigger than the whole cache: not kept
        self._entries[key] = (value, weight)
        self.total += weight
        while self.total > self.max_weight:
            _, (_, w) = self._entries.popitem(last=False)
            self.total -= w

    def discard(self, key: K) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.total -= old[1]

    def clear(self) -> None:
        self._entries.clear()
        self.total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
