"""Clocks that lie, with real processes: an agent and a remote-write sender (tests/clock/faked_sender.py)
both under Debian's libfaketime, sharing one fake clock through a timestamp file the test rewrites to
make the clock jump; a collector on the true clock. The collector must export every sample at its
true time.

The true time of each sample is known exactly: the sender notes CLOCK_BOOTTIME at each stamp, which
libfaketime leaves alone, and this process (not faked) maps it to the true wall clock. The error
allowed, as the measurements give it:

- an era whose offset came from the collector's ``Date``: the half-width of the interval the
  replies leave, which the agent reports (``error_s`` in /healthz: its probes straddle the Date's
  second, agent/clock/refine.py), plus 50 ms for the sender's stamp on a loaded machine; and never
  more than half the Date's one-second resolution plus the round trip (0.5 s + 0.1 s here);
- an era whose offset came through a jump to a clock the collector found right: the jump is read
  against CLOCK_BOOTTIME to the millisecond; 50 ms allowed;
- an era the collector found right: not corrected; 50 ms allowed.

The largest error seen is written to test-output/clock/<test>.json (docs/clock.md quotes them).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from glob import glob
from pathlib import Path
from typing import Any

import pytest

from harness import (
    READ_HEADERS,
    TOKEN,
    Proc,
    Process,
    collector_config,
    export,
    free_port,
    get_json,
    http,
    metric_value,
    reported_losses,
    require_program,
    wait_until,
    write_toml,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DAY_S = 86_400
DATE_ERROR_MS = 600  # the Date's half second, plus the round trip on a loaded machine
EXACT_ERROR_MS = 50
SENDER_SERIES = 5


def libfaketime() -> str:
    require_program("faketime")  # Debian's faketime package brings the library too
    found = sorted(glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketimeMT.so.1 not found next to the faketime program"
    return found[0]


def fleet(collector: str) -> dict[str, Any]:
    """The collector's fleet summary, read with the harness's read token."""
    status, body, _ = http("GET", f"{collector}/api/v1/fleet", headers=READ_HEADERS, timeout=5)
    assert status == 200, body[:300]
    data: dict[str, Any] = json.loads(body)
    return data


def true_offset_ms() -> float:
    """True wall clock minus CLOCK_BOOTTIME, in ms (this process is not faked)."""
    return (time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)) * 1000


@dataclass
class FakeClock:
    """The clock the faked processes share: a libfaketime spec in a file they read on every call."""

    path: Path
    lib: str

    def set(self, spec: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(spec + "\n")
        tmp.replace(self.path)  # one step: a reader never sees half a spec

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": self.lib,
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",  # a jump is seen at once, by every process, as a real one is
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # CLOCK_MONOTONIC and CLOCK_BOOTTIME stay true
            # Its "monotonic fix" for timed condition waits stalls the agent for seconds at a time
            # (measured: 7 answers in 12 s instead of 55); the waits are monotonic and unfaked anyway.
            "FAKETIME_FORCE_MONOTONIC_FIX": "0",
        }


@dataclass
class Rig:
    tmp: Path
    clock: FakeClock
    started: list[Process]

    def collector(self, port: int | None = None) -> str:
        port = port or free_port()
        config = write_toml(
            self.tmp / "collector.toml",
            collector_config(port, self.tmp / "collector.db"),
        )
        proc = Proc("backhaul-collector", config, self.tmp / "collector.log").start()
        self.started.append(proc)
        url = f"http://127.0.0.1:{port}"
        proc.wait_healthy(url)
        return url

    def agent(self, uplink_port: int, port: int | None = None, clock: dict[str, Any] | None = None) -> tuple[Proc, str]:
        port = port or free_port()
        config = write_toml(
            self.tmp / "agent.toml",
            {
                "device_id": "dev-1",
                "shutdown_grace": 10,
                "listen": {"host": "127.0.0.1", "port": port},
                # NORMAL: durability is not what this test is about, and fsyncs are slow on a busy machine
                "buffer": {
                    "path": str(self.tmp / "agent.db"),
                    "budget_bytes": "64MiB",
                    "maintenance_interval": 1,
                    "synchronous": "NORMAL",
                },
                "uplink": {
                    "url": f"http://127.0.0.1:{uplink_port}/api/v1/batches",
                    "token": TOKEN,
                    "batch_interval": 0.2,
                    "backoff_min": 0.2,
                    "backoff_max": 0.5,
                    "timeout": 5,
                },
                "scrape": {"self_interval": 1},
                "clock": {"boot_id_file": str(self.tmp / "boot_id"), **(clock or {})},
            },
        )
        proc = Proc("backhaul-agent", config, self.tmp / "agent.log", env=self.clock.env()).start()
        self.started.append(proc)
        url = f"http://127.0.0.1:{port}"
        proc.wait_healthy(url)
        return proc, url

    def sender(self, agent_url: str) -> Process:
        argv = [sys.executable, "-m", "tests.clock.faked_sender", agent_url, str(self.tmp / "sent.jsonl")]
        argv += ["--series", str(SENDER_SERIES), "--interval", "0.2"]
        proc = Process("faked sender", argv, self.tmp / "sender.log", env=self.clock.env()).start()
        self.started.append(proc)
        return proc

    def acknowledged(self) -> list[dict[str, Any]]:
        path = self.tmp / "sent.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def wait_scrapes(self, more: int, timeout: float = 60) -> None:
        """Until the sender has ``more`` scrapes acknowledged than now (the machine may be slow)."""
        want = len(self.acknowledged()) + more
        wait_until(lambda: len(self.acknowledged()) >= want, timeout, f"{want} scrapes acknowledged", 0.1)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    clock = FakeClock(tmp_path / "faketime.rc", libfaketime())
    (tmp_path / "boot_id").write_text("11111111-1111-1111-1111-111111111111\n")
    made = Rig(tmp_path, clock, [])
    yield made
    for proc in reversed(made.started):
        proc.kill()


def clock_state(agent_url: str) -> dict[str, Any]:
    health = get_json(f"{agent_url}/healthz", timeout=5)
    assert health is not None and "clock" in health, health
    state: dict[str, Any] = health["clock"]
    return state


def exported_times(collector_url: str) -> dict[tuple[str, int], int]:
    """(series, k) -> exported timestamp of the sender's samples."""
    out: dict[tuple[str, int], int] = {}
    for line in export(collector_url, '{__name__="faked_clock_value"}'):
        for ts, value in zip(line["timestamps"], line["values"], strict=True):
            out[(line["metric"]["series"], int(float(value)))] = ts
    return out


