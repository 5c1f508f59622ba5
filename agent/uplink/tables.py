"""Series tables by reference: what the agent knows the collector keeps, and the chunks that use it.

In small batches the series table is most of the bytes, and it is the same batch after batch. Once
the collector has said it keeps tables (``TABLES_HEADER`` on a reply) and has acknowledged a batch
that carried a table, later chunks with the same table go without it, named by digest. The batch
stored in the buffer is not changed: its chunks are rewritten for each send, so whatever the
collector knows or forgets, a retry can always fall back to the full chunks.
"""

from __future__ import annotations

from dataclasses import replace

from agent.buffer import recovery
from backhaul.wire import chunk as chunkfmt
from backhaul.wire.batch import BatchHeader


class TableRefs:
    """Args: zstd level for the chunks it re-compresses without their table."""

    def __init__(self, zstd_level: int = 3) -> None:
        self.supported = False  # the collector keeps tables
        self._known: set[str] = set()  # digests of tables the collector acknowledged
        self._codec = chunkfmt.Codec(zstd_level)

    def rewrite(
        self, header: BatchHeader, frames: list[bytes], by_reference: bool = True
    ) -> tuple[BatchHeader, list[bytes], list[str]]:
        """The header and chunk frames to send, and the digest of every chunk's table.

        Chunks whose table the collector knows go without it (when ``by_reference``); the others
        carry theirs, and the header asks the collector to keep them.
        """
        digests: list[str] = []
        refs: list[str] = []
        out: list[bytes] = []
        for frame in frames:
            raw = self._codec.decompress(frame, recovery.MAX_CHUNK_BYTES)
            digest = chunkfmt.table_digest(chunkfmt.table_of(raw))
            digests.append(digest)
            if by_reference and digest in self._known:
                refs.append(digest)
                out.append(self._codec.compress(chunkfmt.split_table(raw)[1]))
            else:
                refs.append("")
                out.append(frame)
        return replace(header, table_refs=refs), out, digests

    def acknowledged(self, digests: list[str]) -> None:
        self._known.update(digests)

    def forget(self, digests: list[str]) -> None:
        self._known.difference_update(digests)
