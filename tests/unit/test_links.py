"""Several links (``[[uplink.links]]``): the settings, the interface check, choose() over a list, the
active link and its switches, the policy over several links, and a reload that keeps what was spent."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.uplink import iface
from agent.uplink.link import MIN_BATCH, Link, choose, for_alerts
from agent.uplink.links import Links
from agent.uplink.policy import Backlog, DrainPolicy
from agent.uplink.settings import IMPLICIT_LINK, NamedLink, UplinkSettings
from backhaul.wire import batch as batchfmt
from backhaul.wire.errors import WireError

NOW = 1_796_212_800.0  # 2026-12-02T12:00:00Z


class Interfaces:
    """Which interfaces are down, as the links' interface check sees them."""

    def __init__(self) -> None:
        self.down: dict[str, str] = {}

    def __call__(self, name: str) -> str | None:
        return self.down.get(name)


def uplink(*links: dict[str, Any], **fields: Any) -> UplinkSettings:
    return UplinkSettings.model_validate({"links": list(links), **fields})


def make(interfaces: Interfaces) -> Callable[[Any, str, Any], Link]:
    def build(settings: Any, name: str, clock: Any) -> Link:
        return Link(settings, name, clock, interface_state=interfaces)

    return build


WIFI = {"name": "wifi", "interface": "wlan0", "source_address": "10.0.0.2", "daily_bytes": 100_000}
LTE = {"name": "lte", "interface": "wwan0", "daily_bytes": 50_000, "windows": ["* * * * *"]}
SAT = {"name": "sat", "interface": "sat0", "alerts_only": True}


def test_without_links_the_uplink_section_is_the_one_implicit_link() -> None:
    u = UplinkSettings.model_validate({"daily_bytes": 5000})
    [(name, settings)] = u.named_links()
    assert name == IMPLICIT_LINK == "uplink" and settings is u
    link = Link(settings, name)
    assert link.interface == "" and link.source_address is None and not link.alerts_only
    assert link.down() is None and link.report(None)["link"] == "uplink"


def test_links_are_named_entries_that_inherit_the_calendar_and_drain_order() -> None:
    u = uplink(
        WIFI, {**LTE, "drain_order": "oldest_first"}, SAT, budget_timezone="Europe/Berlin", when_short="summarise"
    )
    wifi, lte, sat = (s for _, s in u.named_links())
    assert [n for n, _ in u.named_links()] == ["wifi", "lte", "sat"]
    assert isinstance(wifi, NamedLink) and str(wifi.source_address) == "10.0.0.2"
    assert wifi.budget_timezone == lte.budget_timezone == "Europe/Berlin"
    assert wifi.when_short == "summarise" and wifi.drain_order == "fresh_first" and lte.drain_order == "oldest_first"
    assert isinstance(sat, NamedLink) and sat.alerts_only
    assert int(wifi.daily_bytes) == 100_000 and int(lte.daily_bytes) == 50_000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"links": [WIFI, WIFI]}, "the name 'wifi' is used twice"),
        ({"links": [SAT]}, "every link is alerts_only"),
        ({"links": [WIFI], "daily_bytes": 5}, "uplink.daily_bytes: with [[uplink.links]], set it on each link"),
        ({"links": [{**WIFI, "name": "wi fi"}]}, "links.0.name"),
        ({"links": [{**WIFI, "source_address": "not-an-address"}]}, "links.0.source_address"),
        ({"links": [{**WIFI, "windows": ["every night"]}]}, "links.0.windows"),
        ({"links": [{**WIFI, "bogus": 1}]}, "links.0.bogus"),
    ],
)
def test_bad_links_are_refused_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        UplinkSettings.model_validate(data)
    text = str(caught.value).replace("\n", " ")
    assert message in text or message.replace(".", " -> ") in text or message.split(".")[-1] in text, text


def test_an_interface_is_usable_while_up_with_an_address(tmp_path: Path) -> None:
    (tmp_path / "lo").mkdir()
    (tmp_path / "lo" / "operstate").write_text("unknown\n")  # what the loopback says
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "operstate").write_text("down\n")
    assert iface.state("lo", tmp_path) is None  # up-ish, and it has 127.0.0.1
    assert iface.state("gone", tmp_path) == "down"
    assert iface.state("nothing-here", tmp_path) == "no such interface"
    (tmp_path / "noaddr").mkdir()
    (tmp_path / "noaddr" / "operstate").write_text("up\n")
    assert iface.state("noaddr", tmp_path) == "no address"  # psutil knows no such interface
    assert socket.AF_INET in iface.ADDRESS_FAMILIES


def test_choose_takes_the_first_link_that_is_up_in_its_window_and_within_budget() -> None:
    ifs = Interfaces()
    links = Links(uplink(SAT, WIFI, LTE), lambda: NOW, make(ifs))
    sat, wifi, lte = links.all
    assert choose(links.all, 1000) == (wifi, None)  # an alerts_only link never carries bulk traffic
    ifs.down["wlan0"] = "down"
    assert choose(links.all, 1000) == (lte, None)
    assert choose(links.all, 60_000) == (None, "down")  # lte's budget cannot carry it; the first bulk link is down
    ifs.down["wwan0"] = "down"
    assert choose(links.all, 10) == (None, "down")
    assert for_alerts(links.all) is sat  # alerts: the first link up, alerts_only included
    ifs.down["sat0"] = "no address"
    assert for_alerts(links.all) is None and links.alert_route() is None
    ifs.down.clear()
    wifi.count(100_000 - 500)  # wifi's day is spent
    assert choose(links.all, 1000) == (lte, None)
    lte.windows = type(lte.windows)(["0 0 1 1 *"])  # lte's window closed
    assert choose(links.all, 1000) == (None, "budget")
    assert links.alert_route() == ("sat", None)


