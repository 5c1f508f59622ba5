"""The rules of eras (agent/clock/eras.py): jumps, offsets from the collector and through jumps,
presumption when a boot is over, and lost eras; pure, no I/O."""

from __future__ import annotations

from agent.clock.eras import LOST, PENDING, SETTLED, Era, EraBook

DAY = 86_400_000
NOW = 1_780_000_000_000  # true time at boot + 0 (ms)
FLOOR = NOW - 30 * DAY
SKEW = 30_000


def book(eras: list[Era] | None = None) -> EraBook:
    return EraBook(eras or [], max_skew_ms=SKEW, threshold_ms=1000, floor_ms=FLOOR)


def test_a_fresh_agent_begins_a_pending_era():
    b = book()
    b.start("boot-a", 5_000, NOW)
    era = b.current
    assert (era.id, era.state, era.jump_in_ms, era.below_floor) == (1, PENDING, None, False)
    assert b.take_changes()[0] == [era]


def test_a_clock_below_the_floor_is_marked():
    b = book()
    b.start("boot-a", 5_000, 86_400_000)  # 1970-01-02
    assert b.current.below_floor


def test_small_drift_extends_the_era_a_step_makes_a_jump():
    b = book()
    b.start("boot-a", 0, NOW - DAY)
    assert b.observe(10_000, NOW - DAY + 10_400) is None  # 400 ms of slewing: the same era
    assert b.current.end_wall_ms == NOW - DAY + 10_400
    jump = b.observe(11_000, NOW + 11_000)
    assert jump is not None and (jump.from_era, jump.to_era) == (1, 2)
    assert jump.jump_ms == DAY - 400
    # the old era ran until the jump was seen, in its own frame
    assert b.eras[1].end_wall_ms == NOW - DAY + 11_400
    assert b.eras[1].end_boot_ms == 11_000
    assert b.current.jump_in_ms == DAY - 400


def test_the_collector_settles_a_wrong_clock_with_its_offset_and_a_right_one_with_zero():
    b = book()
    b.start("boot-a", 0, NOW - DAY)
    # a reply: Date said NOW+1000 (1 s resolution), sent at clock NOW-DAY+900, received at +1100
    settled = b.measured(1, (NOW + 1000) - (NOW - DAY + 1100), (NOW + 2000) - (NOW - DAY + 900), NOW - DAY)
    era = b.current
    assert settled and era.state == SETTLED and era.source == "collector"
    assert era.offset_ms == DAY + 500  # the middle of [DAY - 100, DAY + 1100]
    assert era.error_ms == 600
    # a second reply narrows it; no new settlement
    assert not b.measured(1, DAY + 300, DAY + 700, NOW - DAY)
    assert (era.low_ms, era.high_ms, era.offset_ms) == (DAY + 300, DAY + 700, DAY + 500)

    right = book()
    right.start("boot-a", 0, NOW)
    assert right.measured(1, -700, 500, NOW)
    assert (right.current.offset_ms, right.current.estimate_ms) == (0, -100)  # within max_skew: right


def test_max_skew_is_the_line_between_a_right_clock_and_a_corrected_one():
    for off_s, applied in ((-29, 0), (29, 0), (31, 31_000), (-31, -31_000)):
        b = book()
        b.start("boot-a", 0, NOW - off_s * 1000)
        # the Date's second and the round trip: the interval's middle is the clock's true offset
        assert b.measured(1, off_s * 1000 - 500, off_s * 1000 + 500, NOW - off_s * 1000)
        assert (b.current.state, b.current.offset_ms) == (SETTLED, applied), off_s


def test_a_jump_after_a_measured_era_settles_the_new_era_through_the_jump():
    b = book()
    b.start("boot-a", 0, NOW - DAY)
    b.measured(1, DAY - 200, DAY + 200, NOW - DAY)
    b.observe(60_000, NOW + 60_000)  # NTP steps the clock right
    era = b.current
    assert era.state == SETTLED and era.source == "jump"
    assert era.offset_ms == 0  # DAY - DAY: right (within max_skew)


