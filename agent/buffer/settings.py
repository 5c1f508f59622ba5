"""The ``[buffer]`` settings: the durable SQLite ring buffer (see examples/agent.toml)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import ByteSize, Field

from backhaul.settings import Section
from backhaul.sqlite import Synchronous


class BufferSettings(Section):
    """The durable SQLite ring buffer."""

    path: Path = Path("/var/lib/backhaul/buffer.db")
    budget_bytes: ByteSize = Field(ByteSize(512 * 1024**2), ge=1024**2)
    # Samples older than this are dropped (and counted as expired) rather than kept forever.
    max_age: timedelta = timedelta(days=7)
    # FULL: a commit is on disk before the sender is answered, so a power cut loses nothing
    # acknowledged. NORMAL is faster but may lose the last commits on power loss (not on a crash).
    synchronous: Synchronous = "FULL"
    # Group commit: how long to gather further requests into one transaction.
    commit_delay_ms: float = Field(2.0, ge=0, le=1000)
    # The agent's own sources (scrapes, host metrics, its self-scrape) answer to nobody: their passes
    # may wait this long in memory and be committed together, which divides the flash pages written
    # per sample by the number of passes per commit. A crash or power cut loses at most this long of
    # them (backhaul_buffer_source_samples_waiting shows what waits); pushed samples are unaffected.
    # 0: every pass is committed at once, as a pushed request is.
    source_commit_interval: timedelta = Field(timedelta(0), ge=timedelta(0), le=timedelta(minutes=10))
    # ... but no longer than until the waiting passes hold this many distinct series: memory grows
    # with the series waiting (a few KB each), and under series churn every pass brings new ones.
    source_commit_max_series: int = Field(20_000, ge=100)
    # Requests waiting for a commit above this many samples are answered 503 (sender retries).
    max_pending_samples: int = Field(2_000_000, ge=1000)
    # Small chunks (one per commit) are merged in the background into chunks of about this size.
    compact_target_samples: int = Field(100_000, ge=1000)
    # How often expiry (max_age) and compaction run.
    maintenance_interval: timedelta = Field(timedelta(seconds=30), gt=timedelta(0))
    zstd_level: int = Field(3, ge=1, le=22)
    # The filesystem's free-space floor: the buffer evicts its oldest data rather than take the free
    # space below this, and answers 503 when even that cannot make room (other files filled the disk).
    min_free_bytes: ByteSize = ByteSize(64 * 1024**2)
