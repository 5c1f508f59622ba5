"""Narrowing a wrong clock's offset below the one-second resolution of the collector's ``Date``.

One reply says the offset lies in ``[D - r, D + 1 s - s]`` (sent at agent time *s*, received at *r*,
``Date: D``): a second wide, plus the round trip. A probe sent so that the collector's clock turns a
second while it is out, if the offset is the interval's middle, halves that: a ``Date`` of the new
second says the offset is above the middle, one of the old second says it is below. A few probes,
well under a second each apart, bring the width down to about the round trip (as NTP's exchanges
straddle their peer's clock, here with a clock of one-second resolution).

Only the first settlement of a clock found wrong is refined: a clock within ``max_skew`` is not
corrected at all, so knowing its offset finer changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.clock.eras import PENDING, Era

TARGET_WIDTH_MS = 40.0  # narrow enough: stop probing (the round trip may keep it wider)
MAX_PROBES = 8  # 1 s / 2**8 is far below any round trip
MIN_GAIN = 0.9  # a probe that left the width above this share of what it was: the round trip rules
MIN_LEAD_MS = 20.0  # a probe is not sent sooner than this after it is decided


@dataclass
class Refiner:
    """The probes of one era's first settlement.

    Args:
        max_skew_ms: within this of true time a clock counts as right, and is not refined.
    """

    max_skew_ms: int
    era: int = 0
    probes: int = 0
    width_ms: float = math.inf
    round_trip_ms: float = 0.0
    stalled: bool = False

    def measured(self, era: Era, round_trip_ms: float) -> None:
        """A reply narrowed ``era``'s interval (already written into it)."""
        if era.id != self.era:
            self.era, self.probes, self.width_ms, self.stalled = era.id, 0, math.inf, False
        else:
            self.probes += 1
        width = _width(era)
        self.stalled = width > MIN_GAIN * self.width_ms
        self.width_ms = width
        self.round_trip_ms = max(0.0, round_trip_ms)

    def wanted(self, era: Era) -> bool:
        """Whether ``era`` (pending, with an interval) should wait for another probe before settling."""
        if era.state != PENDING or era.low_ms is None or era.high_ms is None or era.id != self.era:
            return False
        if abs(era.low_ms) <= self.max_skew_ms and abs(era.high_ms) <= self.max_skew_ms:
            return False  # right either way: offset 0
        return _width(era) > TARGET_WIDTH_MS and self.probes < MAX_PROBES and not self.stalled

    def delay_ms(self, era: Era, wall_ms: float) -> float:
        """How long to wait before the next probe leaves: until, if the offset is the interval's
        middle, the collector's clock turns a second halfway through the round trip."""
        if era.low_ms is None or era.high_ms is None:
            return 0.0
        middle = (era.low_ms + era.high_ms) / 2
        arrives = wall_ms + middle + self.round_trip_ms / 2 + MIN_LEAD_MS  # collector time, at the soonest
        return math.ceil(arrives / 1000) * 1000 - arrives + MIN_LEAD_MS


def _width(era: Era) -> float:
    assert era.low_ms is not None and era.high_ms is not None
    return era.high_ms - era.low_ms
