"""The ``[export]`` settings: the guard rails of ``GET /api/v1/export`` (:mod:`collector.export`)."""

from __future__ import annotations

from pydantic import Field

from backhaul.settings import Section


class ExportSettings(Section):
    """Limits on one export; over one, the answer is 422 naming the limit, before anything is sent."""

    # Series one export may return (a plan holds a few bytes per series; the answer is streamed).
    max_series: int = Field(1_000_000, ge=1)
    # Samples one export may return (an upper bound from the chunk index: up to the series chosen
    # from each chunk times the most samples one series has in it): about 5-10 s of work.
    max_samples: int = Field(10_000_000, ge=1)
    # Stored series tables one export may match, counted from the index before any is parsed (a
    # device stores a table each time its set of series changes; matching and decoding cost about
    # 0.8 ms a table, measured on a fuzz run's store).
    max_tables: int = Field(50_000, ge=1)
    # Without both start and end, an export may return at most this many samples.
    unbounded_max_samples: int = Field(2_000_000, ge=1)
