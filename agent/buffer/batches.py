"""Batches: chunks sealed under a sequence number, re-sent unchanged until the collector acknowledges
them, then deleted (or released, or rejected and counted, when the collector refuses them)."""

from __future__ import annotations

from agent.buffer.compaction import Compaction
from agent.buffer.records import LOSS_KEYS, Batch


class Batches(Compaction):
    """Sealing and settling batches (see :class:`~agent.buffer.store.BufferStore` for the arguments)."""

    def claim(self, max_bytes: int, now_ms: int, report_losses: bool) -> Batch | None:
        """The batch to send next: the one already sealed and unacknowledged, else a new one.

        A new batch takes the oldest unclaimed chunks up to ``max_bytes`` (at least one). With no
        data, an empty batch is sealed only when ``report_losses`` asks for one (so that loss
        counters reach the collector even when everything was evicted).
        """
        row = self.conn.execute("SELECT seq, sealed_ms, samples FROM batches ORDER BY seq LIMIT 1").fetchone()
        if row is not None:
            return self._load_batch(*row)
        candidates = self.conn.execute(
            "SELECT id, bytes, samples FROM chunks WHERE batch_seq IS NULL AND hold = 0 ORDER BY id LIMIT 10000"
        ).fetchall()
        chosen: list[int] = []
        size = 0
        for chunk_id, nbytes, _ in candidates:
            if chosen and size + nbytes > max_bytes:
                break
            chosen.append(chunk_id)
            size += nbytes
        if not chosen and not report_losses:
            return None
        with self.db.atomic():
            # One series table per batch instead of one per commit: merge small chunks first.
            merged = {ids[0]: ids for ids in self._small_runs([(c, n) for c, _, n in candidates[: len(chosen)]])}
            for first, ids in merged.items():
                self._merge(ids, now_ms)
                chosen = [c for c in chosen if c == first or c not in ids]
            (seq,) = self.conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            seq += 1
            self.conn.execute("UPDATE meta SET value = ? WHERE key='next_seq'", (seq,))
            for chunk_id in chosen:
                self.conn.execute("UPDATE chunks SET batch_seq = ? WHERE id = ?", (seq, chunk_id))
            # Counted after merging: a chunk quarantined by the merge is no longer in the batch.
            (samples,) = self.conn.execute(
                "SELECT coalesce(sum(samples), 0) FROM chunks WHERE batch_seq = ?", (seq,)
            ).fetchone()
            self.conn.execute("INSERT INTO batches (seq, sealed_ms, samples) VALUES (?, ?, ?)", (seq, now_ms, samples))
        if merged:
            self._recount()
        return self._load_batch(seq, now_ms, samples)

    def _load_batch(self, seq: int, sealed_ms: int, samples: int) -> Batch:
        blobs = self.conn.execute("SELECT data FROM chunks WHERE batch_seq = ? ORDER BY id", (seq,)).fetchall()
        return Batch(seq=seq, sealed_ms=sealed_ms, samples=samples, chunks=[b for (b,) in blobs])

    def oldest_unclaimed_ms(self) -> int | None:
        """When the oldest chunk not yet in a batch was written (agent clock, ms), if any."""
        (oldest,) = self.conn.execute(
            "SELECT min(created_ms) FROM chunks WHERE batch_seq IS NULL AND hold = 0"
        ).fetchone()
        return int(oldest) if oldest is not None else None

    def unsent_loss(self) -> int:
        """Losses counted since the collector last acknowledged a report of them."""
        c = self.counters()
        return sum(c[k] for k in LOSS_KEYS) - c["reported_loss"]

    def ack(self, seq: int, reported_loss: int) -> None:
        """The collector stored batch ``seq``: forget its chunks."""
        with self.db.atomic():
            self.conn.execute("DELETE FROM chunks WHERE batch_seq = ?", (seq,))
            self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self.conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'reported_loss'", (reported_loss,))
        self._release_free_pages()
        self._recount()

    def release(self, seq: int) -> None:
        """Unseal batch ``seq`` (the collector refused it whole): its chunks become claimable again."""
        with self.db.atomic():
            self.conn.execute("UPDATE chunks SET batch_seq = NULL WHERE batch_seq = ?", (seq,))
            self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def reject(self, seq: int) -> int:
        """Drop batch ``seq`` for good (the collector refused even a single chunk); count it."""
        with self.db.atomic():
            (samples,) = self.conn.execute(
                "SELECT coalesce(sum(samples), 0) FROM chunks WHERE batch_seq = ?", (seq,)
            ).fetchone()
            self.conn.execute("DELETE FROM chunks WHERE batch_seq = ?", (seq,))
            self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self._bump("rejected_samples", samples)
        self._recount()
        return int(samples)
