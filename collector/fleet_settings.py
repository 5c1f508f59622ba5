"""The ``[fleet]`` settings of the fleet page (:mod:`collector.fleet`)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from backhaul.settings import Section


class FleetSettings(Section):
    """The fleet page (GET /fleet) and its JSON API (GET /api/v1/fleet)."""

    # A device whose last batch is older than this is shown offline.
    offline_after: timedelta = Field(timedelta(minutes=5), gt=timedelta(0))
    # A device whose oldest unsent sample is older than this is "behind" (filter, status).
    behind_after: timedelta = Field(timedelta(minutes=15), gt=timedelta(0))
    # A device whose clock differs from the collector's by more than this is "skewed" (the batch's
    # send time against its arrival, so the transit time counts too).
    max_clock_skew: timedelta = Field(timedelta(seconds=30), gt=timedelta(0))
