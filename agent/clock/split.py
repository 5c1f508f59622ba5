"""Which incoming samples go as they are, corrected, held, or dropped (with ``clock.correct``).

Every sample is looked up by its timestamp among the eras whose clock can have stamped it (the
current era first). Samples of a settled era are moved by its offset; of a pending era, held under
the era's id until its offset is known; of a lost era, dropped (``clock_era_lost``). A timestamp no
era can have stamped came from another clock (a sender elsewhere) and is taken as it is. What goes
is then held to the accepted window (``buffer.max_age`` back, ``ingest.max_future`` ahead) around
the best estimate of true time, not around a clock known to be wrong: a sample is never dropped as
"too old" just because the agent's clock was wrong. A held sample's age is known even so: within its
era, the clock measures elapsed time right (against CLOCK_BOOTTIME), whatever it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.clock.eras import LOST, PENDING, SETTLED, Era, EraBook
from backhaul.wire.series import Labels, SeriesMap, append_series, sample_count, time_range


@dataclass
class Split:
    """What one request (or scrape) became.

    Args:
        ready: samples that go now (corrected where their era's offset is not 0).
        held: samples waiting for their era's offset, by era id.
        samples: samples kept, ready and held.
        corrected: ready samples whose timestamps were moved.
        dropped: samples dropped, by reason (``too_old``, ``too_far_in_future``, ``clock_era_lost``).
    """

    ready: SeriesMap = field(default_factory=dict)
    held: dict[int, SeriesMap] = field(default_factory=dict)
    samples: int = 0
    corrected: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def hold(self, era: int, labels: Labels, stamps: list[int], values: list[float]) -> None:
        append_series(self.held.setdefault(era, {}), labels, stamps, values)
        self.samples += len(stamps)


def split(
    series: SeriesMap,
    book: EraBook,
    now_ms: int,
    boot_ms: int,
    max_age_ms: int,
    max_future_ms: int,
    slack_ms: int,
) -> Split:
    """Sort ``series`` (stamped ``now_ms`` or earlier by this agent's clock, or by another clock);
    ``boot_ms``: CLOCK_BOOTTIME now."""
    w = window(book, now_ms, boot_ms, max_age_ms, max_future_ms, slack_ms)
    whole = _whole(series, book, now_ms, max_age_ms, w)
    return whole if whole is not None else _each(series, book, now_ms, max_age_ms, w)


@dataclass(frozen=True)
class Window:
    """The accepted window around true time (``lo``..``hi``) and what else sorting needs."""

    lo: int
    hi: int
    oldest_boot_ms: int  # CLOCK_BOOTTIME ``buffer.max_age`` ago
    slack_ms: int


def window(book: EraBook, now_ms: int, boot_ms: int, max_age_ms: int, max_future_ms: int, slack_ms: int) -> Window:
    current = book.current
    true_now = now_ms + (current.offset_ms if current.state == SETTLED else 0)
    return Window(true_now - max_age_ms, true_now + max_future_ms, boot_ms - max_age_ms, slack_ms)


def _whole(series: SeriesMap, book: EraBook, now_ms: int, max_age_ms: int, w: Window) -> Split | None:
    """The pass sorted at once, when every series would be sorted alike (else None): all inside the
    window and either stamped by this era's right clock or by no era's clock here (a sender
    elsewhere), so all ready as they are; or all stamped by this era's pending clock within
    ``max_age``, so all held. Its bounds are found in C (``time_range``); series by series in
    Python it was 9% of the agent's CPU at 10k series."""
    if not series:
        return None
    current = book.current
    first, last = time_range(series)
    mine_lo, mine_hi = current.start_wall_ms - w.slack_ms, now_ms + w.slack_ms
    mine = mine_lo <= first and last <= mine_hi  # so is every series
    apart = last < mine_lo or first > mine_hi  # so is no series
    plain = current.state == SETTLED and not current.offset_ms
    out = Split(samples=sample_count(series))
    if (
        w.lo <= first
        and last <= w.hi
        and ((plain and mine) or ((plain or apart) and not book.spanning(first, last, w.slack_ms)))
    ):
        out.ready = dict(series)
    elif mine and current.state == PENDING and first >= now_ms - max_age_ms:
        out.held[current.id] = dict(series)
    else:
        return None
    return out


def _each(series: SeriesMap, book: EraBook, now_ms: int, max_age_ms: int, w: Window) -> Split:
    """The pass sorted series by series."""
    out = Split()
    current = book.current
    lo, hi, slack_ms = w.lo, w.hi, w.slack_ms
    mine_lo, mine_hi = current.start_wall_ms - slack_ms, now_ms + slack_ms
    offset = current.offset_ms
    for labels, (stamps, values) in series.items():
        first, last = (stamps[0], stamps[0]) if len(stamps) == 1 else (min(stamps), max(stamps))
        if mine_lo <= first and last <= mine_hi:  # the usual case: all stamped by the current era
            if current.state == PENDING and first >= now_ms - max_age_ms:
                out.hold(current.id, labels, stamps, values)
                continue
            if current.state == SETTLED and lo <= first + offset and last + offset <= hi:
                if offset:
                    stamps = [t + offset for t in stamps]
                    out.corrected += len(stamps)
                out.ready[labels] = (stamps, values)
                out.samples += len(stamps)
                continue
        eras = book.spanning(first, last, slack_ms)
        if not eras and lo <= first and last <= hi:  # from another clock, all inside the window
            out.ready[labels] = (stamps, values)
            out.samples += len(stamps)
            continue
        _one_by_one(out, book, eras, labels, stamps, values, lo, hi, w.oldest_boot_ms, slack_ms)
    return out


def _one_by_one(
    out: Split,
    book: EraBook,
    eras: list[Era],
    labels: Labels,
    stamps: list[int],
    values: list[float],
    lo: int,
    hi: int,
    oldest_boot_ms: int,
    slack_ms: int,
) -> None:
    kept_t: list[int] = []
    kept_v: list[float] = []
    for t, v in zip(stamps, values, strict=True):
        era = book.era_of(t, slack_ms, eras) if eras else None
        shift = 0
        if era is not None:
            if era.state == PENDING:
                # Its age by CLOCK_BOOTTIME (in this boot; an ended boot has no pending era).
                if t - era.base_ms < oldest_boot_ms and era.boot_id == book.current.boot_id:
                    out.drop("too_old")
                else:
                    out.hold(era.id, labels, [t], [v])
                continue
            if era.state == LOST:
                out.drop("clock_era_lost")
                continue
            shift = era.offset_ms
        t += shift
        if t < lo:
            out.drop("too_old")
        elif t > hi:
            out.drop("too_far_in_future")
        else:
            kept_t.append(t)
            kept_v.append(v)
            if shift:
                out.corrected += 1
    if kept_t:
        append_series(out.ready, labels, kept_t, kept_v)
        out.samples += len(kept_t)
