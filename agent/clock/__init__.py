"""Clocks that lie: detecting an untrustworthy clock and correcting the samples it stamped.

- :mod:`agent.clock.settings`: ``[clock]`` (``max_skew``, ``correct``, ...).
- :mod:`agent.clock.clocks`: the wall clock, ``CLOCK_BOOTTIME``, the boot id and the floor.
- :mod:`agent.clock.eras`: eras (the clock between two jumps) and what is known of each: pure rules.
- :mod:`agent.clock.split`: which samples go as they are, corrected, held or dropped.
- :mod:`agent.clock.ingest`: samples into the buffer, sorted by era.
- :mod:`agent.clock.journal`: eras and jumps in the buffer database.
- :mod:`agent.clock.keeper`: the component that watches the clock and ends holds.
- :mod:`agent.clock.metrics`: ``backhaul_clock_*``.

The rules and their limits are in docs/clock.md.
"""