def test_a_right_era_after_a_jump_settles_the_wrong_one_before_it_exactly():
    """The collector unreachable while the clock was 1970; NTP steps it; the first reply finds the
    new clock right: the old era's offset is the step, to the millisecond."""
    b = book()
    b.start("boot-a", 0, 86_400_000)
    b.observe(120_000, 86_520_000)
    b.observe(121_000, NOW + 121_000)  # NTP
    assert [e.state for e in b.eras.values()] == [PENDING, PENDING]
    assert b.measured(2, -400, 600, NOW + 122_000)
    assert b.eras[1].state == SETTLED and b.eras[1].source == "jump"
    assert b.eras[1].offset_ms == NOW - 86_400_000


def test_a_chain_of_jumps_adds_up():
    b = book()
    b.start("boot-a", 0, NOW - 3 * DAY)
    b.observe(10_000, NOW - 2 * DAY + 10_000)
    b.observe(20_000, NOW - DAY + 20_000)
    b.observe(30_000, NOW + 30_000)
    b.measured(4, -500, 500, NOW + 31_000)
    assert [e.offset_ms for e in b.eras.values()] == [3 * DAY, 2 * DAY, DAY, 0]


def test_a_restart_in_the_same_boot_continues_the_era_or_records_the_jump_it_missed():
    b = book()
    b.start("boot-a", 0, NOW - DAY)
    b.observe(5_000, NOW - DAY + 5_000)
    eras, _ = b.take_changes()
    again = book([Era(**vars(e)) for e in eras])
    again.start("boot-a", 50_000, NOW - DAY + 50_000)
    assert again.current.id == 1 and again.current.end_boot_ms == 50_000

    stepped = book([Era(**vars(e)) for e in eras])
    stepped.start("boot-a", 50_000, NOW + 50_000)
    jump = stepped.last_jump
    assert jump is not None and jump.while_stopped and jump.jump_ms == DAY
    assert stepped.current.id == 2 and stepped.current.jump_in_ms == DAY


def test_when_a_boot_is_over_its_newest_era_above_the_floor_is_presumed_and_the_rest_follow():
    b = book()
    b.start("boot-a", 0, 86_400_000)  # 1970
    b.observe(60_000, NOW + 60_000)  # NTP, but the collector never answered in this boot
    eras, _ = b.take_changes()
    after = book([Era(**vars(e)) for e in eras])
    after.start("boot-b", 1_000, NOW + 3_600_000)
    old = [after.eras[1], after.eras[2]]
    assert [e.state for e in old] == [SETTLED, SETTLED]
    assert old[1].source == "presumed" and old[0].source == "jump"
    assert old[0].offset_ms == NOW - 86_400_000
    assert after.current.id == 3 and after.current.state == PENDING


def test_a_boot_that_never_rose_above_the_floor_is_lost():
    b = book()
    b.start("boot-a", 0, 86_400_000)
    eras, _ = b.take_changes()
    after = book([Era(**vars(e)) for e in eras])
    after.start("boot-b", 1_000, NOW)
    assert after.eras[1].state == LOST


def test_a_reboot_is_told_by_boottime_going_back_when_there_is_no_boot_id():
    b = book()
    b.start("", 500_000, NOW)
    eras, _ = b.take_changes()
    after = book([Era(**vars(e)) for e in eras])
    after.start("", 2_000, NOW + 600_000)
    assert after.current.id == 2 and after.current.jump_in_ms is None
    assert after.eras[1].source == "presumed"


def test_presumption_never_takes_a_clock_below_the_floor():
    b = book()
    b.start("boot-a", 0, 86_400_000)
    assert not b.presume(1, "no date", 86_400_000)
    assert b.current.state == PENDING


def test_era_of_prefers_the_current_era_then_the_newest():
    b = book()
    b.start("boot-a", 0, NOW)
    b.observe(10_000, NOW + 10_000)
    b.observe(11_000, NOW + 5_000)  # a step back by 6 s: the new era overlaps the old one
    b.observe(12_000, NOW + 6_000)
    assert b.era_of(NOW + 5_500, 0) is b.current
    assert b.era_of(NOW + 10_500, 0) is b.eras[1]
    assert b.era_of(NOW - DAY, 1000) is None