def test_the_active_link_switches_with_a_log_line_and_a_callback(caplog: pytest.LogCaptureFixture) -> None:
    ifs = Interfaces()
    links = Links(uplink(WIFI, LTE), lambda: NOW, make(ifs))
    wifi, lte = links.all
    seen: list[tuple[str, str, str]] = []
    links.on_switch = lambda was, to, why: seen.append((was.name, to.name, why))
    assert links.active is wifi
    caplog.set_level(logging.INFO, "agent.uplink.links")
    assert links.select(100) == (wifi, None)
    ifs.down["wlan0"] = "down"
    assert links.select(100) == (lte, None) and links.active is lte
    ifs.down.clear()
    assert links.select(100) == (wifi, None)
    assert seen == [("wifi", "lte", "wifi: down"), ("lte", "wifi", "wifi is usable again")]
    assert "link switch wifi → lte (wifi: down)" in caplog.text
    # after a start, the first choice is not a switch (nothing moved), though it is logged
    seen.clear()
    ifs.down["wlan0"] = "no address"
    fresh = Links(uplink(WIFI, LTE), lambda: NOW, make(ifs))
    fresh.on_switch = lambda was, to, why: seen.append((was.name, to.name, why))
    assert fresh.select(100)[0] is fresh.all[1] and seen == []
    assert "using link lte (wifi: down: no address)" in caplog.text
    # the proxy's gate: the bytes go to the active link's budget
    links.count(700)
    assert wifi.budget.spent("day", NOW) == 700 and lte.budget.spent("day", NOW) == 0


def test_the_policy_waits_for_the_link_that_lifts_first_and_restarts_fresh_after_a_switch() -> None:
    ifs = Interfaces()
    links = Links(uplink(WIFI, LTE), lambda: NOW, make(ifs))
    policy = DrainPolicy(uplink(WIFI, LTE), links)
    backlog = Backlog(None, 10 * MIN_BATCH, 10_000)
    first = policy.next(NOW, backlog)
    assert first.kind == "send" and policy.link.name == "wifi"
    policy.sent(10_000, 20_000, False, (0, int(NOW * 1000)))
    assert not policy.gap
    ifs.down["wlan0"] = "down"
    step = policy.next(NOW, backlog)
    assert step.kind == "send" and policy.link.name == "lte" and step.since_ms is not None  # fresh data first
    assert step.strict and step.max_bytes <= 50_000  # shaped by lte's budget, not wifi's
    ifs.down["wwan0"] = "down"
    wait = policy.next(NOW, backlog)
    assert (wait.kind, wait.reason) == ("wait", "down") and 0 < wait.seconds <= 1.0


async def test_a_reload_keeps_what_a_link_spent_and_adds_and_drops_links() -> None:
    ifs = Interfaces()
    links = Links(uplink(WIFI, LTE), lambda: NOW, make(ifs))
    wifi, lte = links.all
    wifi.count(30_000)
    added: list[str] = []
    links.on_added = lambda link: added.append(link.name)
    ifs.down["wlan0"] = "down"
    links.select(10)
    assert links.active is lte
    new = uplink({**WIFI, "daily_bytes": 40_000, "max_bytes_per_second": 5000}, {"name": "eth", "interface": "eth0"})
    await links.reconfigure(new)
    assert [link.name for link in links] == ["wifi", "eth"] and added == ["eth"]
    assert links.all[0] is wifi and wifi.budget.limits["day"] == 40_000 and wifi.cap is not None
    assert wifi.budget.spent("day", NOW) == 30_000  # spent stays spent
    assert links.active is not lte  # lte was dropped: the first bulk link takes over
    assert wifi.affordable() is not None and wifi.affordable() < 10_000  # type: ignore[operator]


async def test_the_budget_alerts_read_a_budget_that_a_reload_adds() -> None:
    held = [False]
    links = Links(uplink({"name": "eth", "interface": "eth0"}), lambda: NOW, make(Interfaces()))
    reading = links.budget_reading(lambda: held[0])
    assert reading() == (0.0, False)  # no budget: the alerts are inactive, yet set up
    await links.reconfigure(uplink({"name": "eth", "interface": "eth0", "daily_bytes": 10_000}))
    links.count(9_000)
    held[0] = True
    assert reading() == (0.9, True)
    await links.reconfigure(uplink({"name": "eth", "interface": "eth0"}))
    assert reading() == (0.0, False)  # removed: they resolve


def test_the_batch_header_carries_the_link_name_and_refuses_a_bad_one() -> None:
    header = batchfmt.BatchHeader("dev-1", "b" * 32, 1, 0, uplink={"link": "lte", "blocked": "down", "spent_day": 5})
    encoded = batchfmt.encode(header, [])
    assert batchfmt.decode(encoded)[0].uplink["link"] == "lte"
    for bad in ("", "a b", "x" * 33, 5):
        with pytest.raises(WireError, match=r"uplink\.link"):
            batchfmt.decode(batchfmt.encode(batchfmt.BatchHeader("d", "b" * 32, 1, 0, uplink={"link": bad}), []))
