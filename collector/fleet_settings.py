"""The ``[fleet]`` settings of the fleet page (:mod:`collector.fleet`)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from backhaul.settings import Section


class FleetSettings(Section):
    """The fleet page (GET /fleet) and its JSON API (GET /api/v1/fleet)."""

    # A device whose last batch is older than this is shown offline.
    offline_after: timedelta = Field(timedelta(minutes=5), gt=timedelta(0))
