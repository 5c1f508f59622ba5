"""What the buffer hands out: its totals, sealed batches and the losses of an operation."""

from __future__ import annotations

from dataclasses import dataclass, field

from backhaul.wire.batch import LOSS_FIELDS

# The buffer's loss counters (its meta table): those the batch header reports, plus samples the
# collector refused as malformed (reported as dropped).
LOSS_KEYS = (*LOSS_FIELDS, "rejected_samples")


@dataclass
class Totals:
    """What the buffer holds right now (kept in memory, recomputed at open)."""

    chunks: int = 0
    bytes: int = 0
    samples: int = 0
    oldest_ts: int | None = None  # oldest sample timestamp (ms) still buffered


@dataclass
class Batch:
    """Chunks sealed under one sequence number; re-sent unchanged until acknowledged.

    ``min_ts`` and ``max_ts`` are its oldest and newest samples' timestamps (ms, 0 when empty);
    ``summary_ms`` is 0 for full data, else the interval of a summary batch (one real sample per
    series per interval).
    """

    seq: int
    sealed_ms: int
    samples: int
    chunks: list[bytes] = field(default_factory=list)
    max_ts: int = 0
    summary_ms: int = 0
    min_ts: int = 0


# Bytes a link spent in one budget period: (link, period "day" or "month", the period's key, bytes).
UsageRow = tuple[str, str, int, int]


@dataclass
class Losses:
    """Samples removed by one operation, by cause."""

    evicted: int = 0
    expired: int = 0
