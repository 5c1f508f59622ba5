"""Batches: chunks sealed under a sequence number, re-sent unchanged until the collector acknowledges
them, then deleted (or released, or rejected and counted, when the collector refuses them); and the
bytes each link spent, saved with the acknowledgement that spent them."""

from __future__ import annotations

from collections.abc import Sequence

from agent.buffer.records import LOSS_KEYS, Batch, UsageRow
from agent.buffer.schema import IN_BATCH, UNCLAIMED
from agent.buffer.summaries import Summaries

# A chunk too big for a batch is split only down to this many bytes (its series table must fit too).
MIN_PART_BYTES = 1024


class Batches(Summaries):
    """Sealing and settling batches (see :class:`~agent.buffer.store.BufferStore` for the arguments)."""

    def claim(
        self,
        max_bytes: int,
        now_ms: int,
        report_losses: bool,
        newest_first: bool = False,
        since_ms: int | None = None,
        strict: bool = False,
    ) -> Batch | None:
        """The batch to send next: the one already sealed and unacknowledged, else a new one.

        A new batch takes unclaimed chunks up to ``max_bytes`` (at least one): the oldest first, or
        with ``newest_first`` those with the newest samples first. ``since_ms`` takes only samples
        from then on (a chunk reaching further back is split there). A first chunk bigger than
        ``max_bytes`` is split to fit when ``newest_first`` or ``strict`` (its newest or oldest part
        goes); with ``strict`` a batch never exceeds ``max_bytes``, so None when nothing fits. With
        no data, an empty batch is sealed only when ``report_losses`` asks for one (so that loss
        counters reach the collector even when everything was evicted).
        """
        row = self.conn.execute(
            "SELECT seq, sealed_ms, samples, summary_ms FROM batches ORDER BY seq LIMIT 1"
        ).fetchone()
        if row is not None:
            return self._load_batch(*row)
        order = "max_ts DESC, id DESC" if newest_first else "id"
        since = "" if since_ms is None else f" AND max_ts >= {int(since_ms)}"
        with self.db.atomic():
            candidates = self.conn.execute(
                f"SELECT id, bytes, samples, min_ts, max_ts FROM chunks WHERE {UNCLAIMED} AND hold = 0{since}"
                f" ORDER BY {order} LIMIT 10000"
            ).fetchall()
            chosen, changed = self._choose(candidates, max_bytes, now_ms, newest_first, since_ms, strict)
            if not chosen and not report_losses:
                if changed:
                    self._recount()
                return None
            # One series table per batch instead of one per commit: merge small chunks first.
            rows = self.conn.execute(
                f"SELECT id, samples FROM chunks WHERE id IN ({','.join('?' * len(chosen))}) ORDER BY id", chosen
            ).fetchall()
            merged = {ids[0]: ids for ids in self._small_runs(rows)}
            for first, ids in merged.items():
                self._merge(ids, now_ms)
                chosen = [c for c in chosen if c == first or c not in ids]
            (seq,) = self.conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            seq += 1
            self.conn.execute("UPDATE meta SET value = ? WHERE key='next_seq'", (seq,))
            self.conn.executemany("INSERT INTO claims (chunk_id, batch_seq) VALUES (?, ?)", [(c, seq) for c in chosen])
            # Counted after merging: a chunk quarantined by the merge is no longer in the batch.
            (samples,) = self.conn.execute(
                f"SELECT coalesce(sum(samples), 0) FROM chunks WHERE {IN_BATCH}", (seq,)
            ).fetchone()
            self.conn.execute("INSERT INTO batches (seq, sealed_ms, samples) VALUES (?, ?, ?)", (seq, now_ms, samples))
        if merged or changed:
            self._recount()
        return self._load_batch(seq, now_ms, samples, 0)

    def _choose(
        self,
        candidates: list[tuple[int, int, int, int, int]],
        max_bytes: int,
        now_ms: int,
        newest_first: bool,
        since_ms: int | None,
        strict: bool,
    ) -> tuple[list[int], bool]:
        """The ids of the chunks (or parts of chunks) for a new batch, in the caller's transaction;
        and whether any chunk was split."""
        chosen: list[int] = []
        size = 0
        changed = False
        for chunk_id, nbytes, _, lo, hi in candidates:
            part = chunk_id
            if since_ms is not None and lo < since_ms:
                _, newer = self._split(chunk_id, since_ms, now_ms)
                changed = True
                if newer is None:
                    continue
                part = newer
                nbytes, lo, hi = self._extent(part)
            if not chosen and nbytes > max_bytes and (newest_first or strict):
                part, nbytes = self._fit(part, nbytes, lo, hi, max_bytes, now_ms, newest_first)
                changed = True
            if (chosen or strict) and size + nbytes > max_bytes:
                break
            chosen.append(part)
            size += nbytes
        return chosen, changed

    def _extent(self, chunk_id: int) -> tuple[int, int, int]:
        (nbytes, lo, hi) = self.conn.execute(
            "SELECT bytes, min_ts, max_ts FROM chunks WHERE id = ?", (chunk_id,)
        ).fetchone()
        return int(nbytes), int(lo), int(hi)

    def _fit(
        self, chunk_id: int, nbytes: int, lo: int, hi: int, max_bytes: int, now_ms: int, newest: bool
    ) -> tuple[int, int]:
        """Split chunk ``chunk_id`` until its newest (or oldest) part fits ``max_bytes``; returns the
        part and its size, which is still too big when no smaller part can be cut (a single
        timestamp, or a part down to ``MIN_PART_BYTES``)."""
        part = chunk_id
        for _ in range(8):
            if nbytes <= max_bytes or hi <= lo or nbytes <= MIN_PART_BYTES:
                break
            # Cut where the bytes would fit if they were spread evenly over time, a little short of it.
            share = 0.8 * max_bytes / nbytes
            cut = int(hi - (hi - lo) * share) if newest else int(lo + (hi - lo) * share) + 1
            older, newer = self._split(part, max(lo + 1, min(hi, cut)), now_ms)
            found = newer if newest else older
            if found is None:
                break
            part = found
            nbytes, lo, hi = self._extent(part)
        return part, nbytes

    def _load_batch(self, seq: int, sealed_ms: int, samples: int, summary_ms: int) -> Batch:
        if summary_ms:
            query = "SELECT data, min_ts, max_ts FROM summaries WHERE seq = ?"
            (blob, lo, hi) = self.conn.execute(query, (seq,)).fetchone()
            return Batch(seq, sealed_ms, samples, [blob], hi, summary_ms, lo)
        rows = self.conn.execute(
            f"SELECT data, min_ts, max_ts FROM chunks WHERE {IN_BATCH} ORDER BY id", (seq,)
        ).fetchall()
        lo = min((r[1] for r in rows), default=0)
        hi = max((r[2] for r in rows), default=0)
        return Batch(seq, sealed_ms, samples, [r[0] for r in rows], hi, 0, lo)

    def recent(self, since_ms: int) -> tuple[float, int]:
        """Samples stamped at or after ``since_ms`` (chunks counted by the share of their time span
        past it), and the most series one of those chunks holds."""
        rows = self.conn.execute(
            "SELECT min_ts, max_ts, samples, series FROM chunks WHERE hold = 0 AND max_ts >= ?", (since_ms,)
        ).fetchall()
        total = 0.0
        for lo, hi, samples, _ in rows:
            total += samples if lo >= since_ms or hi == lo else samples * (hi - since_ms) / (hi - lo)
        return total, max((r[3] for r in rows), default=0)

    def oldest_unclaimed_ms(self) -> int | None:
        """When the oldest chunk not yet in a batch was written (agent clock, ms), if any."""
        (oldest,) = self.conn.execute(f"SELECT min(created_ms) FROM chunks WHERE {UNCLAIMED} AND hold = 0").fetchone()
        return int(oldest) if oldest is not None else None

    def unclaimed(self) -> tuple[int, int, int | None]:
        """Bytes and samples of the chunks not in a batch, and their newest sample's timestamp (ms)."""
        row = self.conn.execute(
            "SELECT coalesce(sum(bytes), 0), coalesce(sum(samples), 0), max(max_ts) FROM chunks"
            f" WHERE {UNCLAIMED} AND hold = 0"
        ).fetchone()
        return int(row[0]), int(row[1]), (int(row[2]) if row[2] is not None else None)

    def sealed_bytes(self) -> int | None:
        """Bytes of the batch sealed and not yet acknowledged (its chunks), None when there is none."""
        row = self.conn.execute("SELECT seq, summary_ms FROM batches ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            return None
        which = "summaries WHERE seq = ?" if row[1] else f"chunks WHERE {IN_BATCH}"
        (size,) = self.conn.execute(f"SELECT coalesce(sum(length(data)), 0) FROM {which}", (row[0],)).fetchone()
        return int(size)

    def unsent_loss(self) -> int:
        """Losses counted since the collector last acknowledged a report of them."""
        c = self.counters()
        return sum(c[k] for k in LOSS_KEYS) - c["reported_loss"]

    def ack(self, seq: int, reported_loss: int, usage: Sequence[UsageRow] = ()) -> None:
        """The collector stored batch ``seq``: forget its chunks (and save what sending it spent)."""
        with self.db.atomic():
            self.conn.execute(f"DELETE FROM chunks WHERE {IN_BATCH}", (seq,))
            self.conn.execute("DELETE FROM summaries WHERE seq = ?", (seq,))
            self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self.conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'reported_loss'", (reported_loss,))
            self._save_usage(usage)
        self._release_free_pages()
        self._recount()

    def release(self, seq: int) -> None:
        """Unseal batch ``seq`` (the collector refused it whole): its chunks become claimable again."""
        with self.db.atomic():
            self.conn.execute("DELETE FROM claims WHERE batch_seq = ?", (seq,))
            self.conn.execute("DELETE FROM summaries WHERE seq = ?", (seq,))
            self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def reject(self, seq: int) -> int:
        """Drop batch ``seq`` for good (the collector refused even a single chunk); count it."""
        with self.db.atomic():
            (samples,) = self.conn.execute(
                f"SELECT coalesce(sum(samples), 0) FROM chunks WHERE {IN_BATCH}", (seq,)
            ).fetchone()
            self.conn.execute(f"DELETE FROM chunks WHERE {IN_BATCH}", (seq,))
            self.conn.execute("DELETE FROM summaries WHERE seq = ?", (seq,))
            self.conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self._bump("rejected_samples", samples)
        self._recount()
        return int(samples)

    # -- what the links spent ----------------------------------------------------------------------

    def add_usage(self, usage: Sequence[UsageRow]) -> None:
        """Save bytes spent (a failed attempt, a reservation, the proxy's traffic) in a transaction."""
        if usage:
            with self.db.atomic():
                self._save_usage(usage)

    def _save_usage(self, usage: Sequence[UsageRow]) -> None:
        # A later period replaces an earlier one. Bytes for the stored period add to it (a correction
        # may be negative); bytes for an earlier one (the clock stepped back, or a request that ran
        # over midnight) add to the stored period when positive, so a budget is never handed back.
        self.conn.executemany(
            "INSERT INTO link_usage (link, period, key, bytes) VALUES (?, ?, ?, max(?, 0))"
            " ON CONFLICT (link, period) DO UPDATE SET bytes = CASE"
            " WHEN excluded.key > key THEN max(?, 0)"
            " WHEN excluded.key = key THEN max(bytes + ?, 0)"
            " ELSE bytes + max(?, 0) END,"
            " key = max(key, excluded.key)",
            [(link, period, key, n, n, n, n) for link, period, key, n in usage],
        )

    def usage(self) -> list[UsageRow]:
        """What every link spent in its latest period of each kind."""
        rows = self.conn.execute("SELECT link, period, key, bytes FROM link_usage").fetchall()
        return [(str(a), str(b), int(c), int(d)) for a, b, c, d in rows]
