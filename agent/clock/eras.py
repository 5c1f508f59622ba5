"""Eras of the agent's clock and what is known of each: the rules, without any I/O.

An era is the wall clock between two jumps within one boot: over it, wall time minus CLOCK_BOOTTIME
stays put (up to the slow slewing NTP does), so the timestamps it stamped are off by one amount, its
*offset* (true time minus the clock). An era is *pending* until that offset is known, then *settled*
(offset 0 when the clock was right), or *lost* when it can never be known. The offset comes from:

1. the collector's ``Date`` on a reply sent and received within the era: a reply tells that the
   offset lies in ``[date - received, date + 1 s - sent]``; the intersection over replies narrows it.
   Within ``max_skew`` the clock counts as right (offset 0: a 1-second Date corrects nothing).
2. another era of the same boot whose offset is known, through the jumps between them: at a jump of
   ``J`` the clock reads ``J`` more than a moment before, so ``offset_before = offset_after + J``.
   One era known in a boot makes every era of that boot known (e.g. a clock at 1970 until NTP steps
   it: once the collector finds the stepped clock right, the 1970 era's offset is the step).
3. presumption, when nothing else can tell: when its boot is over, the newest era of that boot
   above the floor is taken as right (and its boot's other eras follow by 2.); a boot with no era
   above the floor is lost. An uplink whose replies carry no ``Date`` presumes the same at once.

A clock below the floor (the agent's build time) is never presumed right.
"""

from __future__ import annotations

from dataclasses import dataclass

PENDING = "pending"
SETTLED = "settled"
LOST = "lost"


@dataclass
class Era:
    """One era (all times in ms).

    Args:
        id: its number (also the tag its held chunks carry in the buffer).
        boot_id: the boot it belongs to.
        start_boot_ms, end_boot_ms: CLOCK_BOOTTIME when it began and when it was last seen.
        start_wall_ms, end_wall_ms: the wall clock at those moments (the timestamps it can have stamped).
        jump_in_ms: the step from the previous era of its boot into it; None for a boot's first era.
        below_floor: it began earlier than the floor.
        state: PENDING, SETTLED or LOST.
        offset_ms: once settled, what its timestamps are corrected by (0: the clock was right).
        estimate_ms: the best estimate of true time minus the clock (measured or derived), if any.
        low_ms, high_ms: what the collector's replies allow the offset to be, if any were measured.
        source: where the offset came from (collector, jump, presumed, no date), or why it was lost.
        changed_ms: the agent's wall clock at the last change (for the history only).
    """

    id: int
    boot_id: str
    start_boot_ms: int
    end_boot_ms: int
    start_wall_ms: int
    end_wall_ms: int
    jump_in_ms: int | None
    below_floor: bool
    state: str = PENDING
    offset_ms: int = 0
    estimate_ms: float | None = None
    low_ms: float | None = None
    high_ms: float | None = None
    source: str = ""
    changed_ms: int = 0

    @property
    def base_ms(self) -> int:
        """Wall clock minus CLOCK_BOOTTIME, as last seen."""
        return self.end_wall_ms - self.end_boot_ms

    @property
    def error_ms(self) -> float | None:
        """Half the width of what the collector's replies allow, if any were measured."""
        if self.low_ms is None or self.high_ms is None:
            return None
        return (self.high_ms - self.low_ms) / 2

    def contains(self, ts: int, slack_ms: int) -> bool:
        """Whether this era's clock can have stamped ``ts``."""
        return self.start_wall_ms - slack_ms <= ts <= self.end_wall_ms + slack_ms


@dataclass
class Jump:
    """A jump of the wall clock against CLOCK_BOOTTIME (ms); ``while_stopped``: it happened while the
    agent was not running (seen at start, in the same boot)."""

    boot_id: str
    boot_ms: int
    from_era: int
    to_era: int
    wall_before_ms: int
    wall_after_ms: int
    while_stopped: bool = False

    @property
    def jump_ms(self) -> int:
        return self.wall_after_ms - self.wall_before_ms


