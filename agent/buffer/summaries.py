"""Parts of chunks: splitting a chunk in time, and summary batches (a reduced copy of unsent data).

Splitting serves the drain order (docs/uplink.md): a batch that may carry only the newest minutes,
or only as many bytes as a budget has left, takes that part of a big compacted chunk and leaves the
rest unsent, instead of all of it or nothing.

A summary batch (``uplink.when_short = "summarise"``) holds, for each series, the real sample at the
end of every summary interval, taken from unsent chunks *without* claiming them: the full data stays
in the buffer, under its own limits, and goes later; since a summary is a subset of the real samples,
the collector then keeps each sample once. A summary batch has its own sequence number and is stored
(``summaries``) so that it is re-sent byte for byte until acknowledged, like any batch. The buffer
remembers which sample times summaries cover, ``[summary_lo_ms, summary_hi_ms)``: the newest complete
intervals go first, then the backlog below, newest to oldest, so no interval is summarised twice.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import pairwise

from agent.buffer import recovery
from agent.buffer.compaction import Compaction
from agent.buffer.records import Batch
from agent.buffer.schema import UNCLAIMED
from backhaul.wire import WireError
from backhaul.wire.series import SeriesMap, append_series, sample_count, time_range

_CANDIDATES = 1000  # chunks looked at for one summary batch


def split_series(series: SeriesMap, cut_ms: int) -> tuple[SeriesMap, SeriesMap]:
    """``series`` as the samples before ``cut_ms`` and those at or after it."""
    older: SeriesMap = {}
    newer: SeriesMap = {}
    for labels, (stamps, values) in series.items():
        i = bisect_left(stamps, cut_ms) if _sorted(stamps) else None
        if i is None:  # out of order within the series (a backfill): partition one by one
            pairs = list(zip(stamps, values, strict=True))
            lo = [(t, v) for t, v in pairs if t < cut_ms]
            hi = [(t, v) for t, v in pairs if t >= cut_ms]
            if lo:
                older[labels] = ([t for t, _ in lo], [v for _, v in lo])
            if hi:
                newer[labels] = ([t for t, _ in hi], [v for _, v in hi])
            continue
        if i > 0:
            older[labels] = (stamps[:i], values[:i])
        if i < len(stamps):
            newer[labels] = (stamps[i:], values[i:])
    return older, newer


def _sorted(stamps: list[int]) -> bool:
    return all(a <= b for a, b in pairwise(stamps))


def last_per_interval(series: SeriesMap, start_ms: int, end_ms: int, interval_ms: int) -> SeriesMap:
    """Per series, the sample with the latest timestamp in each interval of ``[start_ms, end_ms)``."""
    out: SeriesMap = {}
    for labels, (stamps, values) in series.items():
        last: dict[int, tuple[int, float]] = {}
        for ts, value in zip(stamps, values, strict=True):
            if start_ms <= ts < end_ms:
                bucket = ts // interval_ms
                held = last.get(bucket)
                if held is None or ts >= held[0]:
                    last[bucket] = (ts, value)
        if last:
            picked = sorted(last.values())
            out[labels] = ([t for t, _ in picked], [v for _, v in picked])
    return out


class Summaries(Compaction):
    """Splitting chunks and sealing summary batches (see :class:`~agent.buffer.store.BufferStore`)."""

    def _decode(self, chunk_id: int, samples: int, blob: bytes, now_ms: int) -> SeriesMap | None:
        try:
            return self.codec.decode(blob, limit=recovery.MAX_CHUNK_BYTES)
        except WireError as exc:
            self.conn.execute("DELETE FROM chunks WHERE id = ?", (chunk_id,))
            self._quarantine_chunk(chunk_id, samples, blob, str(exc), now_ms)
            return None

    def _split(self, chunk_id: int, cut_ms: int, now_ms: int) -> tuple[int | None, int | None]:
        """Replace unclaimed chunk ``chunk_id`` by its samples before ``cut_ms`` (keeping its id, so
        eviction still finds it oldest) and those from ``cut_ms`` on (a new id). Returns the ids of
        the two parts, None for a part without samples. Runs inside the caller's transaction."""
        row = self.conn.execute(
            f"SELECT samples, data, created_ms FROM chunks WHERE id = ? AND {UNCLAIMED}", (chunk_id,)
        ).fetchone()
        if row is None:
            return None, None
        series = self._decode(chunk_id, row[0], row[1], now_ms)
        if series is None:
            return None, None
        older, newer = split_series(series, cut_ms)
        if not older or not newer:
            return (chunk_id, None) if older else (None, chunk_id)
        self.conn.execute("DELETE FROM chunks WHERE id = ?", (chunk_id,))
        self._insert(self.codec.encode(older), time_range(older), len(older), sample_count(older), row[2], chunk_id)
        self._insert(self.codec.encode(newer), time_range(newer), len(newer), sample_count(newer), row[2])
        (newer_id,) = self.conn.execute("SELECT last_insert_rowid()").fetchone()
        return chunk_id, int(newer_id)

    def summarise(self, interval_ms: int, now_ms: int, max_samples: int = 200_000) -> Batch | None:
        """Seal a summary batch of unsent samples not summarised yet (complete intervals only), or
        None when there is nothing to summarise. Decodes chunks of about ``max_samples`` at most."""
        (seq,) = self.conn.execute("SELECT seq FROM batches LIMIT 1").fetchone() or (None,)
        if seq is not None:
            return None  # a sealed batch goes first
        cutoff = now_ms // interval_ms * interval_ms
        for _ in range(8):  # ranges without unsent samples are skipped, a few at a time
            found = self._summary_range(interval_ms, cutoff, max_samples)
            if found is None:
                return None
            start, end, ids = found
            batch = self._seal_summary(interval_ms, now_ms, start, end, ids)
            if batch is not None:
                return batch
        return None

    def _summary_range(self, interval_ms: int, cutoff: int, max_samples: int) -> tuple[int, int, list[int]] | None:
        """The sample times ``[start, end)`` to summarise next and the unsent chunks that hold them.

        Every unsent chunk with samples in the range is among them (a summary takes the *last* sample
        of each interval, so it must see all of them)."""
        c = self.counters()
        lo, hi = c["summary_lo_ms"], c["summary_hi_ms"]
        if hi and cutoff > hi:
            rows = self.conn.execute(
                f"SELECT id, samples FROM chunks WHERE {UNCLAIMED} AND hold = 0 AND max_ts >= ? AND min_ts < ?",
                (hi, cutoff),
            ).fetchall()
            if sum(n for _, n in rows) <= max_samples:
                return hi, cutoff, [r[0] for r in rows]
        if not hi or cutoff > hi:  # a first summary, or one long after the last: start afresh, at the top
            lo = hi = cutoff
            self._set_summary_range(lo, hi)
        candidates = self.conn.execute(
            f"SELECT id, samples, min_ts, max_ts FROM chunks WHERE {UNCLAIMED} AND hold = 0 AND min_ts < ?"
            f" ORDER BY max_ts DESC LIMIT {_CANDIDATES}",
            (lo,),
        ).fetchall()
        if not candidates:
            return None
        top = lo - interval_ms  # chunks reaching into the interval just below lo are always needed
        ids: list[int] = []
        total = 0
        start = min(r[2] for r in candidates) // interval_ms * interval_ms
        for chunk_id, samples, _, max_ts in candidates:
            if ids and total + samples > max_samples and max_ts < top:
                start = min(top, (max_ts // interval_ms + 1) * interval_ms)
                break
            ids.append(chunk_id)
            total += samples
        else:
            if len(candidates) == _CANDIDATES:  # more may lie below: stop above the last one taken
                start = min(top, (candidates[-1][3] // interval_ms + 1) * interval_ms)
        return start, lo, ids

    def _set_summary_range(self, lo: int, hi: int) -> None:
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'summary_lo_ms'", (lo,))
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'summary_hi_ms'", (hi,))

    def _seal_summary(self, interval_ms: int, now_ms: int, start: int, end: int, ids: list[int]) -> Batch | None:
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(f"SELECT id, samples, data FROM chunks WHERE id IN ({marks})", ids).fetchall()
        picked: SeriesMap = {}
        with self.db.atomic():
            for chunk_id, samples, blob in rows:
                series = self._decode(chunk_id, samples, blob, now_ms)
                for labels, (stamps, values) in last_per_interval(series or {}, start, end, interval_ms).items():
                    append_series(picked, labels, stamps, values)
            picked = last_per_interval(picked, start, end, interval_ms)  # across overlapping chunks
            c = self.counters()
            lo = min(c["summary_lo_ms"], start) if c["summary_lo_ms"] else start
            hi = max(c["summary_hi_ms"], end)
            self._set_summary_range(lo, hi)
            if not picked:
                return None
            samples = sample_count(picked)
            lo_ts, hi_ts = time_range(picked)
            (seq,) = self.conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            seq += 1
            self.conn.execute("UPDATE meta SET value = ? WHERE key='next_seq'", (seq,))
            blob = self.codec.encode(picked)
            self.conn.execute(
                "INSERT INTO summaries (seq, samples, min_ts, max_ts, data) VALUES (?, ?, ?, ?, ?)",
                (seq, samples, lo_ts, hi_ts, blob),
            )
            self.conn.execute(
                "INSERT INTO batches (seq, sealed_ms, samples, summary_ms) VALUES (?, ?, ?, ?)",
                (seq, now_ms, samples, interval_ms),
            )
        return Batch(seq, now_ms, samples, [blob], hi_ts, interval_ms, lo_ts)
