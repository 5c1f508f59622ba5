"""systemd's notify protocol (READY, WATCHDOG, STOPPING) without a libsystemd dependency.

The notify socket is a datagram socket with a short queue (``net.unix.max_dgram_qlen``, 10 by
default): while its reader is busy, a blocking send would stall the whole event loop, and a stalled
loop never stops. So a watchdog ping never waits (a dropped ping is replaced by the next one), and a
state change waits at most :data:`STATE_WAIT` seconds.
"""

from __future__ import annotations

import os
import socket

# Longest a READY/STOPPING message may hold the event loop while the notify queue is full.
STATE_WAIT = 1.0


def notify(message: str, wait: float = STATE_WAIT) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``, waiting at most ``wait`` seconds for room in its queue;
    False when not running under systemd, or the message could not be sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(wait)  # 0: non-blocking
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:  # including BlockingIOError and TimeoutError: the queue stayed full
        return False
    return True


def ping_watchdog() -> bool:
    """WATCHDOG=1, without waiting: False when the notify queue is full."""
    return notify("WATCHDOG=1", wait=0)


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or None when no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
