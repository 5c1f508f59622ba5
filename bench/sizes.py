"""Wire and disk sizes (figures 1 and 2 of the foundation benchmark), as jobs on a process pool.

Each job rebuilds the same workload from its :class:`~bench.workload.WorkloadSpec` and reports its
progress through a shared array of rounds done, which the parent's progress line reads.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cramjam
import zstandard

from agent.buffer.store import BufferStore
from agent.uplink.tables import TableRefs
from agent.uplink.transport import TABLE_REFS_MAX_BODY
from backhaul import __version__
from backhaul.wire import batch as batchfmt
from backhaul.wire import remote_write as rw
from bench.buffer import AGENT_DEFAULT_TARGET_SAMPLES, db_bytes, open_store, write_offline
from bench.progress import Progress
from bench.servers import DEVICE
from bench.workload import INTERVAL_MS, Workload, WorkloadSpec

MAX_MERGE_SAMPLES = 4_000_000  # caps one merged chunk's memory (a 1 h window at 10k series is 7.2M)

_counters: Any = None  # multiprocessing.Array of rounds done per job, inherited by the workers


def _init_worker(counters: Any) -> None:
    global _counters
    _counters = counters
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _tick(job: int, done: int) -> None:
    if _counters is not None:
        _counters[job] = done


def _rounds_with_progress(w: Workload, job: int) -> Iterator[tuple[int, Any]]:
    for i, item in enumerate(w.rounds()):
        yield item
        if i % 10 == 0:
            _tick(job, i)
    _tick(job, w.n_rounds)


def job_references(spec: WorkloadSpec, windows_ms: list[int], job: int) -> dict[str, Any]:
    """Prometheus-style remote write of each scrape as it arrives, and zstd variants of it."""
    w = spec.build()
    z1 = zstandard.ZstdCompressor(level=1)
    z3 = zstandard.ZstdCompressor(level=3)
    out: dict[str, Any] = {"snappy_500": 0, "requests_500": 0, "snappy_2000": 0, "requests_2000": 0}
    out |= {"protobuf": 0, "zstd1": 0, "zstd3": 0}
    # Per window: the raw protobuf of all its requests, compressed as one zstd-3 frame.
    per_window: dict[int, dict[str, Any]] = {wm: {"bytes": 0, "open": None, "rounds": 0} for wm in windows_ms}
    samples = 0
    for _base, series in _rounds_with_progress(w, job):
        samples += sum(len(ts) for ts, _ in series.values())
        bodies500 = rw.encode(series, 500)
        out["snappy_500"] += sum(map(len, bodies500))
        out["requests_500"] += len(bodies500)
        bodies = rw.encode(series, 2000)
        out["snappy_2000"] += sum(map(len, bodies))
        out["requests_2000"] += len(bodies)
        for body in bodies:
            raw = bytes(cramjam.snappy.decompress_raw(body))
            out["protobuf"] += len(raw)
            out["zstd1"] += len(z1.compress(raw))
            out["zstd3"] += len(z3.compress(raw))
            for state in per_window.values():
                if state["open"] is None:
                    state["open"] = zstandard.ZstdCompressor(level=3).compressobj()
                state["bytes"] += len(state["open"].compress(raw))
        for wm, state in per_window.items():
            state["rounds"] += 1
            if state["rounds"] * INTERVAL_MS >= wm:
                state["bytes"] += len(state["open"].flush())
                state["open"], state["rounds"] = None, 0
    for state in per_window.values():
        if state["open"] is not None:
            state["bytes"] += len(state["open"].flush())
    out["window_zstd3"] = {str(wm): s["bytes"] for wm, s in per_window.items()}
    out["samples"] = samples
    return out


def job_window(spec: WorkloadSpec, window_ms: int, tmp: str, job: int) -> dict[str, Any]:
    """Batches as the agent seals them: one append per scrape, one claim per window."""
    w = spec.build()
    per_window = w.n_series * max(1, window_ms // INTERVAL_MS)
    target = min(MAX_MERGE_SAMPLES, max(AGENT_DEFAULT_TARGET_SAMPLES, per_window))
    batches = wire = samples = chunks = 0
    # What the agent's transport sends to a collector that keeps series tables: the first batch
    # carries them, later chunks with a known table go without it.
    tables = TableRefs()
    tables.supported = True
    by_reference = 0
    pending = 0
    last = 0

    def seal(store: BufferStore, now_ms: int) -> None:
        nonlocal batches, wire, samples, chunks, by_reference
        batch = store.claim(1 << 40, now_ms, report_losses=False)
        assert batch is not None
        header = batchfmt.BatchHeader(
            device=DEVICE,
            buffer_id=store.buffer_id,
            seq=batch.seq,
            sent_at_ms=now_ms,
            samples=batch.samples,
            agent_version=__version__,
        )
        body = batchfmt.encode(header, batch.chunks)
        wire += len(body)
        if sum(len(c) for c in batch.chunks) <= TABLE_REFS_MAX_BODY:  # as the agent's transport does
            sent_header, sent, digests = tables.rewrite(header, batch.chunks)
            tables.acknowledged(digests)
            by_reference += len(batchfmt.encode(sent_header, sent))
        else:
            by_reference += len(body)
        samples += batch.samples
        chunks += len(batch.chunks)
        batches += 1
        store.ack(batch.seq, 0)

    with open_store(Path(tmp) / f"window-{window_ms}.db", target) as store:
        for base, series in _rounds_with_progress(w, job):
            store.append(series, 0, base)
            pending += 1
            last = base
            if pending * INTERVAL_MS >= window_ms:
                seal(store, base + INTERVAL_MS)
                pending = 0
        if pending:
            seal(store, last + INTERVAL_MS)  # the tail the agent would send at the next tick
    return {
        "window_ms": window_ms,
        "target_samples": target,
        "batches": batches,
        "chunks": chunks,
        "bytes": wire,
        "bytes_by_reference": by_reference,
        "samples": samples,
    }


def job_disk(spec: WorkloadSpec, tmp: str, job: int) -> dict[str, Any]:
    """The buffer during an outage: one chunk per scrape, compacted on the agent's 30 s timer."""
    w = spec.build()
    path = Path(tmp) / "disk.db"
    with open_store(path) as store:
        write_offline(store, _rounds_with_progress(w, job))
        (page_size,) = store.conn.execute("PRAGMA page_size").fetchone()
        (free_pages,) = store.conn.execute("PRAGMA freelist_count").fetchone()
        wal = Path(f"{path}-wal")
        result = {
            "samples": store.totals.samples,
            "chunks": store.totals.chunks,
            "chunk_bytes": store.totals.bytes,
            "file_bytes": db_bytes(path),
            "db_bytes": path.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "freelist_bytes": page_size * free_pages,
        }
    result["file_bytes_after_close"] = db_bytes(path)
    return result