def errors_by_phase(rig: Rig, collector_url: str, phase_of: Callable[[dict[str, Any]], str]) -> dict[str, float]:
    """Wait for every acknowledged sample at the collector; the largest |error| (ms) by phase."""
    acked = rig.acknowledged()
    assert len(acked) >= 10, "the sender got too few answers"
    want = len(acked) * SENDER_SERIES
    got = wait_until(
        lambda: (found := exported_times(collector_url)) and len(found) >= want and found,
        60,
        f"all {want} acknowledged samples at the collector",
        0.5,
    )
    offset = true_offset_ms()
    worst: dict[str, float] = {}
    for line in acked:
        true_ms = line["boot_ns"] / 1e6 + offset
        phase = phase_of(line)
        for i in range(SENDER_SERIES):
            error = got[(str(i), line["k"])] - true_ms
            if phase not in worst or abs(error) > abs(worst[phase]):
                worst[phase] = error
    wrong = [line for line in acked if abs(line["ts"] - (line["boot_ns"] / 1e6 + offset)) > 1000]
    worst["samples"] = want
    worst["stamped_by_a_wrong_clock"] = len(wrong) * SENDER_SERIES
    worst["stored_as_stamped_by_the_wrong_clock"] = sum(
        1 for line in wrong for i in range(SENDER_SERIES) if got[(str(i), line["k"])] == line["ts"]
    )
    return worst


def self_scrape_times(collector_url: str) -> list[int]:
    lines = export(collector_url, '{__name__="backhaul_buffer_budget_bytes"}')
    return sorted(ts for line in lines for ts in line["timestamps"])


def record(name: str, figures: dict[str, Any]) -> None:
    out = REPO / "test-output" / "clock"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(name, json.dumps(figures))


