"""Two collector processes sharing one PostgreSQL database, receiving from the same devices: every
batch stored once, none lost, even when both instances receive the same batch at the same moment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import pytest

from backhaul.wire.series import sample_count
from tests.conftest import Running
from tests.fleet.balancer import RoundRobin
from tests.fleet.batches import batch_body, headers, series_for
from tests.support import TOKEN, Sender, exported_samples, metric_value, wait_until

pytestmark = pytest.mark.integration

TOKENS = {"dev-1": TOKEN, "dev-2": TOKEN + "-2"}
BATCHES = 30  # per device


def two_instances(start_collector: Callable[..., Running], dsn: str) -> list[Running]:
    store = {"backend": "postgres", "dsn": dsn, "pool_size": 4}
    return [start_collector(name=name, store=store) for name in ("a", "b")]


async def fetch(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def post(session: aiohttp.ClientSession, url: str, body: bytes, token: str) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/api/v1/batches", data=body, headers=headers(token)) as resp:
        return resp.status, await resp.json()


async def test_the_same_batches_through_two_instances_are_stored_once(
    start_collector: Callable[..., Running], pg_dsn: str
) -> None:
    a, b = two_instances(start_collector, pg_dsn)
    expected: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
    total = 0
    raced = 0
    async with aiohttp.ClientSession() as session:
        for seq in range(1, BATCHES + 1):
            sends = []
            for device, token in TOKENS.items():
                series = series_for(device, seq)
                total += sample_count(series)
                for labels, (stamps, values) in series.items():
                    key = tuple(sorted((*labels, ("device_id", device))))
                    expected.setdefault(key, {}).update(zip(stamps, values, strict=True))
                body = batch_body(device, seq, series, agent_version="1.0")
                # A third of the batches to a, a third to b, a third to both at once (a retry that a
                # load balancer sent to the other instance while the first was still storing it).
                targets = [[a], [b], [a, b]][seq % 3]
                raced += len(targets) == 2
                sends.append(asyncio.gather(*(post(session, c.url, body, token) for c in targets)))
            for answers in await asyncio.gather(*sends):
                assert all(status == 200 for status, _ in answers), answers
                # exactly one instance stored it; the other answered "duplicate"
                flags = sorted(reply["duplicate"] for _, reply in answers)
                assert flags == [False, True][: len(answers)], answers

    # Both instances export the same, complete data, each sample once.
    for collector in (a, b):
        got = exported_samples(collector.url, '{__name__=~"fleet_metric_.*"}', drop=())
        assert got == expected
    stored = sum(metric_value(c.url, "backhaul_collector_stored_samples_total") for c in (a, b))
    assert stored == total

    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT device, batches, samples, duplicate_samples, duplicate_batches FROM devices")
        assert await conn.fetchval("SELECT count(*) FROM batches") == BATCHES * len(TOKENS)
        # every sample once: in the chunks as stored, and counted new once
        assert await conn.fetchval("SELECT sum(samples) FROM chunks") == total
        assert await conn.fetchval("SELECT sum(stored) FROM chunks") == total
    finally:
        await conn.close()
    for row in rows:
        assert row["batches"] == BATCHES
        assert row["samples"] == total // len(TOKENS)
        assert row["duplicate_samples"] == 0  # a batch stored twice would show up here
        assert row["duplicate_batches"] == raced // len(TOKENS)


@pytest.mark.faults
def test_agents_behind_a_balancer_lose_nothing_when_an_instance_dies(
    start_collector: Callable[..., Running], start_agent: Callable[..., Running], pg_dsn: str
) -> None:
    """Two real agents upload through a round-robin balancer to two instances; one instance is
    killed (SIGKILL) half-way. Every sample the agents acknowledged arrives once."""
    a, b = two_instances(start_collector, pg_dsn)
    with RoundRobin([a.url, b.url]) as balancer:
        uplink = {"batch_interval": 0.1, "backoff_min": 0.1, "backoff_max": 0.5}
        agents = {
            device: start_agent(
                balancer.url, name=f"agent-{device}", device_id=device, uplink={"token": token, **uplink}
            )
            for device, token in TOKENS.items()
        }
        senders = {device: Sender(agent.url, series=50, interval=0.05) for device, agent in agents.items()}
        for sender in senders.values():
            sender.start()
        wait_until(lambda: min(balancer.forwarded.values()) >= 5, 30, "uploads through both instances")
        a.proc.kill()
        time.sleep(1.5)
        for sender in senders.values():
            sender.stop()
        for agent in agents.values():
            # a def, not a lambda with a default: mypy cannot type such a lambda as a predicate
            def drained(url: str = agent.url) -> bool:
                return metric_value(url, "backhaul_buffer_samples") == 0

            wait_until(drained, 30, "drained")

    assert balancer.failed > 0  # the agents did meet the dead instance, and retried elsewhere
    for device, sender in senders.items():
        got = exported_samples(b.url, f'{{device_id="{device}",job="sender"}}')
        assert {(labels, ts): v for labels, series in got.items() for ts, v in series.items()} == sender.acked
    # a batch stored twice (once by the killed instance, once by the survivor) would count here
    assert asyncio.run(fetch(pg_dsn, "SELECT max(duplicate_samples) FROM devices")) == 0