def run_size_jobs(spec: WorkloadSpec, windows_ms: list[int], progress: Progress) -> dict[str, Any]:
    """Run the reference, per-window and disk jobs in parallel, one process per core."""
    names = ["references", *(f"window {window_name(wm)}" for wm in windows_ms), "disk"]
    counters = mp.get_context("fork").Array("i", len(names), lock=False)
    n_rounds = Workload(spec.series, spec.minutes, spec.start_ms).n_rounds
    total = n_rounds * len(names)
    progress.set(
        "wire & disk sizes:",
        lambda: (
            f"{sum(counters)}/{total} scrape rounds replayed across {len(names)} jobs "
            f"({', '.join(n for i, n in enumerate(names) if 0 < counters[i] < n_rounds) or 'starting'})"
        ),
    )
    with tempfile.TemporaryDirectory(prefix="bench-sizes-") as tmp:
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(
            os.cpu_count() or 2, mp_context=ctx, initializer=_init_worker, initargs=(counters,)
        ) as pool:
            # Longest jobs first, so the pool does not end on one long job.
            refs = pool.submit(job_references, spec, windows_ms, 0)
            wins = {
                wm: pool.submit(job_window, spec, wm, tmp, i + 1) for i, wm in reversed(list(enumerate(windows_ms)))
            }
            disk = pool.submit(job_disk, spec, tmp, len(names) - 1)
            return {
                "references": refs.result(),
                "windows": [wins[wm].result() for wm in windows_ms],
                "disk": disk.result(),
            }


def window_name(ms: int) -> str:
    return f"{ms // 3_600_000} h" if ms >= 3_600_000 else f"{ms // 60_000} min" if ms >= 60_000 else f"{ms // 1000} s"