def by_jump(jump_boot_ns: int) -> Callable[[dict[str, Any]], str]:
    # A scrape stamped within 5 ms of the file rewrite may have seen either clock: not classified.
    return lambda line: (
        "before the jump"
        if line["boot_ns"] < jump_boot_ns - 5_000_000
        else "after the jump"
        if line["boot_ns"] > jump_boot_ns + 5_000_000
        else "at the jump"
    )


def jump(rig: Rig, spec: str) -> int:
    at = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    rig.clock.set(spec)
    return at


def test_a_day_behind_then_stepped_right_every_sample_at_its_true_time(rig: Rig):
    """The collector answers all along: the first reply finds the clock a day behind (a day behind
    is above the floor here, so only the collector can tell), held samples are corrected by the
    measured offset, new ones on the way in; NTP then steps the clock right."""
    rig.clock.set("-1d")
    collector = rig.collector()
    started_true = time.time()
    agent, agent_url = rig.agent(int(collector.rsplit(":", 1)[1]), clock={"floor": datetime(2020, 1, 1, tzinfo=UTC)})
    sender = rig.sender(agent_url)
    wait_until(lambda: clock_state(agent_url)["trusted"], 20, "the first reply to settle the era")
    state = clock_state(agent_url)
    assert state["source"] == "collector" and abs(state["offset_s"] - DAY_S) <= 1.0, state
    measured_ms = state["error_s"] * 1000
    rig.wait_scrapes(10)
    at = jump(rig, "+0")
    wait_until(lambda: clock_state(agent_url)["jumps"] >= 1, 10, "the jump to be seen")
    rig.wait_scrapes(10)
    sender.stop()
    worst = errors_by_phase(rig, collector, by_jump(at))
    assert worst["stored_as_stamped_by_the_wrong_clock"] == 0
    assert abs(worst["before the jump"]) <= DATE_ERROR_MS, worst
    assert abs(worst["before the jump"]) <= measured_ms + EXACT_ERROR_MS, (worst, measured_ms)
    assert abs(worst["after the jump"]) <= EXACT_ERROR_MS, worst
    # the agent's own scrapes (stamped by its clock) too: none a day off
    scraped = self_scrape_times(collector)
    assert scraped and started_true * 1000 - 2000 <= scraped[0] and scraped[-1] <= time.time() * 1000 + 2000
    corrected = metric_value(agent_url, "backhaul_clock_corrected_samples_total")
    assert corrected > 0
    wait_until(
        lambda: fleet(collector)["devices"][0]["corrected_samples"] > 0,
        10,
        "the collector to show the corrected samples",
    )
    assert metric_value(agent_url, "backhaul_clock_jumps_total", 'direction="forward"') == 1
    # the jump in the log, and in /healthz for `backhaul-agent status` (offset, last jump, corrected)
    assert re.search(r"clock jumped \+86\d{3}\.\d{3} s: ", (rig.tmp / "agent.log").read_text())
    state = clock_state(agent_url)
    assert state["offset_s"] == 0 and abs(state["last_jump"]["seconds"] - DAY_S) <= 1, state
    assert state["corrected_samples"] == corrected
    record("day_behind_collector_reachable", {**worst, "reported_error": measured_ms, "corrected_samples": corrected})
    agent.stop()


@pytest.mark.parametrize(
    ("start", "floor"),
    [("-1d", datetime(2020, 1, 1, tzinfo=UTC)), ("1970", None)],
    ids=["a-day-behind", "1970-below-the-floor"],
)
def test_the_collector_out_of_reach_until_after_the_step_the_step_gives_the_offset(
    rig: Rig, start: str, floor: datetime | None
):
    """No reply while the clock is wrong: its samples are held (nothing could tell, or the floor
    says it is wrong); NTP steps it; the first reply finds the new clock right, and the old era's
    offset is the step itself, exact to the millisecond."""
    spec = f"-{int(time.time()) - DAY_S // 2}" if start == "1970" else start  # 1970-01-01 12:00
    rig.clock.set(spec)
    port = free_port()  # the collector will listen here, later
    agent, agent_url = rig.agent(port, clock=None if floor is None else {"floor": floor})
    sender = rig.sender(agent_url)
    rig.wait_scrapes(10)
    state = clock_state(agent_url)
    assert not state["trusted"] and state["below_floor"] == (floor is None), state
    assert metric_value(agent_url, "backhaul_clock_held_samples") > 0
    at = jump(rig, "+0")
    rig.wait_scrapes(5)
    collector = rig.collector(port)
    wait_until(lambda: clock_state(agent_url)["trusted"], 20, "the first reply to settle the era")
    rig.wait_scrapes(5)
    sender.stop()
    worst = errors_by_phase(rig, collector, by_jump(at))
    assert worst["stored_as_stamped_by_the_wrong_clock"] == 0
    assert abs(worst["before the jump"]) <= EXACT_ERROR_MS, worst
    assert abs(worst["after the jump"]) <= EXACT_ERROR_MS, worst
    assert metric_value(agent_url, "backhaul_clock_held_samples") == 0
    assert min(self_scrape_times(collector)) > datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1000
    record(f"collector_after_the_step_{start.strip('-')}", worst)
    agent.stop()


