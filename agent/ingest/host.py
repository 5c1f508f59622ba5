"""Host metrics into the buffer on an interval: CPU, memory, the buffer's disk, temperatures, network
(psutil), plus GPU readings from ``nvidia-smi`` (run each interval) and ``tegrastats`` (one
long-running child whose latest line is used), whichever of the two is installed.

psutil reads /proc and /sys: cheap, but still file I/O, so it runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from agent.ingest import gpu
from agent.ingest.sink import SampleSink
from backhaul.wire.series import SeriesMap

log = logging.getLogger(__name__)

_NVIDIA_TIMEOUT = 5.0


def psutil_readings(disk_path: Path) -> list[gpu.Reading]:
    """One pass over psutil (blocking: call it on a thread)."""
    out: list[gpu.Reading] = []
    for mode, seconds in psutil.cpu_times()._asdict().items():
        out.append(("backhaul_host_cpu_seconds_total", {"mode": mode}, float(seconds)))
    out.append(("backhaul_host_cpu_count", {}, float(psutil.cpu_count() or 0)))
    # Since the previous call (the previous interval); the first call after start reads 0.
    out.append(("backhaul_host_cpu_utilization_ratio", {}, psutil.cpu_percent(interval=None) / 100))
    for window, load in zip(("1", "5", "15"), os.getloadavg(), strict=True):
        out.append(("backhaul_host_load", {"window": window}, load))
    mem = psutil.virtual_memory()
    out.append(("backhaul_host_memory_total_bytes", {}, float(mem.total)))
    out.append(("backhaul_host_memory_available_bytes", {}, float(mem.available)))
    swap = psutil.swap_memory()
    out.append(("backhaul_host_swap_used_bytes", {}, float(swap.used)))
    with contextlib.suppress(OSError):
        disk = psutil.disk_usage(str(disk_path))
        out.append(("backhaul_host_disk_total_bytes", {"path": str(disk_path)}, float(disk.total)))
        out.append(("backhaul_host_disk_free_bytes", {"path": str(disk_path)}, float(disk.free)))
    sensors = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
    if sensors is not None:
        with contextlib.suppress(OSError):
            for chip, entries in sensors().items():
                for i, entry in enumerate(entries):
                    labels = {"chip": chip, "sensor": entry.label or str(i)}
                    out.append(("backhaul_host_temperature_celsius", labels, float(entry.current)))
    for nic, io in psutil.net_io_counters(pernic=True).items():
        if nic == "lo":
            continue
        out.append(("backhaul_host_network_receive_bytes_total", {"device": nic}, float(io.bytes_recv)))
        out.append(("backhaul_host_network_transmit_bytes_total", {"device": nic}, float(io.bytes_sent)))
    return out


def readings_to_series(readings: list[gpu.Reading], base: dict[str, str], ms: int) -> SeriesMap:
    out: SeriesMap = {}
    for name, labels, value in readings:
        key = tuple(sorted({**labels, **base, "__name__": name}.items()))
        out[key] = ([ms], [value])
    return out


class HostSampler:
    """Samples the host (and its GPUs) every ``interval`` seconds and commits the readings.

    Args:
        sink: where samples go.
        disk_path: the folder whose filesystem is reported (the buffer's).
        interval: seconds between samples.
        labels: labels for every sample (job and instance).
        nvidia_smi: program name or path ("" = never).
        tegrastats: program name or path ("" = never).
        clock: wall clock in seconds.
    """

    def __init__(
        self,
        sink: SampleSink,
        disk_path: Path,
        interval: float,
        labels: dict[str, str],
        nvidia_smi: str = "nvidia-smi",
        tegrastats: str = "tegrastats",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._disk = disk_path
        self._interval = interval
        self._labels = labels
        self._nvidia = shutil.which(nvidia_smi) if nvidia_smi else None
        self._tegrastats = shutil.which(tegrastats) if tegrastats else None
        self._clock = clock
        self._tegra_latest: list[gpu.Reading] = []
        self._tegra_proc: asyncio.subprocess.Process | None = None

    async def run(self) -> None:
        """Sample until cancelled, at a fixed rate (the time a pass takes is not added to the interval)."""
        tegra = asyncio.create_task(self._follow_tegrastats(), name="tegrastats") if self._tegrastats else None
        try:
            next_at = time.monotonic()
            while True:
                try:
                    await self.sample_once()
                except Exception:  # one bad pass (a sensor driver, psutil) must not end host metrics
                    log.exception("host metrics pass failed")
                next_at += self._interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic() - self._interval)  # after a stall, skip, do not burst
        finally:
            if tegra is not None:
                tegra.cancel()
                await asyncio.gather(tegra, return_exceptions=True)

    async def sample_once(self) -> SeriesMap:
        ms = int(self._clock() * 1000)
        readings = await asyncio.to_thread(psutil_readings, self._disk)
        if self._nvidia:
            readings += await self._nvidia_smi()
        readings += self._tegra_latest
        series = readings_to_series(readings, self._labels, ms)
        await self._sink.commit("host", series)
        return series

    async def _nvidia_smi(self) -> list[gpu.Reading]:
        assert self._nvidia is not None
        try:
            proc = await asyncio.create_subprocess_exec(
                self._nvidia, *gpu.NVIDIA_ARGS, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            log.warning("nvidia-smi: %s", exc)
            return []
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), _NVIDIA_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("nvidia-smi did not answer within %s s", _NVIDIA_TIMEOUT)
            return []
        if proc.returncode != 0:
            log.warning("nvidia-smi exited with %s", proc.returncode)
            return []
        return gpu.parse_nvidia_smi(out.decode(errors="replace"))

    async def _follow_tegrastats(self) -> None:
        """Keep one tegrastats running and remember its latest line's readings."""
        assert self._tegrastats is not None
        interval_ms = str(max(100, int(self._interval * 1000)))
        proc = await asyncio.create_subprocess_exec(
            self._tegrastats,
            "--interval",
            interval_ms,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._tegra_proc = proc
        assert proc.stdout is not None
        try:
            async for raw in proc.stdout:
                self._tegra_latest = gpu.parse_tegrastats(raw.decode(errors="replace"))
            log.warning("tegrastats exited with %s", await proc.wait())
        finally:
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 2)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
