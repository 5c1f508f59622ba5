"""One daemon thread that runs submitted calls in order: what a database's connection lives on
(:class:`backhaul.sqlite.Database`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class CallThread:
    """One daemon thread running submitted calls in order (a daemon, so that a call hung in the kernel
    cannot keep the process from exiting once the shutdown grace is over)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)

    def submit(self, call: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((call, future))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread


async def finish(thread: CallThread, last: Callable[[], None], grace: float | None, what: str) -> None:
    """Run ``last`` on ``thread`` and stop it, within ``grace`` seconds; past it the thread is abandoned."""
    try:
        await asyncio.wait_for(asyncio.wrap_future(thread.submit(last)), grace)
    except TimeoutError:
        log.error("%s did not close within %s s; abandoning it", what, grace)
    finally:
        thread.stop()
