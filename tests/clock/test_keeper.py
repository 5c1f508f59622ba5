"""The clock keeper with clocks the test moves, over a real buffer file and its group commit: held
samples corrected once the collector's Date (or a later jump) gives their era's offset, lost eras
expired and counted, never stored as stamped."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.buffer.metrics import BufferMetrics
from agent.buffer.staging import Staging
from agent.buffer.store import BufferStore
from agent.clock.clocks import Clocks
from agent.clock.eras import Jump
from agent.clock.keeper import TimeKeeper
from agent.clock.metrics import ClockMetrics
from agent.clock.settings import ClockSettings
from backhaul.wire.series import SeriesMap

TRUE = 1_780_000_000.0  # true time when each test begins (s)
DAY = 86_400.0
FLOOR = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClocks:
    """A wall clock the test sets, CLOCK_BOOTTIME that only moves forward, a boot id it can change."""

    def __init__(self, wall: float, boot: float = 100.0, boot_id: str = "boot-a") -> None:
        self.wall, self.boot, self.boot_id = wall, boot, boot_id

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.boot += seconds

    def clocks(self) -> Clocks:
        return Clocks(wall=lambda: self.wall, boot=lambda: self.boot, boot_id=lambda: self.boot_id)


class Agentlet:
    """The parts of an agent the keeper works with: buffer, group commit, keeper, their tasks."""

    def __init__(self, store: BufferStore, staging: Staging, keeper: TimeKeeper, metrics: ClockMetrics) -> None:
        self.store, self.staging, self.keeper, self.metrics = store, staging, keeper, metrics
        self.backward: list[Jump] = []

    async def ingest(self, series: SeriesMap) -> None:
        done = await self.keeper.split(series)
        await self.staging.submit(done.ready, done.samples, sum(done.dropped.values()), done.held)
        self.keeper.committed(done)

    async def stamps(self) -> list[int]:
        def read() -> list[int]:
            out: list[int] = []
            for (blob,) in self.store.conn.execute("SELECT data FROM chunks ORDER BY id"):
                for ts, _ in self.store.codec.decode(blob, 1 << 30).values():
                    out.extend(ts)
            return sorted(out)

        return await self.store.call(read)

    async def held(self) -> dict[int, int]:
        return await self.store.call(self.store.held)


@contextlib.asynccontextmanager
async def agentlet(
    tmp_path: Path, fake: FakeClocks, max_age: float = 7 * DAY, **clock: object
) -> AsyncIterator[Agentlet]:
    store = BufferStore(tmp_path / "buffer.db", 64 * 1024 * 1024, "FULL")
    metrics = ClockMetrics(CollectorRegistry())
    settings = ClockSettings.model_validate({"floor": FLOOR, **clock})
    backward: list[Jump] = []
    keeper = TimeKeeper(settings, store, metrics, max_age, 600, fake.clocks(), on_backward_jump=backward.append)
    async with store, keeper:
        staging = Staging(
            store,
            BufferMetrics(CollectorRegistry()),
            0.001,
            1_000_000,
            clock=lambda: fake.wall,
            rider=keeper.recorder.rider(),  # as the agent wires them
        )
        tasks = [asyncio.create_task(staging.run()), asyncio.create_task(keeper.run())]
        parts = Agentlet(store, staging, keeper, metrics)
        parts.backward = backward
        try:
            yield parts
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def scrape(ts_s: float, n: int = 10) -> SeriesMap:
    ts = int(ts_s * 1000)
    return {(("__name__", "up"), ("i", str(i))): ([ts], [1.0]) for i in range(n)}


async def eventually(predicate, what: str) -> None:
    for _ in range(200):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def reply(a: Agentlet, fake: FakeClocks, true_now: float, rtt: float = 0.02) -> int:
    """An upload and its reply, the collector's Date being ``true_now`` truncated to the second; and
    the probes that follow at once while the keeper narrows a wrong clock's offset (each timed as
    it asks, the fake clocks moved instead of sleeping). Returns how many replies there were."""
    offset = true_now - fake.wall
    for n in range(1, 20):
        fake.advance(a.keeper.probe_delay())
        sent = a.keeper.sending()
        fake.advance(rtt)
        a.keeper.replied(sent, math.floor(fake.wall - rtt / 2 + offset), ok=True)
        if not a.keeper.refining:
            return n
    raise AssertionError("the keeper kept asking for probes")


async def test_a_day_behind_held_until_the_collector_answers_then_corrected(tmp_path: Path):
    fake = FakeClocks(TRUE - DAY)
    async with agentlet(tmp_path, fake) as a:
        stamped = [int(fake.wall * 1000) + k * 1000 for k in range(3)]
        for _ in range(3):
            await a.ingest(scrape(fake.wall))
            fake.advance(1)
        assert await a.held() == {1: 30}
        assert a.keeper.needs_probe()
        reply(a, fake, TRUE + 3)
        assert not a.keeper.needs_probe()
        await eventually(lambda: _empty(a), "the held samples to be corrected")
        got = sorted(set(await a.stamps()))
        errors = [g - (s + DAY * 1000) for g, s in zip(got, stamped, strict=True)]
        assert all(abs(e) <= 1000 for e in errors), errors  # the Date's second, and the round trip
        assert a.keeper.corrected_total == 30 and (await a.store.call(a.store.counters))["corrected_samples"] == 30
        # from now on corrected on the way in
        await a.ingest(scrape(fake.wall, n=4))
        assert a.metrics.corrected._value.get() == 34
        assert max(await a.stamps()) >= int((fake.wall + DAY - 1) * 1000)


async def _empty(a: Agentlet) -> bool:
    return await a.held() == {}


async def test_the_collector_unreachable_until_ntp_steps_the_clock_the_step_is_the_offset(tmp_path: Path):
    fake = FakeClocks(TRUE - DAY)
    async with agentlet(tmp_path, fake) as a:
        first = int(fake.wall * 1000)
        await a.ingest(scrape(fake.wall))
        fake.advance(2)
        fake.wall += DAY  # NTP steps the clock right; the link is down still
        await a.ingest(scrape(fake.wall))
        assert await a.held() == {1: 10, 2: 10}
        assert a.keeper.book.last_jump is not None and a.keeper.book.last_jump.jump_ms == DAY * 1000
        reply(a, fake, fake.wall)  # the first reply: the stepped clock is right
        await eventually(lambda: _empty(a), "both eras settled")
        stamps = set(await a.stamps())
        assert first + int(DAY * 1000) in stamps  # exact: the step, not the Date's second
        assert a.keeper.book.eras[1].source == "jump"


async def test_a_clock_at_1970_that_no_reply_ever_measured_is_expired_at_the_next_boot(tmp_path: Path):
    fake = FakeClocks(86_400.0)  # 1970-01-02, below the floor
    async with agentlet(tmp_path, fake) as a:
        for _ in range(5):
            await a.ingest(scrape(fake.wall))
            fake.advance(1)
        assert await a.held() == {1: 50}
        assert a.keeper.skew_seconds() < -(FLOOR.timestamp() - 90_000)  # ClockSkew sees it
    rebooted = FakeClocks(TRUE, boot=20.0, boot_id="boot-b")
    async with agentlet(tmp_path, rebooted) as a:
        await eventually(lambda: _empty(a), "the lost era's samples expired")
        assert await a.stamps() == []
        assert (await a.store.call(a.store.counters))["expired_samples"] == 50
        assert a.metrics.expired._value.get() == 50
        assert a.keeper.book.eras[1].state == "lost"


async def test_held_samples_expire_after_max_age_told_by_boottime(tmp_path: Path):
    fake = FakeClocks(86_400.0)
    async with agentlet(tmp_path, fake, max_age=60) as a:
        await a.ingest(scrape(fake.wall))
        fake.advance(30)
        await a.ingest(scrape(fake.wall))
        fake.advance(40)  # the first scrape is 70 s old by CLOCK_BOOTTIME, the second 40 s
        await a.keeper.expire_held()
        assert await a.held() == {1: 10}


async def test_a_backward_jump_is_recorded_and_reported(tmp_path: Path):
    fake = FakeClocks(TRUE + DAY)
    async with agentlet(tmp_path, fake) as a:
        reply(a, fake, TRUE)
        assert a.keeper.book.current.offset_ms == pytest.approx(-DAY * 1000, abs=1000)
        fake.wall -= DAY
        await a.keeper.check()
        assert len(a.backward) == 1 and a.backward[0].jump_ms == -DAY * 1000
        assert a.keeper.book.current.state == "settled" and a.keeper.book.current.offset_ms == 0
        rows = await a.store.call(lambda: a.store.conn.execute("SELECT jump_ms FROM clock_jumps").fetchall())
        assert rows == [(-DAY * 1000,)]
        assert a.metrics.jumps.labels("backward")._value.get() == 1


async def test_replies_without_a_date_presume_a_clock_above_the_floor(tmp_path: Path):
    fake = FakeClocks(TRUE)
    async with agentlet(tmp_path, fake) as a:
        await a.ingest(scrape(fake.wall))
        a.keeper.replied(a.keeper.sending(), None, ok=True)
        assert a.keeper.book.current.source == "no date"
        await eventually(lambda: _empty(a), "the era's samples released")


async def test_the_window_is_judged_by_true_time_not_by_a_wrong_clock(tmp_path: Path):
    fake = FakeClocks(TRUE - 10 * DAY)  # ten days behind: everything it stamps looks old
    async with agentlet(tmp_path, fake) as a:
        reply(a, fake, TRUE)
        await a.ingest(scrape(fake.wall))  # stamped by the wrong clock: corrected, kept
        await a.ingest(scrape(TRUE - 8 * DAY))  # from another clock, older than max_age: too old
        done = await a.keeper.split(scrape(TRUE - 8 * DAY))
        assert done.dropped == {"too_old": 10}
        assert len(await a.stamps()) == 10


async def test_with_correct_off_nothing_is_held(tmp_path: Path):
    fake = FakeClocks(86_400.0)
    async with agentlet(tmp_path, fake, correct=False) as a:
        assert not a.keeper.needs_probe()
        assert a.keeper.book.current.below_floor


def test_the_floor_defaults_to_the_newest_module(tmp_path: Path):
    from agent.clock.clocks import build_time

    assert datetime(2020, 1, 1, tzinfo=UTC).timestamp() < build_time() <= datetime.now(UTC).timestamp() + 1


async def test_a_boots_first_era_covers_what_was_stamped_before_the_agent_started(tmp_path: Path):
    fake = FakeClocks(86_400.0, boot=300.0)  # 1970, five minutes after boot: Prometheus ran before us
    async with agentlet(tmp_path, fake) as a:
        await a.ingest(scrape(fake.wall - 240))
        assert await a.held() == {1: 10}  # held with the era, not taken as another clock's


async def test_probes_pause_when_a_reply_cannot_settle_the_era(tmp_path: Path):
    fake = FakeClocks(86_400.0)  # below the floor: a reply without a Date settles nothing
    async with agentlet(tmp_path, fake) as a:
        assert a.keeper.needs_probe()
        a.keeper.replied(a.keeper.sending(), None, ok=True)
        assert a.keeper.book.current.state == "pending"
        assert not a.keeper.needs_probe()


async def test_a_held_samples_age_is_known_even_before_its_offset(tmp_path: Path):
    fake = FakeClocks(86_400.0 * 40, boot=30 * 86_400.0)  # 1970-02-10, a month after boot
    async with agentlet(tmp_path, fake) as a:
        done = await a.keeper.split(scrape(fake.wall - 8 * DAY))  # this clock, eight days ago
        assert done.dropped == {"too_old": 10} and not done.held
        done = await a.keeper.split(scrape(fake.wall - 6 * DAY))
        assert done.held and not done.dropped


@pytest.mark.parametrize(("rtt", "error_ms"), [(0.002, 20), (0.02, 30), (0.3, 160)])
async def test_probes_that_straddle_the_collectors_second_narrow_the_offset_to_the_round_trip(
    tmp_path: Path, rtt: float, error_ms: float
):
    true_offset = DAY + 0.3737  # a day behind, and a fraction of a second the Date alone cannot tell
    fake = FakeClocks(TRUE - true_offset)
    async with agentlet(tmp_path, fake) as a:
        replies = reply(a, fake, TRUE, rtt=rtt)
        era = a.keeper.book.current
        assert era.state == "settled" and era.source == "collector"
        assert abs(era.offset_ms - true_offset * 1000) <= error_ms, (era.offset_ms, replies)
        assert era.low_ms is not None and era.high_ms is not None
        assert era.low_ms <= true_offset * 1000 <= era.high_ms
        assert 2 <= replies <= 9
        assert not a.keeper.needs_probe() and not a.keeper.refining


async def test_a_clock_within_max_skew_settles_at_the_first_reply(tmp_path: Path):
    fake = FakeClocks(TRUE - 2.4)
    async with agentlet(tmp_path, fake) as a:
        assert reply(a, fake, TRUE) == 1
        assert a.keeper.book.current.offset_ms == 0


async def test_the_eras_end_is_written_down_while_samples_come_in_not_while_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.clock import keeper as keeper_module
    from agent.clock import recorder

    monkeypatch.setattr(keeper_module, "WATCH_INTERVAL", 0.01)
    monkeypatch.setattr(recorder, "SAVE_INTERVAL", 0.0)  # every commit, once samples came in
    fake = FakeClocks(TRUE)

    async def saved_end(a: Agentlet) -> int:
        rows = await a.store.call(lambda: a.store.conn.execute("SELECT max(end_wall_ms) FROM clock_eras").fetchall())
        return int(rows[0][0])

    async with agentlet(tmp_path, fake) as a:
        start = await saved_end(a)
        fake.advance(60)
        await asyncio.sleep(0.2)  # many passes of the keeper, nothing ingested
        assert await saved_end(a) == start  # idle: nothing written (IDLE_SAVE_INTERVAL is 15 min)
        await a.ingest(scrape(fake.wall))

        async def caught_up() -> bool:
            return await saved_end(a) >= int(fake.wall * 1000)

        await eventually(caught_up, "the era's end written after a sample came in")


async def test_the_eras_end_rides_in_the_commit_of_the_samples_it_covers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16: no transaction (and fsync) of its own every 10 s while samples come in; the commit
    that stores them writes the era's end too, so the end on disk is never behind stored stamps by
    more than SAVE_INTERVAL (here 0: not at all)."""
    from agent.clock import keeper as keeper_module
    from agent.clock import recorder

    monkeypatch.setattr(keeper_module, "WATCH_INTERVAL", 3600.0)  # the keeper's own pass never comes
    monkeypatch.setattr(recorder, "SAVE_INTERVAL", 0.0)
    fake = FakeClocks(TRUE)

    async def saved_end(a: Agentlet) -> int:
        rows = await a.store.call(lambda: a.store.conn.execute("SELECT max(end_wall_ms) FROM clock_eras").fetchall())
        return int(rows[0][0])

    async with agentlet(tmp_path, fake) as a:
        for _ in range(3):
            fake.advance(30)
            await a.ingest(scrape(fake.wall))
            assert await saved_end(a) >= int(fake.wall * 1000)  # as soon as the commit returned
        assert max(await a.stamps()) == int(fake.wall * 1000)


async def test_a_hold_committed_after_its_era_settled_still_ends(tmp_path: Path):
    # Sorted while the era was pending, committed after the reply settled it: the keeper's pass had
    # already found nothing held, and the chunk stayed held for good (a CI run caught it: 200 samples
    # never sent after an outage).
    fake = FakeClocks(TRUE - DAY)
    async with agentlet(tmp_path, fake) as a:
        done = await a.keeper.split(scrape(fake.wall))
        assert done.held
        reply(a, fake, TRUE)
        await asyncio.sleep(0.2)  # the keeper's pass ends the holds there are (none yet)
        await a.staging.submit(done.ready, done.samples, sum(done.dropped.values()), done.held)
        a.keeper.committed(done)
        await eventually(lambda: _empty(a), "the late hold to end")
        assert a.keeper.corrected_total == 10
