"""An agent's state read from outside: its buffer database (read-only, or a copy of a dead agent's)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from backhaul.wire.chunk import Codec, Contents

LOSS_CAUSES = ("evicted", "expired", "dropped", "corrupt")  # the keys of agent_loss_counters()


def agent_loss_counters(db: Path) -> dict[str, int]:
    """The agent's persistent loss counters, read from its (live) buffer database, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()
    return {
        "evicted": meta.get("evicted_samples", 0),
        "expired": meta.get("expired_samples", 0),
        "dropped": meta.get("dropped_samples", 0) + meta.get("rejected_samples", 0),
        "corrupt": meta.get("corrupt_samples", 0),
    }


def copy_database(db: Path, target: Path) -> Path:
    """Copy a (dead) agent's buffer file and its WAL to ``target``, to read it without touching the original."""
    for suffix in ("", "-wal"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            shutil.copy(src, f"{target}{suffix}")
    return target


def samples_at(db: Path, ts: int) -> int:
    """How many samples with timestamp ``ts`` the buffer file holds in its chunks."""
    conn = sqlite3.connect(db)
    codec = Codec()
    try:
        found = 0
        for (blob,) in conn.execute("SELECT data FROM chunks WHERE min_ts <= ? AND max_ts >= ?", (ts, ts)):
            found += sum(stamps.count(ts) for stamps, _ in codec.decode(blob, 1 << 30).values())
        return found
    finally:
        conn.close()


def buffer_contents(db: Path) -> Contents:
    """Everything the buffer file's chunks hold, merged in chunk order (read-only): float samples,
    native histograms and metadata (the newest entry of each family)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    codec = Codec()
    out = Contents()
    try:
        for (blob,) in conn.execute("SELECT data FROM chunks ORDER BY id"):
            out.add(codec.decode_contents(blob, 1 << 30))
        return out
    finally:
        conn.close()
