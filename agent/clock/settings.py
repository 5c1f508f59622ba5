"""The ``[clock]`` settings: when the agent's clock is not trusted, and what happens to its samples."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from pydantic import Field

from backhaul.settings import Section


class ClockSettings(Section):
    """Detecting a wrong clock and correcting what it stamped (docs/clock.md)."""

    # The clock is wrong when the collector's Date differs from it by more than this.
    max_skew: timedelta = Field(timedelta(seconds=30), gt=timedelta(0))
    # Hold samples stamped by a wrong clock and correct their timestamps once the offset of their era
    # is known, instead of storing them as stamped (or dropping them as too old or too new).
    correct: bool = True
    # A step of the wall clock against CLOCK_BOOTTIME larger than this is a jump: a new era.
    jump_threshold: timedelta = Field(timedelta(seconds=1), gt=timedelta(0))
    # A clock earlier than this is wrong, whatever else says. Default: the agent's build time (the
    # newest modification time among its installed modules).
    floor: datetime | None = None
    # Where the kernel's boot id is read (another id: the machine rebooted).
    boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id")