def test_a_1970_clock_whose_offset_is_never_learnt_is_expired_and_counted_never_stored(rig: Rig):
    """The clock stays at 1970 (below the floor) and no reply comes before the device reboots: that
    boot's eras can never be measured any more. Their samples are expired and counted (and the count
    reaches the collector); none is ever stored as 1970."""
    rig.clock.set(f"-{int(time.time()) - DAY_S // 2}")
    port = free_port()
    agent, agent_url = rig.agent(port)
    sender = rig.sender(agent_url)
    rig.wait_scrapes(10)
    sender.stop()
    held = metric_value(agent_url, "backhaul_clock_held_samples")
    assert held >= 10 * SENDER_SERIES
    agent.stop()
    # the machine reboots: a new boot id, and this time NTP sets the clock before the agent starts
    (rig.tmp / "boot_id").write_text("22222222-2222-2222-2222-222222222222\n")
    rig.clock.set("+0")
    collector = rig.collector(port)
    agent, agent_url = rig.agent(port, port=int(agent_url.rsplit(":", 1)[1]))
    wait_until(lambda: reported_losses(collector, "dev-1")["expired"] >= held, 20, "the expired count at the collector")
    assert metric_value(agent_url, "backhaul_clock_expired_samples_total") >= held
    stored = export(collector, '{__name__="faked_clock_value"}')
    assert stored == [], "a sample of the 1970 clock was stored"
    early = [ts for line in export(collector) for ts in line["timestamps"] if ts < 946_684_800_000]
    assert early == [], f"{len(early)} samples stored before 2000"
    record("1970_never_learnt", {"held": held, "expired_reported": reported_losses(collector, "dev-1")["expired"]})
    agent.stop()


def test_a_clock_a_day_ahead_stepped_back_keeps_scraping_and_is_corrected(rig: Rig):
    """A backward jump: the agent's scheduled jobs (timed by the wall clock) run on, and samples of
    both eras are at their true times."""
    rig.clock.set("+1d")
    collector = rig.collector()
    agent, agent_url = rig.agent(int(collector.rsplit(":", 1)[1]), clock={"floor": datetime(2020, 1, 1, tzinfo=UTC)})
    sender = rig.sender(agent_url)
    wait_until(lambda: clock_state(agent_url)["trusted"], 20, "the first reply to settle the era")
    measured_ms = clock_state(agent_url)["error_s"] * 1000
    rig.wait_scrapes(10)
    at = jump(rig, "+0")
    stepped_true = time.time() * 1000
    wait_until(lambda: clock_state(agent_url)["jumps"] >= 1, 10, "the jump to be seen")
    rig.wait_scrapes(10)
    # APScheduler times jobs by the wall clock: without a rewind, no scrape for a day
    wait_until(
        lambda: len([ts for ts in self_scrape_times(collector) if ts > stepped_true + 500]) >= 3,
        20,
        "the agent's own scrapes after the clock stepped back",
    )
    sender.stop()
    worst = errors_by_phase(rig, collector, by_jump(at))
    assert abs(worst["before the jump"]) <= DATE_ERROR_MS, worst
    assert abs(worst["before the jump"]) <= measured_ms + EXACT_ERROR_MS, (worst, measured_ms)
    assert abs(worst["after the jump"]) <= EXACT_ERROR_MS, worst
    assert metric_value(agent_url, "backhaul_clock_jumps_total", 'direction="backward"') == 1
    record("day_ahead_stepped_back", {**worst, "reported_error": measured_ms})
    agent.stop()
