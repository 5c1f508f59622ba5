"""What to send next, and when: the drain policy of one link (docs/uplink.md).

The uploader asks :meth:`DrainPolicy.next` before every batch and does what the :class:`Step` says;
the policy itself never waits or touches the network, so ``bench/metered.py`` runs the very same
decisions on a simulated clock. The rules:

- **Blocked**: outside every window, or with the budget spent, nothing bulk goes (alerts have a lane
  of their own); the uploader waits until the window opens or the budget renews.
- **Cap**: a batch should take no longer than about ``PACE_SECONDS`` (or ``batch_interval``, if longer)
  to send at the capped rate, so live data never waits long behind a backlog batch on a slow link.
- **Budget**: a batch never needs more than the budget has left (its chunks are split to fit), so the
  link stops *at* the budget, not one batch past it.
- **Fresh first** (``drain_order``): batches take the newest data first; after any gap (an outage, a
  closed window, a spent budget) the first batch holds only the latest ``fresh_window``, so current
  data reaches the collector within seconds of the link returning, then live data keeps going ahead
  of the backlog, which fills in newest to oldest.
- **Short** (``when_short = "summarise"``): when the budget left cannot carry the full data (what waits
  plus what arrives at the current rate) until it renews, summary batches go first — each series'
  real sample at the end of every ``summary_interval`` — and full data only with what the budget
  leaves beyond what summaries will need until the renewal (priced at what summaries really cost,
  once one was sent). A summary goes only for data that budget does not carry in full right now: while
  what it leaves covers all that waits, the full data goes alone (a summary of it would be paid twice).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from agent.uplink.link import MIN_BATCH, Link
from agent.uplink.links import Links
from agent.uplink.settings import UplinkSettings

PACE_SECONDS = 5.0
MIN_PACED_BYTES = 8 * 1024
# Held back from a budget-limited batch for its envelope (the JSON header, chunk sizes, link report).
BATCH_HEADER = 2048
# Wire bytes per sample assumed before any batch was acknowledged.
DEFAULT_BYTES_PER_SAMPLE = 2.0
# The rate data is produced at is measured over the samples stamped in this last stretch (ms), so
# that a backfill of old data (a Prometheus catching up) does not read as a flood of new data.
RATE_WINDOW_MS = 600_000
# A summary's samples are sparse, so each costs more than a full batch's; assumed this many times
# until summaries were sent (then their measured cost is used).
SUMMARY_COST = 2.0
# Summary batches this small say little about what a summary sample costs.
MIN_SUMMARY_SAMPLES = 100


@dataclass
class Backlog:
    """What the buffer holds, as the policy sees it.

    Args:
        sealed_bytes: the sealed, unacknowledged batch's bytes (None when there is none).
        unclaimed_bytes, unclaimed_samples: chunks not in a batch yet.
        recent_samples: samples in the buffer stamped within the last ``RATE_WINDOW_MS``.
        series: the most series a recent chunk holds (how many samples one summary interval takes).
    """

    sealed_bytes: int | None
    unclaimed_bytes: int
    unclaimed_samples: int
    recent_samples: float = 0.0
    series: int = 0


@dataclass
class Step:
    """What the uploader does next.

    ``kind`` "wait": nothing may go for ``seconds`` (``reason`` "window" or "budget"). "send": try a
    summary batch first when ``summary``, then (``full``) claim full data with ``max_bytes``,
    ``newest_first``, ``since_ms`` and ``strict`` (see :meth:`~agent.buffer.batches.Batches.claim`).
    """

    kind: str
    seconds: float = 0.0
    reason: str | None = None
    summary: bool = False
    full: bool = True
    max_bytes: int = 0
    newest_first: bool = False
    since_ms: int | None = None
    strict: bool = False


def ewma(old: float | None, new: float) -> float:
    """A running estimate that follows ``new`` over a few observations."""
    return new if old is None else 0.8 * old + 0.2 * new


def overlap(lo: int, hi: int, samples: int, since_ms: int) -> float:
    """The share of ``samples``, spread evenly over ``[lo, hi]`` (ms), stamped at or after ``since_ms``."""
    if hi < since_ms:
        return 0.0
    if lo >= since_ms or hi == lo:
        return float(samples)
    return samples * (hi - since_ms) / (hi - lo)


class DrainPolicy:
    """Args: the ``[uplink]`` settings and the links batches may go over (or one link). The link in
    use is the first that may carry the next batch; its cap and budget shape the batch."""

    def __init__(self, settings: UplinkSettings, links: Link | Links) -> None:
        self.settings = settings
        self.links = links if isinstance(links, Links) else Links.of(links)
        self.gap = True  # at start a backlog may wait: the fresh window goes first
        self.bytes_per_sample: float | None = None
        self.summary_bytes_per_sample: float | None = None
        self.short = False
        # Acknowledged full batches stamped within the rate window: (oldest, newest sample ms, samples).
        self._sent: deque[tuple[int, int, int]] = deque()

    @property
    def link(self) -> Link:
        """The link in use (the last one chosen)."""
        return self.links.active

    # -- what happened -------------------------------------------------------------------------------

    def sent(self, samples: int, wire_bytes: int, summary: bool, span: tuple[int, int]) -> None:
        """A batch was acknowledged: ``samples`` stamped over ``span`` (ms), ``wire_bytes`` spent."""
        if summary:
            if samples >= MIN_SUMMARY_SAMPLES and wire_bytes:
                self.summary_bytes_per_sample = ewma(self.summary_bytes_per_sample, wire_bytes / samples)
            return
        self.gap = False
        if samples:
            self._sent.append((span[0], span[1], samples))
        if samples >= 1000 and wire_bytes:
            self.bytes_per_sample = ewma(self.bytes_per_sample, wire_bytes / samples)

    def interrupted(self) -> None:
        """An upload failed, or the link was blocked: the next batch starts after a gap."""
        self.gap = True

    def production(self, now: float, backlog: Backlog) -> float:
        """Samples per second the device produces now: those stamped within the rate window, still
        buffered or already acknowledged, over the window."""
        since = int(now * 1000) - RATE_WINDOW_MS
        while self._sent and self._sent[0][1] < since:
            self._sent.popleft()
        sent = sum(overlap(lo, hi, n, since) for lo, hi, n in self._sent)
        return (backlog.recent_samples + sent) / (RATE_WINDOW_MS / 1000)

    # -- what to do ----------------------------------------------------------------------------------

    def _pace_bytes(self) -> int:
        limit = int(self.settings.batch_max_bytes)
        cap = self.link.cap
        if cap is None:
            return limit
        seconds = max(PACE_SECONDS, self.settings.batch_interval.total_seconds())
        return max(MIN_PACED_BYTES, min(limit, int(cap.rate * seconds)))

    def _bps(self, backlog: Backlog) -> float:
        if self.bytes_per_sample is not None:
            return self.bytes_per_sample
        if backlog.unclaimed_samples:
            return max(0.1, backlog.unclaimed_bytes / backlog.unclaimed_samples)
        return DEFAULT_BYTES_PER_SAMPLE

    def _shortfall(self, now: float, backlog: Backlog) -> tuple[bool, float]:
        """Whether a budget cannot carry the full data (what waits, and what arrives at the current
        rate) until it renews; and the bytes summaries will need until then."""
        budget = self.link.budget
        if not budget.limited:
            return False, 0.0
        bps = self._bps(backlog)
        summary_bps = self.summary_bytes_per_sample or bps * SUMMARY_COST
        rate = self.production(now, backlog)
        # One sample per series per interval, and never more than there are.
        summary_rate = min(rate, backlog.series / self.link.settings.summary_interval.total_seconds())
        short = False
        reserve = 0.0
        for kind, limit in budget.limits.items():
            if not limit:
                continue
            seconds = max(0.0, budget.periods.period(kind, now).end - now)
            left = limit - budget.spent(kind, now)
            if left < (backlog.unclaimed_samples + rate * seconds) * bps:
                short = True
                reserve = max(reserve, summary_rate * seconds * summary_bps)
        return short, reserve

    def next(self, now: float, backlog: Backlog) -> Step:
        """The next step, given the clock and what the buffer holds."""
        if backlog.sealed_bytes is not None:
            need = backlog.sealed_bytes
        else:
            need = min(MIN_BATCH, backlog.unclaimed_bytes)
        was = self.links.active
        link, reason = self.links.select(need)
        if link is None:
            self.gap = True
            return Step("wait", self.links.lifts_in(need), reason)
        if link is not was:
            self.gap = True  # a new link: the fresh window goes first again
        if backlog.sealed_bytes is not None:
            return Step("send")  # the sealed batch goes first, unchanged
        s = link.settings  # drain order and summaries are the link's (with [[uplink.links]], per link)
        newest = s.drain_order == "fresh_first"
        step = Step("send", max_bytes=self._pace_bytes(), newest_first=newest)
        if newest and self.gap:
            step.since_ms = int((now - s.fresh_window.total_seconds()) * 1000)
        affordable = link.affordable()
        self.short = False
        if s.when_short == "summarise":
            self.short, reserve = self._shortfall(now, backlog)
            if self.short:
                step.summary = True
                if affordable is not None:
                    affordable = int(affordable - reserve)
        if affordable is not None:
            affordable -= BATCH_HEADER  # the batch's own header travels in the body too
            if step.summary and affordable >= backlog.unclaimed_bytes:
                step.summary = False  # the full data goes now: no need to pay for a summary of it too
            # Under a budget a batch never exceeds its size: a chunk bigger than that (compacted, or
            # rewritten by a clock correction) is split, or a sealed batch could outgrow the budget left.
            step.strict = True
            if affordable < step.max_bytes:
                step.max_bytes = max(0, affordable)
                step.full = step.max_bytes >= min(MIN_BATCH, backlog.unclaimed_bytes or MIN_BATCH)
        return step
