"""Network namespaces a test creates (root only): veth pairs as "links", programs run inside, and
plain HTTP from the test into a namespace.

A request into a namespace runs on a thread that first joined it (``setns(2)`` changes the calling
thread's namespace only), so the test process itself stays where it is; the blocking helpers of
:mod:`harness.net` then work there unchanged.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> str:
    """Run ``ip ARGS``; its output, or AssertionError with ip's message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class Netns:
    """A named network namespace, deleted (with the interfaces in it) by :meth:`delete`."""

    def __init__(self, name: str) -> None:
        self.name = name
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        self._pool: ThreadPoolExecutor | None = None

    def ip(self, *args: str) -> str:
        return _ip("-n", self.name, *args)

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` also mounts its /sys/class/net)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def _join(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name}")
        finally:
            os.close(fd)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on a thread inside the namespace (sockets it opens live there)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, initializer=self._join)
        return self._pool.submit(fn, *args).result()

    def tx_bytes(self, interface: str) -> int:
        """Bytes the interface sent, from the kernel's counters."""
        [found] = json.loads(self.ip("-s", "-j", "link", "show", interface))
        return int(found["stats64"]["tx"]["bytes"])

    def delete(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30, check=False)


def veth(a: Netns, a_name: str, b: Netns, b_name: str) -> None:
    """A veth pair with one end in each namespace, both up."""
    _ip("link", "add", a_name, "netns", a.name, "type", "veth", "peer", "name", b_name, "netns", b.name)
    a.ip("link", "set", a_name, "up")
    b.ip("link", "set", b_name, "up")
