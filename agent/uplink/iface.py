"""Whether a network interface can carry traffic: its operstate is "up" and it has an address.

Read from the kernel at each question (``/sys/class/net/IF/operstate`` and ``getifaddrs`` through
psutil), never by running a program: the uploader asks before every batch, the alert lane before
every message. Both reads are a few microseconds.
"""

from __future__ import annotations

import socket
from pathlib import Path

SYS_NET = Path("/sys/class/net")
ADDRESS_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def state(interface: str, sys_net: Path = SYS_NET) -> str | None:
    """None when ``interface`` is up and has an address, else why not ("no such interface", "down",
    "no address")."""
    try:
        operstate = (sys_net / interface / "operstate").read_text().strip()
    except OSError:
        return "no such interface"
    # "unknown" is what drivers without carrier reporting say (tun devices, some modems): usable.
    if operstate not in ("up", "unknown"):
        return operstate or "down"
    import psutil  # here: only an agent whose links name an interface needs it

    addresses = psutil.net_if_addrs().get(interface, [])
    if not any(a.family in ADDRESS_FAMILIES for a in addresses):
        return "no address"
    return None
