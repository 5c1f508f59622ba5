"""Several links, for real: an agent in a network namespace of its own with two veth pairs ("wifi" and
"lte", and "sat", a link for alerts only) into a namespace that holds the collector. Uploads go over
wifi; wifi's interface is taken down on the agent's side and they move to lte (the kernel's byte
counters show it, not only the agent); each link's budget counts only what went over it, a restart
keeps both, and wifi takes over again once it is back. With wifi and lte both down, bulk uploads
wait while an alert reaches the collector over sat. The links bind to their source addresses, and
source-based routing rules (as on a real multi-homed device) send each address out through its own
interface.

Addresses exist only inside the two namespaces; both are deleted at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.netns import Netns, veth
from tests.support import BIN, READ, READ_HEADERS, TOKEN, Process, http, parse_metrics, toml_text, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLLECTOR = "10.231.0.1"  # the collector's address, on its namespace's loopback
# (interface in the agent's namespace, its address, the collector side's address, routing table)
WIFI = ("bhwifi0", "10.231.1.1", "10.231.1.2", "101")
LTE = ("bhlte0", "10.231.2.1", "10.231.2.2", "102")
SAT = ("bhsat0", "10.231.3.1", "10.231.3.2", "103")
AGENT_PORT, COLLECTOR_PORT = 9400, 9300


@dataclass
class Nets:
    agent: Netns
    collector: Netns


@pytest.fixture
def nets() -> Iterator[Nets]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: the network-namespace test must run there")
        pytest.skip("network namespaces need root")
    tag = secrets.token_hex(3)
    made: list[Netns] = []
    try:
        agent = Netns(f"bh-agent-{tag}")
        made.append(agent)
        collector = Netns(f"bh-coll-{tag}")
        made.append(collector)
        collector.ip("addr", "add", f"{COLLECTOR}/32", "dev", "lo")
        for i, (name, mine, theirs, table) in enumerate((WIFI, LTE, SAT)):
            peer = f"bhpeer{i}"
            veth(agent, name, collector, peer)
            agent.ip("addr", "add", f"{mine}/24", "dev", name)
            collector.ip("addr", "add", f"{theirs}/24", "dev", peer)
            # The rule that sends what is bound to this link's address through it. Only wifi has a
            # route in the main table: what lte and sat carry gets there only by binding to their
            # addresses, so the test fails if an upload or an alert ignores its link's source_address.
            agent.ip("route", "add", f"{COLLECTOR}/32", "via", theirs, "dev", name, "table", table)
            if i == 0:
                agent.ip("route", "add", f"{COLLECTOR}/32", "via", theirs, "dev", name)
            agent.ip("rule", "add", "from", mine, "table", table, "pref", str(1000 + i))
        yield Nets(agent, collector)
    finally:
        for ns in made:
            ns.delete()


def start(ns: Netns, program: str, tmp: Path, name: str, config: dict[str, object]) -> Process:
    path = tmp / f"{name}.toml"
    path.write_text(toml_text(config))
    argv = ns.argv([str(BIN / program), "run", "--config", str(path)])
    return Process(name, argv, tmp / f"{name}.log").start()


def wait_healthy(ns: Netns, proc: Process, url: str) -> None:
    def healthy() -> bool:
        assert proc.running, proc.log.read_text()[-3000:]
        try:
            return ns.call(http, "GET", f"{url}/healthz", None, None, 1)[0] == 200
        except OSError:
            return False

    wait_until(healthy, 30, "healthy")


def agent_config(tmp: Path) -> dict[str, object]:
    own = f"http://127.0.0.1:{AGENT_PORT}"
    return {
        "device_id": "dev-1",
        "shutdown_grace": 10,
        "listen": {"host": "127.0.0.1", "port": AGENT_PORT},
        "buffer": {"path": str(tmp / "agent.db"), "budget_bytes": "64MiB"},
        # The agent's own metrics, scraped twice a second: data that keeps coming.
        "scrape": {"interval": 0.5, "targets": [{"job": "agent", "url": f"{own}/metrics"}]},
        "uplink": {
            "url": f"http://{COLLECTOR}:{COLLECTOR_PORT}/api/v1/batches",
            "token": TOKEN,
            "batch_interval": 0.3,
            "backoff_min": 0.2,
            "backoff_max": 1,
            "timeout": 3,
            "links": [
                {"name": "wifi", "interface": WIFI[0], "source_address": WIFI[1], "daily_bytes": "200MB"},
                {"name": "lte", "interface": LTE[0], "source_address": LTE[1], "daily_bytes": "100MB"},
                {"name": "sat", "interface": SAT[0], "source_address": SAT[1], "alerts_only": True},
            ],
        },
        # Fires when lte's interface is down (the agent's own gauge, scraped).
        "alerts": {
            "rules": [{"name": "LteDown", "selector": 'backhaul_uplink_link_up{link="lte"}', "op": "<", "threshold": 1}]
        },
    }


class Agent:
    def __init__(self, ns: Netns, proc: Process) -> None:
        self.ns, self.proc = ns, proc
        self.url = f"http://127.0.0.1:{AGENT_PORT}"

    def metrics(self) -> dict[str, float]:
        status, body, _ = self.ns.call(http, "GET", f"{self.url}/metrics")
        assert status == 200
        return parse_metrics(body.decode())

    def spent(self, link: str) -> float:
        return self.metrics().get(f'backhaul_uplink_link_spent_bytes{{link="{link}",period="day"}}', 0.0)

    def active(self) -> str | None:
        page = self.metrics()
        found = [n for n in ("wifi", "lte") if page.get(f'backhaul_uplink_link_active{{link="{n}"}}') == 1.0]
        return found[0] if found else None


def fleet_link(nets: Nets) -> str | None:
    url = f"http://{COLLECTOR}:{COLLECTOR_PORT}/api/v1/fleet"
    status, body, _ = nets.collector.call(http, "GET", url, None, READ_HEADERS)
    assert status == 200, body[:300]
    devices = {d["device"]: d for d in json.loads(body)["devices"]}
    link = devices.get("dev-1", {}).get("link")
    return str(link) if link else None


def alert_firing(nets: Nets, rule: str) -> bool:
    url = f"http://{COLLECTOR}:{COLLECTOR_PORT}/api/v1/alerts?state=firing&device=dev-1"
    status, body, _ = nets.collector.call(http, "GET", url, None, READ_HEADERS)
    assert status == 200, body[:300]
    return any(a["rule"] == rule for a in json.loads(body)["alerts"])


@pytest.mark.timeout(240)
def test_uploads_move_to_the_next_link_when_one_goes_down_and_each_link_counts_its_own_bytes(
    nets: Nets, tmp_path: Path
) -> None:
    collector = start(
        nets.collector,
        "backhaul-collector",
        tmp_path,
        "collector",
        {
            "listen": {"host": "0.0.0.0", "port": COLLECTOR_PORT},
            "store": {"path": str(tmp_path / "collector.db")},
            "devices": [{"id": "dev-1", "token": TOKEN}],
            "read": READ,
        },
    )
    wait_healthy(nets.collector, collector, f"http://127.0.0.1:{COLLECTOR_PORT}")
    config = agent_config(tmp_path)
    proc = start(nets.agent, "backhaul-agent", tmp_path, "agent", config)
    agent = Agent(nets.agent, proc)
    try:
        wait_healthy(nets.agent, proc, agent.url)

        # 1. Over wifi: its budget counts, lte's does not, and the collector names the link.
        wait_until(lambda: agent.spent("wifi") > 20_000, 60, "uploads over wifi")
        assert agent.active() == "wifi" and agent.spent("lte") == 0
        wait_until(lambda: fleet_link(nets) == "wifi", 30, "the fleet page shows wifi")

        # 2. wifi's interface goes down on the agent's side: uploads move to lte.
        nets.agent.ip("link", "set", WIFI[0], "down")
        wait_until(lambda: agent.active() == "lte", 30, "the switch to lte")
        wifi_spent = agent.spent("wifi")
        lte_before, lte_tx = agent.spent("lte"), nets.agent.tx_bytes(LTE[0])
        wait_until(lambda: agent.spent("lte") > lte_before + 20_000, 60, "uploads over lte")
        page = agent.metrics()
        assert page.get('backhaul_uplink_link_switches_total{from="wifi",to="lte"}') == 1.0
        assert page.get('backhaul_uplink_link_up{link="wifi"}') == 0.0
        assert page.get('backhaul_uplink_link_up{link="lte"}') == 1.0
        assert agent.spent("wifi") == wifi_spent  # nothing more counted on the link that is down
        # The bytes really left through lte: its kernel counter grew by at least what the agent counted
        # of its outgoing share (the agent counts both directions, so compare against a fraction).
        assert nets.agent.tx_bytes(LTE[0]) - lte_tx > (agent.spent("lte") - lte_before) / 4
        wait_until(lambda: fleet_link(nets) == "lte", 30, "the fleet page shows lte")
        assert "link switch wifi → lte (wifi: down)" in proc.log.read_text()

        # 3. A restart keeps what each link spent (saved in the buffer under the link's name).
        proc.stop()
        spent_before = {"wifi": wifi_spent, "lte": 0.0}
        proc.start()
        wait_healthy(nets.agent, proc, agent.url)
        spent_before["lte"] = agent.spent("lte")
        assert agent.spent("wifi") == wifi_spent and spent_before["lte"] > lte_before + 20_000
        wait_until(lambda: agent.active() == "lte", 30, "lte chosen after the restart")
        assert not any(k.startswith("backhaul_uplink_link_switches_total{") for k in agent.metrics())

        # 4. wifi comes back (its address with it): wifi takes over again.
        nets.agent.ip("link", "set", WIFI[0], "up")
        for table in ("main", WIFI[3]):  # the kernel dropped wifi's routes with its interface
            nets.agent.ip("route", "replace", f"{COLLECTOR}/32", "via", WIFI[2], "dev", WIFI[0], "table", table)
        wait_until(lambda: agent.active() == "wifi", 30, "the switch back to wifi")
        wait_until(lambda: agent.spent("wifi") > wifi_spent + 10_000, 60, "uploads over wifi again")
        switches = agent.metrics().get('backhaul_uplink_link_switches_total{from="lte",to="wifi"}')
        assert switches == 1.0

        # 5. wifi and lte both down: bulk uploads wait (never over sat); the alert goes over sat.
        sat_tx = nets.agent.tx_bytes(SAT[0])
        nets.agent.ip("link", "set", WIFI[0], "down")
        nets.agent.ip("link", "set", LTE[0], "down")
        wait_until(lambda: alert_firing(nets, "LteDown"), 30, "the alert at the collector")
        page = agent.metrics()
        assert page.get('backhaul_uplink_blocked{reason="down"}') == 1.0
        assert page.get('backhaul_uplink_link_spent_bytes{link="sat",period="day"}') == 0.0
        assert page.get('backhaul_uplink_link_active{link="sat"}') == 0.0
        sent = nets.agent.tx_bytes(SAT[0]) - sat_tx
        # An alert and its HTTP exchange are a few hundred bytes; one batch would be tens of KB.
        assert 200 < sent < 20_000, sent
        time.sleep(2)
        assert nets.agent.tx_bytes(SAT[0]) - sat_tx < 20_000  # still no bulk upload over sat
        assert proc.running
    finally:
        if proc.running:
            proc.stop()
        collector.stop()
