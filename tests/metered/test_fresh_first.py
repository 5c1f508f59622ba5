"""Fresh data first, side by side with oldest first on the same run: two real agents receive the same
scrapes (150 series every 5 s), each uploads through its own byte-counting proxy under the same cap to
one collector. Ten minutes of data wait while the link is down; when it returns, the fresh-first agent
has the last 30 s at the collector within 10 s while its backlog still drains; at the end every
acknowledged sample of both is at the collector exactly once.

The ten minutes are pushed as they would have piled up, without waiting them out: the buffer holds
the same chunks either way (compacted by the same maintenance runs), and the drain order reads only
the samples' timestamps.
"""

from __future__ import annotations

import random
import threading
import time
from functools import partial

import pytest

from backhaul.wire.series import Labels
from tests.metered.conftest import Agent, Rig, push_all
from tests.support import export, push, read_metrics, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIES = 150
CAP = 2000
STEP_MS = 5000


def scrape(ts: int, rng: random.Random) -> dict[Labels, tuple[list[int], list[float]]]:
    return {(("__name__", "noise"), ("i", str(i)), ("job", "test")): ([ts], [rng.random()]) for i in range(SERIES)}


class Live(threading.Thread):
    """Scrapes every 5 s, the same samples to every agent, retried until acknowledged."""

    def __init__(self, agents: list[Agent], first_ts: int) -> None:
        super().__init__(daemon=True)
        self.agents = agents
        self.next_ts = first_ts
        self.acked: list[int] = []
        self.stop = threading.Event()
        self.rng = random.Random(7)

    def run(self) -> None:
        while not self.stop.is_set():
            wait = self.next_ts / 1000 - time.time()
            if wait > 0 and self.stop.wait(wait):
                return
            series = scrape(self.next_ts, self.rng)
            for agent in self.agents:
                while push(agent.url, series) != [204]:
                    time.sleep(0.2)
            self.acked.append(self.next_ts)
            self.next_ts += STEP_MS


def metric_at_least(agent: Agent, name: str, labels: str, least: float) -> bool:
    return agent.metric(name, labels) >= least


def buffered_at_most(agent: Agent, most: int) -> bool:
    return int(agent.health()["buffer"]["samples"]) <= most


def stamps_at(collector_url: str, device: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in export(collector_url, f'{{__name__="noise",device_id="{device}"}}'):
        out[line["metric"]["i"]] = line["timestamps"]
    return out


def has_window(collector_url: str, device: str, lo: int, hi: int, wanted: list[int]) -> bool:
    want = [t for t in wanted if lo <= t < hi]
    found = stamps_at(collector_url, device)
    return len(found) == SERIES and all(set(want) <= set(ts) for ts in found.values())


@pytest.mark.timeout(420)
def test_after_an_outage_the_newest_data_arrives_first_and_everything_once(rig: Rig) -> None:
    proxies = [rig.proxy(), rig.proxy()]
    uplink = {"max_bytes_per_second": CAP}
    fresh = rig.agent(proxies[0], "fresh", "dev-1", uplink={**uplink, "drain_order": "fresh_first"})
    oldest = rig.agent(proxies[1], "oldest", "dev-2", uplink={**uplink, "drain_order": "oldest_first"})
    rng = random.Random(3)
    # before the outage: uploads as usual (the collector keeps the series table from then on)
    before_ms = int(time.time() * 1000) // STEP_MS * STEP_MS - 660_000
    before = scrape(before_ms, rng)
    for agent in (fresh, oldest):
        push_all(agent.url, iter([before]))
        wait_until(partial(metric_at_least, agent, "backhaul_uplink_samples_total", "", SERIES), 20, "the first upload")
        wait_until(partial(buffered_at_most, agent, 0), 20, "the first batch acknowledged")
    for p in proxies:
        p.set_down(True)

    # ten minutes of scrapes while the collector cannot be reached, then live scrapes go on. The
    # first is the batch in flight when the link went: it is re-sent unchanged (under its sequence
    # number) when the link returns, as a batch always is; the newest data goes next.
    now_ms = int(time.time() * 1000) // STEP_MS * STEP_MS + STEP_MS
    history = list(range(now_ms - 600_000, now_ms, STEP_MS))
    first = scrape(history[0], rng)
    for agent in (fresh, oldest):
        push_all(agent.url, iter([first]))
        failed = partial(metric_at_least, agent, "backhaul_uplink_batches_total", 'outcome="failed"', 1)
        wait_until(failed, 20, "the batch in flight failing")
    history = history[1:]
    scrapes = [scrape(ts, rng) for ts in history]
    for agent in (fresh, oldest):
        push_all(agent.url, iter(scrapes), together=12)
    live = Live([fresh, oldest], now_ms)
    live.start()
    try:
        time.sleep(max(0.0, now_ms / 1000 + 15 - time.time()))
        time.sleep(3)  # a compaction pass merges the outage's chunks, as it would over ten minutes
        back = time.time()
        back_ms = int(back * 1000)
        for p in proxies:
            p.set_down(False)
        acked = [now_ms - 600_000, *history, *live.acked]

        wait_until(lambda: has_window(rig.collector.url, "dev-1", back_ms - 30_000, back_ms, acked), 30,
                   "the last 30 s before the link came back, fresh first", interval=0.25)  # fmt: skip
        fresh_seconds = time.time() - back
        oldest_had_it = has_window(rig.collector.url, "dev-2", back_ms - 30_000, back_ms, acked)
        still_draining = fresh.health()["buffer"]["samples"] > SERIES * 12
        assert fresh_seconds <= 10, f"the last 30 s took {fresh_seconds:.1f} s to arrive"
        assert still_draining, "the backlog was gone already: the cap does not make the drain take a minute"
        assert not oldest_had_it, "oldest first had the newest data as early: the comparison shows nothing"

        def drained(agent: Agent) -> bool:
            return buffered_at_most(agent, SERIES * 2)  # at most the live scrapes in flight

        wait_until(lambda: drained(fresh) and drained(oldest), 240, "both backlogs drained", interval=1)
        drain_seconds = time.time() - back
        assert drain_seconds > 60, f"the drain took {drain_seconds:.0f} s: the cap should make it take over a minute"
        print(
            f"fresh first: the last 30 s after {fresh_seconds:.1f} s; both backlogs drained after {drain_seconds:.0f} s"
        )
    finally:
        live.stop.set()
        live.join(15)
    acked = [before_ms, now_ms - 600_000, *history, *live.acked]
    for device, agent in (("dev-1", fresh), ("dev-2", oldest)):
        wait_until(partial(buffered_at_most, agent, 0), 60, f"{device}'s last batches")
        found = stamps_at(rig.collector.url, device)
        assert len(found) == SERIES
        for ts in found.values():
            assert ts == sorted(set(ts)) and ts == acked  # every acknowledged sample, each once
        page = read_metrics(rig.collector.url)
        assert page.get(f'backhaul_collector_device_duplicate_samples_total{{device="{device}"}}', 0) == 0
