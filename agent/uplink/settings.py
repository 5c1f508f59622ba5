"""The ``[uplink]`` settings: where batches go and how (see examples/agent.toml and docs/uplink.md).

:class:`LinkSettings` is one link's policy — its cap, budgets, windows and what to send when — and
``[uplink]`` is where batches lead plus, when ``[[uplink.links]]`` is absent, the one implicit link
(named ``uplink``). With ``[[uplink.links]]`` each entry is a :class:`NamedLink`: a
:class:`LinkSettings` with a name, the interface it leaves through, the address uploads bind to and
whether it is for alerts only (docs/uplink.md, "Several links").
"""

from __future__ import annotations

from datetime import timedelta
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from pydantic import ByteSize, Field, HttpUrl, SecretStr, field_validator, model_validator

from agent.uplink.windows import parse
from backhaul.periods import zone
from backhaul.settings import Secret, Section
from backhaul.tls import ClientTlsSettings


class LinkSettings(Section):
    """What one link costs and allows: cap, budgets, windows, drain order, summaries."""

    # Bytes per second that bulk uploads may put on the wire (bodies and headers); 0 = no cap.
    # Alerts are never slowed by it.
    max_bytes_per_second: ByteSize = Field(ByteSize(0), ge=0)
    # Bytes per day / per monthly period that bulk uploads may spend (requests and answers, headers
    # included, failed attempts too); 0 = no budget.
    daily_bytes: ByteSize = Field(ByteSize(0), ge=0)
    monthly_bytes: ByteSize = Field(ByteSize(0), ge=0)
    # The time zone the days, months and windows are counted in, and the day the monthly period restarts.
    budget_timezone: str = "UTC"
    budget_reset_day: int = Field(1, ge=1, le=31)
    # Cron expressions (APScheduler CronTrigger syntax, in budget_timezone): bulk uploads only during
    # a minute one of them matches, e.g. ["* 1-4 * * *"] for 01:00-04:59. Empty: always.
    windows: list[str] = []
    # fresh_first: after any gap the newest `fresh_window` goes first, then live data ahead of the
    # backlog, which fills in newest to oldest. oldest_first: strictly in the order it was buffered.
    drain_order: Literal["fresh_first", "oldest_first"] = "fresh_first"
    fresh_window: timedelta = Field(timedelta(minutes=5), gt=timedelta(0))
    # hold: when the budget cannot carry all the data before it renews, send what it can (newest
    # first) and hold the rest. summarise: send each series' real sample at the end of every
    # summary_interval first; the full data follows with what the budget leaves.
    when_short: Literal["hold", "summarise"] = "hold"
    summary_interval: timedelta = Field(timedelta(seconds=60), ge=timedelta(seconds=1))

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("windows")
    @classmethod
    def _cron(cls, value: list[str]) -> list[str]:
        for expression in value:
            parse(expression)
        return value


# A link's name: its budgets are saved under it, and it is a label value and a batch header field.
LINK_NAME = r"^[A-Za-z0-9_.-]{1,32}$"
# The name of the one link ``[uplink]`` describes when ``[[uplink.links]]`` is absent.
IMPLICIT_LINK = "uplink"
# With [[uplink.links]], these are set per link only: on [uplink] they would be ambiguous.
PER_LINK = ("max_bytes_per_second", "daily_bytes", "monthly_bytes", "windows")
# ... and these, when a link does not set them, are taken from [uplink] (one calendar, one drain order).
INHERITED = ("budget_timezone", "budget_reset_day", "drain_order", "fresh_window", "when_short", "summary_interval")


class NamedLink(LinkSettings):
    """One of ``[[uplink.links]]``: a link's policy (:class:`LinkSettings`) and how to reach it."""

    name: str = Field(pattern=LINK_NAME)
    # The network interface the link is (e.g. wlan0, wwan0): usable while its operstate is "up" and it
    # has an address. "" : always usable (no interface to watch).
    interface: str = Field("", pattern=r"^[A-Za-z0-9_.:@-]{0,15}$")
    # Uploads (and alerts) over this link bind to this local address, so they leave through it (with
    # the usual source-based routing rule for that address; docs/uplink.md).
    source_address: IPv4Address | IPv6Address | None = None
    # A link for the alert lane only (e.g. a satellite modem): bulk uploads never use it.
    alerts_only: bool = False


class UplinkSettings(LinkSettings, ClientTlsSettings):
    """Where and how batches go: over the one link described by :class:`LinkSettings`, or over the
    first usable of ``links``."""

    url: HttpUrl | None = None
    token: Secret = SecretStr("")
    # "backhaul": batches to a backhaul collector (url .../api/v1/batches). "remote_write": plain
    # Prometheus remote write 1.0 straight to a TSDB (url e.g. http://vm:8428/api/v1/write).
    protocol: Literal["backhaul", "remote_write"] = "backhaul"
    # remote_write only: samples per request, and the label naming this device on every series
    # (what the collector adds; "" for none).
    max_samples_per_request: int = Field(2000, ge=1, le=1_000_000)
    device_label: str = Field("device_id", pattern=r"^([a-zA-Z_][a-zA-Z0-9_]*)?$")
    # remote_write only: the TSDB takes native histograms (Prometheus with
    # --enable-feature=native-histograms, Mimir); otherwise they are left out (and logged per batch).
    native_histograms: bool = False
    # Gather data for this long before sending a batch (a backlog is sent back to back).
    batch_interval: timedelta = timedelta(seconds=10)
    batch_max_bytes: ByteSize = Field(ByteSize(4 * 1024**2), ge=64 * 1024)
    timeout: timedelta = timedelta(seconds=30)
    backoff_min: timedelta = timedelta(seconds=1)
    backoff_max: timedelta = timedelta(minutes=5)
    # TLS for https URLs (the uplink, the alert lane's http channel, remote_write): ca_file, client_cert,
    # client_key, server_name from backhaul.tls.ClientTlsSettings; reloaded on SIGHUP and on change.
    # Several links, in order of preference: uploads go over the first that is up, in its window and
    # within its budget. Empty: the fields above are the one implicit link, named "uplink".
    links: list[NamedLink] = []

    @model_validator(mode="after")
    def _links(self) -> UplinkSettings:
        if not self.links:
            return self
        names = [link.name for link in self.links]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"uplink.links: the name {name!r} is used twice")
        if all(link.alerts_only for link in self.links):
            raise ValueError("uplink.links: every link is alerts_only, so bulk uploads could never go")
        for key in PER_LINK:
            if key in self.model_fields_set:
                raise ValueError(f"uplink.{key}: with [[uplink.links]], set it on each link instead")
        for link in self.links:
            for key in INHERITED:
                if key not in link.model_fields_set:
                    setattr(link, key, getattr(self, key))
        return self

    def named_links(self) -> list[tuple[str, LinkSettings]]:
        """The links in order, each with its name: ``links``, or the implicit one."""
        if not self.links:
            return [(IMPLICIT_LINK, self)]
        return [(link.name, link) for link in self.links]
