"""The fuzz suite's bounded slice, run with the other tests (issue 12): Hypothesis drives the
structure-aware generators of bench/fuzz_cases.py (``st.randoms()``, so a failing case shrinks)
against one set of real processes -- Mosquitto, a collector, an agent uploading to it -- and each
answer must be below 500 and within 2 s, each valid case acknowledged. The module's last test then
checks what the whole slice left behind: no traceback in either log, the baseline stored before the
fuzzing exported unchanged, every acknowledged valid case exported unchanged, no series under
another device than the one whose token sent it.

``FUZZ_EXAMPLES`` sets the examples per endpoint (default 1000: about two minutes in all);
``python -m bench.fuzz`` is the long run (a million cases).
"""

from __future__ import annotations

import os
import random
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from bench.fuzz import SLOW_S, Tally, Targets, baseline, check_baseline, check_devices, check_ledger
from bench.fuzz_cases import Case, Fuzzer
from tests.support import http, metric_value, require_program, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same cases on every run: CI is reproducible, `bench.fuzz --seed` explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
# Tracebacks that are other branches' findings, not this suite's: aiohttp logs a body whose
# Content-Encoding it cannot decode (issue 12, finding 12: the "exposure" branch); the export API's
# start/end (findings 2 and 7 for the export: the "chunks" branch). Remove each once it lands.
KNOWN_ELSEWHERE = ("(in aiohttp only)", "_http_parser", "(in collector/export.py")


class Run:
    """The processes, the generators' shared state and what the answers were."""

    def __init__(self, targets: Targets, mqtt: paho.Client) -> None:
        self.targets = targets
        self.mqtt = mqtt
        self.fuzzer = Fuzzer(random.Random(0))
        self.tally = Tally()
        self.expected: dict[str, Any] = {}

    def send(self, case: Case) -> str:
        started = time.perf_counter()
        if case.target == "mqtt":
            try:
                self.mqtt.publish(case.path, case.body, qos=1).wait_for_publish(10)
                status = "puback"
            except ValueError:  # a topic no client may publish to
                status = "refused"
        else:
            url = self.targets.url(case) + ("?" + urllib.parse.urlencode(case.query) if case.query else "")
            status = str(http(case.method, url, case.body or None, case.headers, timeout=30)[0])
        seconds = time.perf_counter() - started
        self.tally.note(case, status, seconds)
        assert not status.startswith("5"), f"{case.endpoint} answered {status}: {case}"
        assert seconds <= SLOW_S, f"{case.endpoint} took {seconds:.1f} s: {case}"
        if case.valid and case.target != "mqtt":
            assert status.startswith("2"), f"a valid {case.endpoint} case answered {status}: {case}"
        return status


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    require_program("mosquitto")
    folder: Path = tmp_path_factory.mktemp("fuzz")
    with Targets(folder) as targets:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fuzz-slice")
        client.connect("127.0.0.1", targets.broker)
        client.loop_start()
        try:
            state = Run(targets, client)
            state.expected = baseline(targets)
            yield state
        finally:
            client.loop_stop()
            client.disconnect()


def case_of(run: Run, rnd: random.Random, make: str) -> Case:
    run.fuzzer.rnd = rnd
    if make in ("agent", "collector"):
        return run.fuzzer.remote_write(make)
    case: Case = getattr(run.fuzzer, make)()
    return case


# Each endpoint in turn: the batch upload, remote write at both ends, alerts over HTTP and MQTT.
@pytest.mark.parametrize("make", ["batch", "agent", "collector", "alert_http", "alert_mqtt"])
@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_endpoint(run: Run, make: str, rnd: random.Random) -> None:
    run.send(case_of(run, rnd, make))


@pytest.mark.xfail(
    reason="the export API is rebuilt by the 'chunks' branch (issue 15 with issue 12's findings 2 and 7 for it:"
    " start=1e400 answers 500 on main); remove this mark once it lands",
    strict=False,
)
@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_export_parameters_and_selectors(run: Run, rnd: random.Random) -> None:
    run.send(case_of(run, rnd, "export"))


def test_what_the_slice_left_behind(run: Run) -> None:
    """Last in the module: after every case above."""
    targets = run.targets
    assert sum(run.tally.cases.values()) >= 5 * EXAMPLES
    # the MQTT subscriber is still there: a genuine message after all the hostile ones arrives
    genuine = run.fuzzer
    genuine.rnd = random.Random(5)
    while True:
        case = genuine.alert_mqtt()
        if case.valid:
            break
    run.send(case)
    wait_until(
        lambda: (
            metric_value(targets.collector_url, "backhaul_collector_alerts_total", 'outcome="stored",via="mqtt"') > 0
        ),
        10,
        "a genuine MQTT alert stored after the fuzzing",
    )
    wait_until(lambda: metric_value(targets.agent_url, "backhaul_buffer_samples") == 0, 60, "the agent to drain")
    assert check_baseline(targets, run.expected) == []
    _, problems = check_ledger(targets, run.tally.ledger, 200, random.Random(1))
    assert problems == [], problems
    _, problems = check_devices(targets)
    assert problems == [], problems
    traces = {
        name: {last: n for last, n in found.items() if not any(k in last for k in KNOWN_ELSEWHERE)}
        for name, found in targets.tracebacks().items()
    }
    assert traces == {"backhaul-collector": {}, "backhaul-agent": {}}
