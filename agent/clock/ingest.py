"""Samples on their way into the buffer, sorted by the clock era that stamped them."""

from __future__ import annotations

from agent.buffer.staging import Staging
from agent.clock.keeper import TimeKeeper
from backhaul.wire.series import SeriesMap, sample_count


async def submit(keeper: TimeKeeper, staging: Staging, series: SeriesMap) -> None:
    """Commit ``series`` (stamped by the agent's clock): ready, corrected or held by era, or dropped;
    as they are when the keeper does not correct."""
    if not keeper.correcting:
        await staging.submit(series, sample_count(series), 0)
        return
    done = await keeper.split(series)
    await staging.submit(done.ready, done.samples, sum(done.dropped.values()), done.held)
    keeper.committed(done)
