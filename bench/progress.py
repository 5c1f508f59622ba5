"""One status line on stderr every few seconds while a long benchmark phase runs."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable


class Progress:
    """One status line on stderr every ``every`` seconds, fed by whatever phase is running.

    Args:
        every: seconds between two lines (a new phase prints one at once).
    """

    def __init__(self, every: float = 2.0) -> None:
        self.started = time.monotonic()
        self.phase = "starting"
        self.detail: Callable[[], str] = lambda: ""
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def set(self, phase: str, detail: Callable[[], str] = lambda: "") -> None:
        self.phase, self.detail = phase, detail
        self.line()

    def line(self) -> None:
        try:
            detail = self.detail()
        except Exception as exc:  # a progress line must never take the benchmark down
            detail = f"({exc})"
        print(f"[{time.monotonic() - self.started:6.1f} s] {self.phase} {detail}".rstrip(), file=sys.stderr, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.line()
