"""Sorting a pass's samples (agent/clock/split.py) when the clock is right: every sample inside the
accepted window goes as it is, every other one is dropped with its reason, whether the pass is sorted
whole (the usual pass, all inside) or series by series."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock.eras import SETTLED, EraBook
from agent.clock.split import _each, split, window
from backhaul.wire.series import SeriesMap

NOW = 1_780_000_000_000
AGE, FUTURE, SLACK = 3_600_000, 60_000, 1_000
LO, HI = NOW - AGE, NOW + FUTURE


def _right_clock() -> EraBook:
    book = EraBook([], max_skew_ms=30_000, threshold_ms=1000, floor_ms=NOW - 30 * 86_400_000)
    book.start("boot-a", 5_000, NOW - 600_000)  # the era began ten minutes ago
    assert book.presume(1, "test", NOW) and book.current.state == SETTLED and book.current.offset_ms == 0
    return book


_stamp = st.one_of(
    st.integers(NOW - 900_000, NOW),  # the usual: stamped by this era, just now
    st.integers(LO - 5_000, LO + 5_000),  # about max_age back
    st.integers(HI - 5_000, HI + 5_000),  # about max_future ahead
)
_series = st.dictionaries(
    st.tuples(st.tuples(st.just("__name__"), st.sampled_from("abcdefgh"))),
    st.lists(_stamp, min_size=1, max_size=4),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(_series)
def test_with_a_right_clock_a_sample_goes_exactly_when_it_is_inside_the_window(
    stamped: dict[tuple[tuple[str, str]], list[int]],
) -> None:
    series: SeriesMap = {labels: (ts, [float(t % 97) for t in ts]) for labels, ts in stamped.items()}
    done = split(series, _right_clock(), NOW, 5_000 + 600_000, AGE, FUTURE, SLACK)
    want = {
        labels: ([t for t in ts if LO <= t <= HI], [float(t % 97) for t in ts if LO <= t <= HI])
        for labels, (ts, _) in series.items()
    }
    assert done.ready == {labels: kept for labels, kept in want.items() if kept[0]}
    assert done.samples == sum(len(ts) for ts, _ in want.values()) and not done.held and not done.corrected
    stamps = [t for ts, _ in series.values() for t in ts]
    dropped = {"too_old": sum(t < LO for t in stamps), "too_far_in_future": sum(t > HI for t in stamps)}
    assert done.dropped == {reason: n for reason, n in dropped.items() if n}


@st.composite
def _books(draw: st.DrawFn) -> tuple[EraBook, int]:
    """A book in any state, and the agent's wall clock now: a jump or not, the current era pending,
    right, or settled with an offset; the book last saw the clock up to 5 s ago."""
    book = EraBook([], max_skew_ms=30_000, threshold_ms=1000, floor_ms=NOW - 30 * 86_400_000)
    book.start("boot-a", 5_000, NOW - 2 * AGE)  # this era may be older than max_age
    boot_now = 5_000 + 2 * AGE
    if draw(st.booleans()):
        step = draw(st.sampled_from([-1, 1])) * draw(st.integers(2_000, 3_600_000))
        jump = book.observe(boot_now - 600_000, NOW - 600_000 + step)  # ten minutes ago
        assert jump is not None
    seen = boot_now - draw(st.integers(0, 5_000))
    book.observe(seen, seen + book.current.base_ms)
    state = draw(st.sampled_from(["pending", "right", "offset"]))
    if state == "right":
        book.presume(book.current.id, "test", NOW)
    elif state == "offset":
        offset = draw(st.integers(-600_000, 600_000))
        book.measured(book.current.id, offset - 10, offset + 10, NOW)
    return book, boot_now + book.current.base_ms


BOOT_NOW = 5_000 + 2 * AGE


@settings(max_examples=1500, deadline=None)
@given(_books(), st.data())
def test_a_pass_sorted_whole_is_sorted_as_series_by_series(drawn: tuple[EraBook, int], data: st.DataObject) -> None:
    book, now = drawn
    near = st.one_of(
        *(st.integers(era.start_wall_ms - 2_000, era.end_wall_ms + 2_000) for era in book.eras.values()),
        st.integers(now - 900_000, now + 2_000),  # this era, about now
        st.integers(now - 7_000, now + 2_000),  # since the book last saw the clock, or just before
        st.integers(NOW - 3 * 86_400_000, NOW - 3 * 86_400_000 + 60_000),  # another clock, days back
        st.integers(now - AGE - 5_000, now - AGE + 5_000),  # about max_age back
        st.integers(now + FUTURE - 5_000, now + FUTURE + 5_000),  # about max_future ahead
    )
    # Most passes come from one place: all stamps within a second of one anchor; or from anywhere.
    anchor = data.draw(near)
    stamp = st.integers(anchor - 500, anchor + 500) if data.draw(st.booleans()) else near
    stamped = data.draw(
        st.dictionaries(
            st.tuples(st.tuples(st.just("__name__"), st.sampled_from("abcdefgh"))),
            st.lists(stamp, min_size=1, max_size=3),
            min_size=1,
            max_size=6,
        )
    )
    series: SeriesMap = {labels: (ts, [float(t % 89) for t in ts]) for labels, ts in stamped.items()}
    copy: SeriesMap = {labels: (list(ts), list(vs)) for labels, (ts, vs) in series.items()}
    w = window(book, now, BOOT_NOW, AGE, FUTURE, SLACK)
    assert split(series, book, now, BOOT_NOW, AGE, FUTURE, SLACK) == _each(copy, book, now, AGE, w)
