"""The link's parts on their own: calendar periods, windows, the cap's token bucket, the budget and
what the buffer keeps of it, and the drain policy's decisions on an injected clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.buffer.store import BufferStore
from agent.uplink.budget import Budget
from agent.uplink.cap import TokenBucket
from agent.uplink.link import MIN_BATCH, OVERHEAD, Link
from agent.uplink.policy import BATCH_HEADER, Backlog, DrainPolicy
from agent.uplink.settings import UplinkSettings
from agent.uplink.windows import Windows
from backhaul.periods import Periods


def at(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_days_and_months_follow_the_time_zone_and_the_reset_day() -> None:
    kolkata = Periods("Asia/Kolkata", reset_day=31)
    now = at("2026-02-27T23:00:00", "UTC")  # already 28 February in Kolkata (UTC+5:30)
    day = kolkata.day(now)
    assert day.key == 20260228 and day.end == at("2026-03-01T00:00:00", "Asia/Kolkata")
    # a plan renewing on the 31st renews on the last day of a shorter month
    month = kolkata.month(now)
    assert month.key == 20260228 and month.end == at("2026-03-31T00:00:00", "Asia/Kolkata")
    assert kolkata.month(at("2026-02-10T12:00:00")).key == 20260131
    assert Periods("UTC", 1).month(at("2026-12-31T23:59:59")).end == at("2027-01-01T00:00:00")
    with pytest.raises(ValueError, match="unknown time zone"):
        Periods("Mars/Olympus_Mons")


def test_windows_open_in_the_minutes_an_expression_matches() -> None:
    w = Windows(["* 1-4 * * *"], "Europe/Berlin")
    assert not w.open(at("2026-12-02T00:59:59", "Europe/Berlin"))
    assert w.open(at("2026-12-02T01:00:00", "Europe/Berlin")) and w.open(at("2026-12-02T04:59:59", "Europe/Berlin"))
    assert w.next_open(at("2026-12-02T00:30:00", "Europe/Berlin")) == at("2026-12-02T01:00:00", "Europe/Berlin")
    assert w.closes(at("2026-12-02T02:10:30", "Europe/Berlin")) == at("2026-12-02T05:00:00", "Europe/Berlin")
    assert w.closes(at("2026-12-02T06:00:00", "Europe/Berlin")) is None
    always = Windows([])
    assert always.open(0) and always.next_open(0) is None and always.closes(0) is None
    with pytest.raises(ValueError, match="not a cron expression"):
        Windows(["61 * * * *"])


async def test_the_token_bucket_paces_to_its_rate() -> None:
    t = [0.0]

    async def sleep(seconds: float) -> None:
        t[0] += seconds

    bucket = TokenBucket(10_000, monotonic=lambda: t[0], sleep=sleep)
    for _ in range(100):
        await bucket.take(1000)  # 100 kB at 10 kB/s: 10 s, less the initial burst of 1 s
    assert 8.9 <= t[0] <= 9.0
    assert bucket.throttling


def test_the_budget_counts_periods_reservations_and_what_is_unsaved() -> None:
    clock = at("2026-12-02T23:59:00")
    b = Budget("uplink", daily=10_000, monthly=100_000, periods=Periods())
    b.load([("uplink", "day", 20261202, 4000), ("uplink", "month", 20261201, 50_000), ("other", "day", 20261202, 9)])
    assert b.remaining(clock) == 6000 and b.renews(clock) == at("2026-12-03T00:00:00")
    rows = b.reserve(3000, clock)
    assert rows == [("uplink", "day", 20261202, 3000), ("uplink", "month", 20261201, 3000)]
    assert b.remaining(clock) == 3000 and b.unsaved() == []  # the reservation is saved by the caller
    b.count(2500, clock)  # what the request really took
    b.release()
    assert b.remaining(clock) == 3500
    assert sorted(b.unsaved()) == [("uplink", "day", 20261202, -500), ("uplink", "month", 20261201, -500)]
    # midnight: a new day, the same month
    b.count(100, clock + 120)
    assert b.spent("day", clock + 120) == 100 and b.spent("month", clock + 120) == 52_600
    assert b.used(clock + 120) == pytest.approx(0.526)


@pytest.fixture
async def store(tmp_path: Path):
    s = BufferStore(tmp_path / "b.db", 64 << 20, "NORMAL")
    await s.call(s.open)
    yield s
    await s.call(s.close)
    await s.db.aclose()


async def test_the_buffer_keeps_usage_so_a_new_period_resets_and_an_old_one_never_hands_bytes_back(store) -> None:
    save = store.add_usage
    await store.call(save, [("uplink", "day", 20261202, 4000)])
    await store.call(save, [("uplink", "day", 20261202, -500)])  # a reservation corrected
    assert await store.call(store.usage) == [("uplink", "day", 20261202, 3500)]
    await store.call(save, [("uplink", "day", 20261203, 10)])  # the next day starts afresh
    await store.call(save, [("uplink", "day", 20261202, -3000), ("uplink", "day", 20261202, 7)])
    # a correction for the day before is ignored; bytes for it (a request over midnight) are kept
    assert await store.call(store.usage) == [("uplink", "day", 20261203, 17)]


def settings(**kw: object) -> UplinkSettings:
    return UplinkSettings.model_validate({"url": "http://c.invalid/api/v1/batches", "token": "t", **kw})


def test_the_policy_holds_outside_windows_and_when_the_budget_is_spent() -> None:
    clock = Clock(at("2026-12-02T00:59:30"))
    link = Link(settings(windows=["* 1 * * *"], daily_bytes=100_000), clock=clock)
    policy = DrainPolicy(link.settings, link)  # type: ignore[arg-type]
    backlog = Backlog(None, 50_000, 10_000)
    step = policy.next(clock(), backlog)
    assert (step.kind, step.reason, step.seconds) == ("wait", "window", 30.0)
    clock.now += 30
    step = policy.next(clock(), backlog)
    assert step.kind == "send" and step.newest_first and step.since_ms == int((clock.now - 300) * 1000)
    assert step.strict and step.max_bytes == 100_000 - OVERHEAD - BATCH_HEADER  # never more than is left
    link.count(100_000 - OVERHEAD - MIN_BATCH + 1)
    step = policy.next(clock(), backlog)
    assert (step.kind, step.reason) == ("wait", "budget")
    assert step.seconds == pytest.approx(at("2026-12-03T00:00:00") - clock.now)


def test_a_capped_link_sends_batches_of_a_few_seconds_and_a_budget_never_more_than_is_left() -> None:
    clock = Clock(at("2026-12-02T12:00:00"))
    link = Link(settings(max_bytes_per_second=10_000, daily_bytes=1_000_000), clock=clock)
    policy = DrainPolicy(link.settings, link)  # type: ignore[arg-type]
    policy.gap = False
    step = policy.next(clock(), Backlog(None, 5_000_000, 1_000_000))
    assert step.max_bytes == 100_000 and step.since_ms is None  # 10 kB/s x batch_interval (10 s)
    # under a budget a batch never exceeds its size, even with plenty left: a bigger chunk is split
    assert step.strict
    link.count(1_000_000 - 30_000)
    step = policy.next(clock(), Backlog(None, 5_000_000, 1_000_000))
    assert step.strict and step.max_bytes == 30_000 - OVERHEAD - BATCH_HEADER


def test_summarise_when_the_budget_cannot_carry_the_data_until_it_renews() -> None:
    clock = Clock(at("2026-12-02T12:00:00"))
    link = Link(settings(daily_bytes=1_000_000, when_short="summarise"), clock=clock)
    policy = DrainPolicy(link.settings, link)  # type: ignore[arg-type]
    # 60,000 samples stamped in the last ten minutes: 100 a second, ~4 MB by midnight at ~1 byte each,
    # and a backlog of 500 kB waiting
    live = Backlog(None, 500_000, 500_000, recent_samples=60_000, series=500)
    step = policy.next(clock(), live)
    assert policy.short and step.summary
    # summaries will need 500 series / 60 s x 12 h x 2 bytes = 720 kB: full data gets the rest
    assert step.strict and step.max_bytes == pytest.approx(1_000_000 - OVERHEAD - 720_000 - BATCH_HEADER, abs=2)
    # what waits fits in what full data may spend now: it goes in full, without a summary of it
    small = Backlog(None, 60_000, 60_000, recent_samples=60_000, series=500)
    step = policy.next(clock(), small)
    assert policy.short and not step.summary and step.full
    # once summaries were sent, their measured cost prices the reserve: at 3 bytes a sample they need
    # 1.08 MB until midnight, more than is left, so only summaries go
    policy.sent(3000, 9000, True, (0, 0))
    step = policy.next(clock(), live)
    assert step.summary and not step.full and step.max_bytes == 0
    # the same samples stamped hours ago (a backfill) are not a rate: the budget carries them
    old = Backlog(None, 60_000, 60_000, recent_samples=0, series=500)
    assert not policy.next(clock(), old).summary and not policy.short
    hold = Link(settings(daily_bytes=1_000_000), clock=clock)
    assert not DrainPolicy(hold.settings, hold).next(clock(), live).summary


def test_link_admits_reserves_and_refuses(tmp_path: Path) -> None:
    clock = Clock(at("2026-12-02T12:00:00"))
    link = Link(settings(daily_bytes=10_000), clock=clock)
    saved: list[list[tuple[str, str, int, int]]] = []

    async def save(rows: list[tuple[str, str, int, int]]) -> None:
        saved.append(rows)

    async def run() -> None:
        link.persist([], save)
        assert await link.admit(5000) is None
        assert saved == [[("uplink", "day", 20261202, 5000 + OVERHEAD), ("uplink", "month", 20261201, 5000 + OVERHEAD)]]
        link.count(5300)
        link.done()
        assert await link.admit(5000) == "budget"
        assert link.blocked() is None and link.affordable() == 10_000 - 5300 - OVERHEAD

    asyncio.run(run())
    assert link.report(None)["spent_day"] == 5300


def test_report_says_when_the_window_ends_and_the_next_opens() -> None:
    clock = Clock(at("2026-12-02T01:30:00"))
    link = Link(settings(windows=["* 1-2 * * *"]), clock=clock)
    r = link.report("window")
    assert r["window_ends_ms"] == at("2026-12-02T03:00:00") * 1000
    assert r["next_window_ms"] == at("2026-12-03T01:00:00") * 1000 and r["blocked"] == "window"
    assert Link(settings(), clock=clock).report(None)["next_window_ms"] == 0


def test_fresh_window_is_at_most_a_day_by_default_for_short_buffers() -> None:
    from agent.config import AgentSettings

    s = AgentSettings.model_validate({"device_id": "d", "buffer": {"max_age": 120}})
    assert s.uplink.fresh_window == timedelta(seconds=120)
