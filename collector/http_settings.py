"""The ``[listen]`` and ``[limits]`` settings of the collector's HTTP listener and its upload endpoints
(batches, remote write, alerts)."""

from __future__ import annotations

from pydantic import ByteSize, Field

from backhaul.settings import Section


class ListenSettings(Section):
    """Where the collector listens."""

    host: str = "127.0.0.1"
    port: int = Field(9300, ge=0, le=65535)


class LimitSettings(Section):
    """Limits on one upload's body."""

    max_request_bytes: ByteSize = ByteSize(64 * 1024**2)
    # Hard cap on what one batch may decompress to: a zstd bomb gets 413, never an out-of-memory.
    max_decompressed_bytes: ByteSize = ByteSize(256 * 1024**2)