class EraBook:
    """The eras known (oldest first), the current one, and what changed since last asked.

    Args:
        eras: those kept in the buffer database, oldest first.
        max_skew_ms: within this of true time a clock counts as right.
        threshold_ms: a step larger than this is a jump.
        floor_ms: a clock earlier than this is wrong.
    """

    def __init__(self, eras: list[Era], max_skew_ms: int, threshold_ms: int, floor_ms: int) -> None:
        self.eras = {e.id: e for e in sorted(eras, key=lambda e: e.id)}
        self.max_skew_ms = max_skew_ms
        self.threshold_ms = threshold_ms
        self.floor_ms = floor_ms
        self._current: Era | None = None
        self.changed: set[int] = set()  # eras to write back
        self.new_jumps: list[Jump] = []  # jumps to write down
        self.last_jump: Jump | None = None

    @property
    def current(self) -> Era:
        assert self._current is not None, "EraBook.start() first"
        return self._current

    # -- the clock seen ------------------------------------------------------------------------------

    def start(self, boot_id: str, boot_ms: int, wall_ms: int) -> None:
        """The agent starts: close the eras of boots that are over, then continue the last era or
        begin a new one (after a jump while the agent was stopped, or in a new boot)."""
        last = next(reversed(self.eras.values()), None)
        same_boot = last is not None and last.boot_id == boot_id and boot_ms >= last.end_boot_ms
        for boot in {e.boot_id for e in self.eras.values() if e.state == PENDING}:
            if not (same_boot and last is not None and boot == last.boot_id):
                self._boot_ended(boot, wall_ms)
        if last is not None and same_boot:
            step = (wall_ms - boot_ms) - last.base_ms
            self._extend(last, boot_ms)
            self.changed.add(last.id)
            if abs(step) <= self.threshold_ms:
                self._current = last
                self._extend(last, boot_ms, wall_ms)
                return
            self._jumped(last, boot_ms, wall_ms, step, while_stopped=True)
            return
        self._current = self._new_era(boot_id, boot_ms, wall_ms, None)

    def observe(self, boot_ms: int, wall_ms: int) -> Jump | None:
        """A reading of both clocks; the jump, if the wall clock stepped since the last reading."""
        era = self.current
        step = (wall_ms - boot_ms) - era.base_ms
        if abs(step) <= self.threshold_ms:
            self._extend(era, boot_ms, wall_ms)
            return None
        # The old clock ran until now, as far as anyone can tell: stamps up to here may be its.
        self._extend(era, boot_ms)
        return self._jumped(era, boot_ms, wall_ms, step, while_stopped=False)

    def _extend(self, era: Era, boot_ms: int, wall_ms: int | None = None) -> None:
        if wall_ms is None:
            wall_ms = boot_ms + era.base_ms  # in the era's own frame
        era.end_boot_ms, era.end_wall_ms = boot_ms, wall_ms

    def _jumped(self, era: Era, boot_ms: int, wall_ms: int, step: int, while_stopped: bool) -> Jump:
        new = self._new_era(era.boot_id, boot_ms, wall_ms, step)
        jump = Jump(era.boot_id, boot_ms, era.id, new.id, era.end_wall_ms, wall_ms, while_stopped)
        self.new_jumps.append(jump)
        self.last_jump = jump
        self.changed.add(era.id)
        self._current = new
        self._derive(era.boot_id, wall_ms)
        return jump

    def _new_era(self, boot_id: str, boot_ms: int, wall_ms: int, jump_in: int | None) -> Era:
        number = max(self.eras, default=0) + 1
        # A boot's first era may have stamped since the boot (a local Prometheus started before the
        # agent): it begins at boot, as far as anyone can tell. Later ones begin at their jump.
        start_boot, start_wall = (0, wall_ms - boot_ms) if jump_in is None else (boot_ms, wall_ms)
        era = Era(number, boot_id, start_boot, boot_ms, start_wall, wall_ms, jump_in, wall_ms < self.floor_ms)
        era.changed_ms = wall_ms
        self.eras[number] = era
        self.changed.add(number)
        return era

    # -- what is learnt ------------------------------------------------------------------------------

    def measured(self, era_id: int, low_ms: float, high_ms: float, now_ms: int, settle: bool = True) -> bool:
        """The collector's reply says era ``era_id``'s offset lies in ``[low_ms, high_ms]``; True when
        that settled a pending era (its held samples can now be corrected). ``settle=False``: a
        pending era only narrows its interval (more probes are coming, agent/clock/refine.py)."""
        era = self.eras.get(era_id)
        if era is None or era.state == LOST:
            return False
        if era.low_ms is not None and era.high_ms is not None:
            low, high = max(era.low_ms, low_ms), min(era.high_ms, high_ms)
            if low <= high:  # consistent with what was known: narrower
                low_ms, high_ms = low, high
        era.low_ms, era.high_ms = low_ms, high_ms
        era.estimate_ms = (low_ms + high_ms) / 2
        offset = self._snap(era.estimate_ms)
        was_pending = era.state == PENDING
        if was_pending and not settle:
            self.changed.add(era.id)
            return False
        if not was_pending and offset == era.offset_ms and era.source == "collector":
            return False  # a narrower interval only: written down with the era's next change
        # Measured beats derived or presumed; for data already released it comes too late.
        self._settle(era, offset, "collector", now_ms)
        self._derive(era.boot_id, now_ms)
        return was_pending

    def presume(self, era_id: int, source: str, now_ms: int) -> bool:
        """Take era ``era_id`` as right for want of anything better (never one below the floor)."""
        era = self.eras.get(era_id)
        if era is None or era.state != PENDING or era.below_floor:
            return False
        era.estimate_ms = 0.0
        self._settle(era, 0, source, now_ms)
        self._derive(era.boot_id, now_ms)
        return True

    def _snap(self, offset: float) -> int:
        return 0 if abs(offset) <= self.max_skew_ms else round(offset)

    def _settle(self, era: Era, offset_ms: int, source: str, now_ms: int) -> None:
        era.state, era.offset_ms, era.source, era.changed_ms = SETTLED, offset_ms, source, now_ms
        self.changed.add(era.id)

    def _derive(self, boot_id: str, now_ms: int) -> None:
        """Give every pending era of ``boot_id`` its offset from the nearest settled one, through the
        jumps between them (later anchors first on a tie: the clock is usually set right, not wrong)."""
        chain = [e for e in self.eras.values() if e.boot_id == boot_id and e.state != LOST]
        anchors = [i for i, e in enumerate(chain) if e.state == SETTLED]
        if not anchors:
            return
        for i, era in enumerate(chain):
            if era.state != PENDING:
                continue
            k = min(anchors, key=lambda a: (abs(a - i), -a))
            offset: float = chain[k].offset_ms
            steps = chain[i + 1 : k + 1] if k > i else chain[k + 1 : i + 1]
            if any(e.jump_in_ms is None for e in steps):
                continue  # not linked by jumps (cannot happen within a boot, but never guess)
            total = sum(e.jump_in_ms or 0 for e in steps)
            offset = offset + total if k > i else offset - total
            era.estimate_ms = offset
            self._settle(era, self._snap(offset), "jump", now_ms)

    def _boot_ended(self, boot_id: str, now_ms: int) -> None:
        """Boot ``boot_id`` is over and left pending eras: no reply can measure them any more."""
        chain = [e for e in self.eras.values() if e.boot_id == boot_id]
        if not any(e.state == SETTLED for e in chain):
            above = [e for e in chain if e.state == PENDING and not e.below_floor]
            if above:
                above[-1].estimate_ms = 0.0
                self._settle(above[-1], 0, "presumed", now_ms)
        self._derive(boot_id, now_ms)
        for era in chain:
            if era.state == PENDING:
                era.state, era.source, era.changed_ms = LOST, "boot ended below the floor", now_ms
                self.changed.add(era.id)

    # -- reading -------------------------------------------------------------------------------------

    def era_of(self, ts: int, slack_ms: int, among: list[Era] | None = None) -> Era | None:
        """The era whose clock stamped ``ts``: the current one if it can have, else the newest that
        can have; None when no era can (a timestamp from another clock, or from before any era).
        ``among``: only these (from :meth:`spanning`)."""
        for era in self.spanning(ts, ts, slack_ms) if among is None else among:
            if era.contains(ts, slack_ms):
                return era
        return None

    def spanning(self, first: int, last: int, slack_ms: int) -> list[Era]:
        """The eras that can have stamped something in ``[first, last]``, in :meth:`era_of`'s order."""
        current = self.current
        found = (
            [current] if current.start_wall_ms - slack_ms <= last and first <= current.end_wall_ms + slack_ms else []
        )
        for era in reversed(self.eras.values()):
            if era is not current and era.start_wall_ms - slack_ms <= last and first <= era.end_wall_ms + slack_ms:
                found.append(era)
        return found

    def pending(self) -> list[Era]:
        return [e for e in self.eras.values() if e.state == PENDING]

    def take_changes(self) -> tuple[list[Era], list[Jump]]:
        """What changed since the last call (to write down), and forget it."""
        eras = [self.eras[i] for i in sorted(self.changed) if i in self.eras]
        jumps, self.new_jumps, self.changed = self.new_jumps, [], set()
        return eras, jumps
