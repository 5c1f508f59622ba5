"""The ``[export]`` settings: the guard rails of ``GET /api/v1/export`` (:mod:`collector.export`)."""

from __future__ import annotations

from pydantic import Field

from backhaul.settings import Section


class ExportSettings(Section):
    """Limits on one export; over one, the answer is 422 naming the limit, before anything is sent."""

    # Series one export may return.
    max_series: int = Field(10_000, ge=1)
    # Samples one export may return (an upper bound from the chunk index: up to the series chosen
    # from each chunk times the most samples one series has in it).
    max_samples: int = Field(5_000_000, ge=1)
    # Without both start and end, an export may return at most this many samples.
    unbounded_max_samples: int = Field(1_000_000, ge=1)
