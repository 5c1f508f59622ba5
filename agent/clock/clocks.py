"""The clocks an era is made of: the wall clock, ``CLOCK_BOOTTIME`` and the kernel's boot id.

``CLOCK_BOOTTIME`` rather than ``CLOCK_MONOTONIC``: both never step, but only BOOTTIME keeps counting
through a suspend, as the wall clock does, so their difference stays put across one. Within one boot
(one boot id) it is a time line that no setting of the clock can move, which is what lets the offset
learnt in one era correct another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import agent
import backhaul

log = logging.getLogger(__name__)


def boottime() -> float:
    """Seconds since boot, suspend included (CLOCK_MONOTONIC where there is no CLOCK_BOOTTIME)."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def read_boot_id(path: Path) -> str:
    """The kernel's boot id ("" when it cannot be read: reboots are then told by BOOTTIME going back)."""
    try:
        return path.read_text().strip()
    except OSError as exc:
        log.warning("clock: cannot read the boot id from %s (%s)", path, exc)
        return ""


def build_time() -> float:
    """The agent's build (or install) time: the newest modification time among its installed modules.

    A Debian package keeps the times it was built with; pip writes the files at install time; a
    checkout gives its last edit. Either way the software cannot have run before it.
    """
    newest = 0.0
    for folder in (Path(agent.__path__[0]), Path(backhaul.__path__[0])):
        for path in folder.rglob("*.py"):
            try:
                newest = max(newest, path.stat().st_mtime)
            except OSError:
                continue
    return newest


def floor_of(configured: datetime | None) -> float:
    """The floor in seconds: ``configured`` (naive means UTC), else :func:`build_time`."""
    if configured is None:
        return build_time()
    if configured.tzinfo is None:
        configured = configured.replace(tzinfo=UTC)
    return configured.timestamp()


@dataclass
class Clocks:
    """Where the keeper reads time (each replaceable in tests).

    Args:
        wall: the wall clock in seconds (CLOCK_REALTIME: what stamps samples, and what lies).
        boot: seconds since boot, never stepped (:func:`boottime`).
        boot_id: the kernel's boot id (:func:`read_boot_id`).
    """

    wall: Callable[[], float] = time.time
    boot: Callable[[], float] = boottime
    boot_id: Callable[[], str] = field(default=lambda: read_boot_id(Path("/proc/sys/kernel/random/boot_id")))
