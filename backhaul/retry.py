"""When to try again, shared by every sender: what an answer means, and how long to wait.

:func:`verdict` reads a peer's answer the same way for the agent's uploader and the collector's
forwarders (DESIGN.md, delivery contract 6)::

    2xx                                        OK             acknowledged
    no answer, 408, 429, 5xx                   RETRY          the same message again, after a backoff
                                                              or what ``Retry-After`` asks
    401, 403, 404, VictoriaMetrics' 400        MISCONFIGURED  a wrong token or URL: keep the data,
      "unsupported path requested"                            retry slowly, say why
    any other answer (another 4xx)             REFUSED        the message itself is refused for good

:class:`Backoff` is the one backoff: every retry loop in the agent and the collector waits with it;
:func:`keep_trying` is the loop of the senders that must never stop (the uploader, each forwarder).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from typing import NoReturn

from backhaul.errors import StoreError

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    MISCONFIGURED = "misconfigured"
    REFUSED = "refused"


# What VictoriaMetrics says (with a 400) when the URL's path is wrong: a wrong URL, not bad data.
UNSUPPORTED_PATH = "unsupported path requested"
MISCONFIGURED = (401, 403, 404)


def verdict(status: int, text: str = "") -> Verdict:
    """What an answer with ``status`` (and the start of its body, ``text``) means for the message."""
    if 200 <= status < 300:
        return Verdict.OK
    if status in (408, 429) or status >= 500:
        return Verdict.RETRY
    if status in MISCONFIGURED or (status == 400 and UNSUPPORTED_PATH in text):
        return Verdict.MISCONFIGURED
    return Verdict.REFUSED


class Backoff:
    """Exponential backoff with "equal jitter" (half the step fixed, half random), never below ``minimum``.

    Args:
        minimum: the first delay (seconds); maximum: the longest.
        rng: the jitter source, a float in [0, 1) (pass a constant in tests).
    """

    # After a configuration error (wrong token or URL) the delays jump this many steps ahead: retried
    # slowly, as a person has to fix something first.
    SLOW_STEPS = 6

    def __init__(self, minimum: float, maximum: float, rng: Callable[[], float] = random.random) -> None:
        self.minimum, self.maximum, self._rng = minimum, maximum, rng
        self.failures = 0

    def next(self, asked: float | None = None) -> float:
        """The next delay; when the peer asked for one (``Retry-After``), that, up to ``maximum``."""
        step = min(self.maximum, self.minimum * 2**self.failures)
        self.failures += 1
        if asked is not None:
            return min(asked, self.maximum)
        return float(max(self.minimum, step / 2 + self._rng() * step / 2))

    def slow(self) -> None:
        """A configuration error: wait long from now on (until :meth:`reset`)."""
        self.failures = max(self.failures, self.SLOW_STEPS)

    def reset(self) -> None:
        self.failures = 0


def retry_after(headers: dict[str, str], now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), if any."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


async def keep_trying(
    step: Callable[[], Awaitable[float]], trouble: Callable[[str], float], what: str, database: str
) -> NoReturn:
    """Run ``step`` for ever, waiting the seconds it returns after each run. Neither trouble with the
    local ``database`` (a full disk: the data is still there) nor a bug ends the loop: ``trouble`` gets
    the reason and says how long to wait (it records the reason, and backs off); ``what`` names the
    loop in the log."""
    while True:
        try:
            delay = await step()
        except StoreError as exc:
            delay = trouble(f"{database}: {exc}")
        except Exception:  # a bug must not stop sending for good: logged loudly, then carry on
            log.exception("%s: failed unexpectedly", what)
            delay = trouble("internal error (see the log)")
        if delay:
            await asyncio.sleep(delay)
