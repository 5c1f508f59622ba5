"""The collector benchmark's load: simulated devices, each an agent-like uploader sending real batches.

Every device sends the bench workload (bench/workload.py: node_exporter plus an inference server,
about 1,000 series, one scrape every 5 s) as an agent with ``batch_interval`` 10 s would after a
gap: batches of ``batch_rounds`` scrapes, one chunk each, one batch in flight per device, sequence
numbers from 1, the first batch with its series table and the others by reference once the collector
says it keeps tables (``X-Backhaul-Series-Tables``). The chunks are encoded once and shared by all
devices (each device is its own series at the collector: the device label tells them apart).

For the VictoriaMetrics reference the same samples, with the label the collector adds, go as
Prometheus remote-write requests of 2,000 samples.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from itertools import cycle

import aiohttp

from backhaul.wire import batch as batchfmt
from backhaul.wire import chunk as chunkfmt
from backhaul.wire import remote_write as rw
from backhaul.wire.series import SeriesMap, merge_into, sample_count, with_device_label
from bench.workload import WorkloadSpec
from harness import RW_HEADERS


@dataclass
class Batch:
    """One batch's chunk, with and without its table, and how many samples it holds."""

    full: bytes
    by_reference: bytes
    digest: str
    samples: int
    series: SeriesMap


@dataclass
class Load:
    """The batches every device sends, in order, and the series per device."""

    batches: list[Batch]
    n_series: int

    @property
    def samples_per_device(self) -> int:
        return sum(b.samples for b in self.batches)


def build_load(series: int, rounds: int, batch_rounds: int, start_ms: int) -> Load:
    """Encode the workload's ``rounds`` scrapes into batches of ``batch_rounds`` scrapes."""
    w = WorkloadSpec(series, rounds * 5 / 60, start_ms).build()
    codec = chunkfmt.Codec()
    batches: list[Batch] = []
    merged: SeriesMap = {}
    held = 0
    for _, scrape in w.rounds(rounds):
        merge_into(merged, scrape)
        held += 1
        if held == batch_rounds:
            raw = chunkfmt.encode(merged)
            table, stripped = chunkfmt.split_table(raw)
            batches.append(
                Batch(
                    codec.compress(raw),
                    codec.compress(stripped),
                    chunkfmt.table_digest(table),
                    sample_count(merged),
                    merged,
                )
            )
            merged, held = {}, 0
    return Load(batches, w.n_series)


@dataclass
class Driven:
    """What the load did: samples acknowledged, batch latencies, seconds, failures by status."""

    samples: int = 0
    batches: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def device_name(i: int) -> str:
    return f"bench-d{i:05d}"


def device_token(i: int) -> str:
    return f"bench-token-{i:05d}"


async def drive(urls: list[str], devices: int, load: Load, request_timeout: float = 120) -> Driven:
    """Every device uploads every batch, retrying on 5xx; requests go round robin over ``urls``
    (what a balancer in front of several instances does)."""
    out = Driven()
    targets = cycle(urls)
    connector = aiohttp.TCPConnector(limit=devices + 8)
    limit = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=limit) as session:

        async def device(i: int) -> None:
            name = device_name(i)
            auth = {"Authorization": f"Bearer {device_token(i)}", "Content-Type": batchfmt.CONTENT_TYPE}
            by_reference = False
            for seq, b in enumerate(load.batches, start=1):
                header = batchfmt.BatchHeader(device=name, buffer_id="bench", seq=seq, sent_at_ms=0, samples=b.samples)
                if by_reference:
                    header.table_refs = [b.digest]
                body = batchfmt.encode(header, [b.by_reference if by_reference else b.full])
                while True:
                    started = time.perf_counter()
                    async with session.post(f"{next(targets)}/api/v1/batches", data=body, headers=auth) as resp:
                        await resp.read()
                        status, keeps = resp.status, resp.headers.get(batchfmt.TABLES_HEADER) == "1"
                    if status == 200:
                        out.latencies.append(time.perf_counter() - started)
                        out.samples += b.samples
                        out.batches += 1
                        by_reference = keeps
                        break
                    out.failures[str(status)] = out.failures.get(str(status), 0) + 1
                    if status == 409:
                        by_reference = False  # the collector lost the table: the batch again, in full
                        header.table_refs = []
                        body = batchfmt.encode(header, [b.full])
                    elif status < 500:
                        raise RuntimeError(f"{name} batch {seq}: {status}")
                    else:
                        await asyncio.sleep(0.05)

        started = time.perf_counter()
        await asyncio.gather(*(device(i) for i in range(devices)))
        out.seconds = time.perf_counter() - started
    return out


def rw_bodies(load: Load, devices: int, device_label: str = "device_id") -> list[bytes]:
    """The same samples as remote-write requests of 2,000 samples, as the collector forwards them."""
    bodies: list[bytes] = []
    for i in range(devices):
        for b in load.batches:
            bodies += rw.encode(with_device_label(b.series, device_label, device_name(i)), 2000)
    return bodies


async def drive_rw(url: str, bodies: list[bytes], connections: int = 8, request_timeout: float = 120) -> Driven:
    """Push remote-write bodies over ``connections`` connections, retrying on 5xx."""
    out = Driven()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_timeout)) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                while True:
                    started = time.perf_counter()
                    async with session.post(url, data=body, headers=RW_HEADERS) as resp:
                        await resp.read()
                        status = resp.status
                    if status < 300:
                        out.latencies.append(time.perf_counter() - started)
                        out.batches += 1
                        break
                    out.failures[str(status)] = out.failures.get(str(status), 0) + 1
                    await asyncio.sleep(0.05)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        out.seconds = time.perf_counter() - started
    return out
