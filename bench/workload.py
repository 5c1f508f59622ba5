"""A deterministic, realistic scrape workload: node_exporter plus an inference server, every 5 s.

The node_exporter target replays a real recording (bench/fixtures: two scrapes of Debian's
node_exporter 1.5.0, 10 s apart): its series, labels and values are real, and each series moves the
way it moved between the two scrapes. The inference server is modelled (below) on the metric
families inference servers and DCGM export.

One *replica* is one edge host: a node_exporter target (``job="node"``) and an inference-server
target (``job="inference"``), about 1,000 series together, including the ``up``/``scrape_*`` series
Prometheus adds per target. More series means more replicas (``instance`` 127.0.0.2, .3, ...).

Dynamics follow what the real exporters produce, because that is what compression feeds on:
counters rise by varying increments (multiples of 0.01 s for CPU time, integers elsewhere), gauges
random-walk in their natural quantum (4 KiB pages, whole degrees ...), a good share never changes,
and a few series are pure noise (scrape and collector durations). Timestamps are scrape start times:
a fixed per-target phase within the interval plus a few ms of jitter, now and then a GC-sized stall.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from backhaul.wire.chunk import decimal_scale
from backhaul.wire.series import Labels, SeriesMap

INTERVAL_MS = 5_000
SEED = 20240229

Step = Callable[[float, int], float]  # (previous value, timestamp ms) -> new value


@dataclass
class Series:
    labels: Labels
    value: float
    step: Step | None  # None: constant


@dataclass
class Target:
    """One scrape target: its series and the per-scrape hooks that keep families consistent."""

    job: str
    instance: str
    phase_ms: int
    series: list[Series] = field(default_factory=list)
    # Called once per scrape before the plain series step (histograms, correlated counters).
    hooks: list[Callable[[int], None]] = field(default_factory=list)


def _labels(name: str, target: tuple[str, str], /, **extra: str) -> Labels:
    # Prometheus drops empty-valued labels at scrape time, so they never reach remote write.
    pairs = [("__name__", name), ("job", target[0]), ("instance", target[1]), *extra.items()]
    return tuple(sorted((k, v) for k, v in pairs if v))


class _Builder:
    """Helpers that create series with a given kind of dynamics, all drawing from one RNG."""

    def __init__(self, rng: random.Random, target: Target) -> None:
        self.rng = rng
        self.t = target
        self.key = (target.job, target.instance)

    def add(self, name: str, value: float, step: Step | None = None, /, **labels: str) -> Series:
        s = Series(_labels(name, self.key, **labels), float(value), step)
        self.t.series.append(s)
        return s

    def const(self, name: str, value: float, /, **labels: str) -> Series:
        return self.add(name, value, None, **labels)

    def counter_f(self, name: str, per_s: float, quantum: float = 0.01, start: float = 0, **labels: str) -> Series:
        """Float counter (seconds): increments vary around ``per_s`` and are rounded to ``quantum``."""
        rng = self.rng
        digits = _digits(quantum)

        def step(v: float, _ts: int) -> float:
            inc = max(0.0, rng.gauss(per_s * 5, per_s * 5 * 0.3))
            return round(v + round(inc / quantum) * quantum, digits)

        return self.add(name, start or round(rng.uniform(1e3, 1e6) * per_s, digits), step, **labels)

    def counter_i(self, name: str, per_s: float, start: float | None = None, **labels: str) -> Series:
        """Integer counter; low rates make it rise only now and then (errors, retransmits ...)."""
        rng = self.rng
        mean = per_s * 5

        def step(v: float, _ts: int) -> float:
            if mean < 1:
                return v + (1 if rng.random() < mean else 0)
            return v + max(0, round(rng.gauss(mean, math.sqrt(mean) + mean * 0.2)))

        return self.add(name, start if start is not None else round(rng.uniform(1e4, 1e6) * per_s), step, **labels)

    def walk(
        self,
        name: str,
        value: float,
        sd: float,
        lo: float,
        hi: float,
        quantum: float = 1.0,
        p: float = 1.0,
        **labels: str,
    ) -> Series:
        """Gauge random walk in steps of ``quantum``, moving on a fraction ``p`` of scrapes."""
        rng = self.rng
        digits = _digits(quantum)

        def step(v: float, _ts: int) -> float:
            if p < 1 and rng.random() >= p:
                return v
            nv = min(hi, max(lo, v + rng.gauss(0, sd)))
            return round(round(nv / quantum) * quantum, digits)

        return self.add(name, round(round(value / quantum) * quantum, digits), step, **labels)

    def noise(self, name: str, mean: float, **labels: str) -> Series:
        """Pure noise around ``mean``: durations measured per scrape, in nanoseconds as Go measures them
        and printed as float64(ns) / 1e9, so a short decimal but with no pattern from one scrape to the next."""
        rng = self.rng
        return self.add(name, mean, lambda _v, _ts: round(mean * rng.lognormvariate(0, 0.35), 9), **labels)


def _digits(quantum: float) -> int:
    """Fractional digits of a quantum: the exporter prints such values as short decimals."""
    return max(0, -math.floor(math.log10(quantum)))


def _node_exporter(rng: random.Random, instance: str) -> Target:
    t = Target("node", instance, rng.randrange(INTERVAL_MS))
    b = _Builder(rng, t)
    cpus = [str(i) for i in range(8)]
    # CPU time: the busy share differs per mode; irq and steal stay flat on this kind of host.
    modes = {"idle": 0.72, "iowait": 0.01, "irq": 0.0, "nice": 0.0, "softirq": 0.004, "steal": 0.0, "system": 0.06}
    modes["user"] = 0.2
    for cpu in cpus:
        for mode, share in modes.items():
            if share == 0:
                b.const("node_cpu_seconds_total", round(rng.uniform(0, 50), 2), cpu=cpu, mode=mode)
            else:
                b.counter_f("node_cpu_seconds_total", share, cpu=cpu, mode=mode)
        for mode in ("nice", "user"):
            b.const("node_cpu_guest_seconds_total", 0, cpu=cpu, mode=mode)
        b.walk("node_cpu_scaling_frequency_hertz", 1.5e9, 2e8, 4.2e8, 2.2e9, quantum=1e3, cpu=cpu)
        b.const("node_cpu_scaling_frequency_max_hertz", 2.2e9, cpu=cpu)
        b.const("node_cpu_scaling_frequency_min_hertz", 4.2e8, cpu=cpu)
        b.counter_f("node_schedstat_running_seconds_total", 0.28, quantum=1e-9, cpu=cpu)
        b.counter_f("node_schedstat_waiting_seconds_total", 0.03, quantum=1e-9, cpu=cpu)
        b.counter_i("node_schedstat_timeslices_total", 900, cpu=cpu)
        b.counter_i("node_softnet_processed_total", 120, cpu=cpu)
        b.const("node_softnet_dropped_total", 0, cpu=cpu)
        b.counter_i("node_softnet_times_squeezed_total", 0.02, cpu=cpu)
    b.const("node_cpu_info", 1, cpu="0", core="0", family="", model="", model_name="ARMv8 Processor rev 1", package="0")

    page = 4096.0
    total = 16 * 1024**3
    mem_walk = {
        "MemFree": 3.1e9, "MemAvailable": 9.8e9, "Buffers": 2.1e8, "Cached": 6.2e9, "SwapCached": 0,
        "Active": 7.4e9, "Inactive": 4.9e9, "Active_anon": 4.1e9, "Inactive_anon": 3.3e8, "Active_file": 3.3e9,
        "Inactive_file": 4.6e9, "Dirty": 2.4e6, "Writeback": 0, "AnonPages": 4.4e9, "Mapped": 1.1e9,
        "Shmem": 2.8e8, "KReclaimable": 3.9e8, "Slab": 6.1e8, "SReclaimable": 3.9e8, "SUnreclaim": 2.2e8,
        "KernelStack": 1.9e7, "PageTables": 4.8e7, "Committed_AS": 1.21e10, "AnonHugePages": 1.2e9,
        "NvMapMemUsed": 2.1e9,
    }  # fmt: skip
    for key, value in mem_walk.items():
        b.walk(f"node_memory_{key}_bytes", value, max(value * 2e-4, page), 0, total, quantum=page)
    mem_const = {
        "MemTotal": total, "SwapTotal": 8 * 1024**3, "SwapFree": 8 * 1024**3, "Unevictable": 0, "Mlocked": 0,
        "NFS_Unstable": 0, "Bounce": 0, "WritebackTmp": 0, "CommitLimit": 1.66e10, "VmallocTotal": 2.6e14,
        "VmallocUsed": 8.2e7, "VmallocChunk": 0, "Percpu": 1.2e6, "HardwareCorrupted": 0, "ShmemHugePages": 0,
        "ShmemPmdMapped": 0, "FileHugePages": 0, "FilePmdMapped": 0, "CmaTotal": 5.4e8, "CmaFree": 5.1e8,
        "Hugepagesize": 2097152, "Hugetlb": 0,
    }  # fmt: skip
    for key, value in mem_const.items():
        b.const(f"node_memory_{key}_bytes", value)
    for key in ("HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp"):
        b.const(f"node_memory_{key}", 0)

    mounts = [
        ("/dev/nvme0n1p1", "ext4", "/", 4.6e11),
        ("/dev/nvme0n1p2", "ext4", "/var/lib/backhaul", 2.0e10),
        ("/dev/mmcblk0p1", "vfat", "/boot/firmware", 5.3e8),
        ("tmpfs", "tmpfs", "/run", 1.6e9),
        ("tmpfs", "tmpfs", "/dev/shm", 8.1e9),
        ("tmpfs", "tmpfs", "/run/user/1000", 1.6e9),
        ("overlay", "overlay", "/var/lib/docker/overlay2/merged", 4.6e11),
    ]
    for device, fstype, mount, size in mounts:
        fs = {"device": device, "fstype": fstype, "mountpoint": mount}
        free = size * rng.uniform(0.2, 0.9)
        moving = fstype != "vfat"
        b.const("node_filesystem_size_bytes", size, **fs)
        if moving:
            b.walk("node_filesystem_free_bytes", free, 1e6, 0, size, quantum=page, p=0.6, **fs)
            b.walk("node_filesystem_avail_bytes", free * 0.95, 1e6, 0, size, quantum=page, p=0.6, **fs)
            b.walk("node_filesystem_files_free", size / 16384, 8, 0, size / 4096, p=0.3, **fs)
        else:
            b.const("node_filesystem_free_bytes", free, **fs)
            b.const("node_filesystem_avail_bytes", free, **fs)
            b.const("node_filesystem_files_free", 0, **fs)
        b.const("node_filesystem_files", size // 16384, **fs)
        b.const("node_filesystem_readonly", 0, **fs)
        b.const("node_filesystem_device_error", 0, **fs)

    netdevs = {"lo": 2e4, "eth0": 2.5e5, "wlan0": 1.2e3, "docker0": 3e3, "can0": 0.0, "l4tbr0": 0.0, "usb0": 0.0}
    for dev, bps in netdevs.items():
        up = bps > 0
        for direction in ("receive", "transmit"):
            rate = bps * (0.3 if direction == "transmit" else 1.0)
            if up:
                b.counter_i(f"node_network_{direction}_bytes_total", rate, device=dev)
                b.counter_i(f"node_network_{direction}_packets_total", max(rate / 900, 0.5), device=dev)
                b.counter_i(f"node_network_{direction}_errs_total", 0.001 if dev == "wlan0" else 0, device=dev)
                b.counter_i(f"node_network_{direction}_drop_total", 0.01 if dev != "lo" else 0, device=dev)
            else:
                for what in ("bytes", "packets", "errs", "drop"):
                    b.const(f"node_network_{direction}_{what}_total", 0, device=dev)
            for what in ("fifo", "compressed"):
                b.const(f"node_network_{direction}_{what}_total", 0, device=dev)
        b.counter_i("node_network_receive_multicast_total", 0.05 if up else 0, device=dev)
        b.const("node_network_receive_frame_total", 0, device=dev)
        b.const("node_network_transmit_colls_total", 0, device=dev)
        b.const("node_network_transmit_carrier_total", 0, device=dev)
        b.const("node_network_up", 1 if up else 0, device=dev)
        b.const("node_network_carrier", 1 if up else 0, device=dev)
        b.const("node_network_mtu_bytes", 65536 if dev == "lo" else 1500, device=dev)
        b.const("node_network_speed_bytes", 125000000 if dev == "eth0" else -1, device=dev)
        b.const("node_network_transmit_queue_length", 1000, device=dev)
        b.const("node_network_iface_id", len(dev), device=dev)
        b.const("node_network_flags", 4099 if up else 4098, device=dev)
        b.const("node_network_carrier_changes_total", 2, device=dev)
        b.const(
            "node_network_info", 1, device=dev, address=f"00:04:4b:e5:{len(dev):02x}:01", broadcast="ff:ff:ff:ff:ff:ff",
            duplex="full", ifalias="", operstate="up" if up else "down",
        )  # fmt: skip

    for dev, busy in (("nvme0n1", 1.0), ("mmcblk0", 0.02), ("zram0", 0.1)):
        b.counter_i("node_disk_reads_completed_total", 4 * busy, device=dev)
        b.counter_i("node_disk_reads_merged_total", 0.5 * busy, device=dev)
        b.counter_i("node_disk_read_bytes_total", 6e4 * busy, device=dev)
        b.counter_f("node_disk_read_time_seconds_total", 0.002 * busy, quantum=0.001, device=dev)
        b.counter_i("node_disk_writes_completed_total", 12 * busy, device=dev)
        b.counter_i("node_disk_writes_merged_total", 6 * busy, device=dev)
        b.counter_i("node_disk_written_bytes_total", 2.4e5 * busy, device=dev)
        b.counter_f("node_disk_write_time_seconds_total", 0.01 * busy, quantum=0.001, device=dev)
        b.walk("node_disk_io_now", 0, 0.7, 0, 8, p=0.2, device=dev)
        b.counter_f("node_disk_io_time_seconds_total", 0.012 * busy, quantum=0.001, device=dev)
        b.counter_f("node_disk_io_time_weighted_seconds_total", 0.015 * busy, quantum=0.001, device=dev)
        b.const("node_disk_discards_completed_total", 0, device=dev)
        b.const("node_disk_discards_merged_total", 0, device=dev)
        b.const("node_disk_discarded_sectors_total", 0, device=dev)
        b.const("node_disk_discard_time_seconds_total", 0, device=dev)
        b.counter_i("node_disk_flush_requests_total", 0.4 * busy, device=dev)
        b.counter_f("node_disk_flush_requests_time_seconds_total", 0.0005 * busy, quantum=0.001, device=dev)
        b.const("node_disk_info", 1, device=dev, major="259", minor="0", model="", path="", revision="", serial="")

    b.walk("node_load1", 1.8, 0.15, 0, 8, quantum=0.01)
    b.walk("node_load5", 1.7, 0.05, 0, 8, quantum=0.01)
    b.walk("node_load15", 1.6, 0.02, 0, 8, quantum=0.01)
    b.walk("node_procs_running", 2, 1, 1, 9)
    b.walk("node_procs_blocked", 0, 0.4, 0, 3, p=0.3)
    b.counter_i("node_context_switches_total", 7800)
    b.counter_i("node_intr_total", 5200)
    b.counter_i("node_forks_total", 4)
    b.const("node_boot_time_seconds", 1.708e9)
    b.add("node_time_seconds", 0.0, lambda _v, ts: ts / 1000 + rng.randrange(1000, 4000) / 1e6)
    b.walk("node_entropy_available_bits", 256, 0, 256, 256)
    b.const("node_entropy_pool_size_bits", 256)
    b.walk("node_filefd_allocated", 4320, 6, 3000, 9000)
    b.const("node_filefd_maximum", 9.223372036854776e18)
    b.walk("node_nf_conntrack_entries", 310, 4, 0, 65536)
    b.const("node_nf_conntrack_entries_limit", 65536)
    for key, rate in (("pgfault", 2400), ("pgmajfault", 0.2), ("pgpgin", 60), ("pgpgout", 240), ("pswpin", 0)):
        b.counter_i(f"node_vmstat_{key}", rate)
    b.counter_i("node_vmstat_pswpout", 0.0)
    b.const("node_vmstat_oom_kill", 0)
    netstat = {
        "Tcp_ActiveOpens": 1.2, "Tcp_PassiveOpens": 0.9, "Tcp_InSegs": 260, "Tcp_OutSegs": 240,
        "Tcp_RetransSegs": 0.3, "Tcp_InErrs": 0.0, "Tcp_OutRsts": 0.4, "Tcp_AttemptFails": 0.05,
        "Tcp_EstabResets": 0.1, "Udp_InDatagrams": 12, "Udp_OutDatagrams": 12, "Udp_InErrors": 0.0,
        "Udp_NoPorts": 0.02, "Udp_RcvbufErrors": 0.0, "Udp_SndbufErrors": 0.0, "UdpLite_InDatagrams": 0.0,
        "Icmp_InMsgs": 0.01, "Icmp_OutMsgs": 0.01, "Icmp_InErrors": 0.0, "Ip_Forwarding": 0.0,
        "IpExt_InOctets": 2.7e5, "IpExt_OutOctets": 8.1e4, "Ip6_InOctets": 310, "Ip6_OutOctets": 290,
        "TcpExt_ListenDrops": 0.0, "TcpExt_ListenOverflows": 0.0, "TcpExt_SyncookiesSent": 0.0,
        "TcpExt_SyncookiesRecv": 0.0, "TcpExt_SyncookiesFailed": 0.0, "TcpExt_TCPSynRetrans": 0.02,
        "TcpExt_TCPTimeouts": 0.05, "TcpExt_TCPOFOQueue": 0.2,
    }  # fmt: skip
    for key, rate in netstat.items():
        if rate == 0:
            b.const(f"node_netstat_{key}", rng.choice([0, 0, 0, 3, 17]))
        else:
            b.counter_i(f"node_netstat_{key}", rate)
    b.walk("node_netstat_Tcp_CurrEstab", 24, 1, 5, 200)
    for key, value in (("TCP_inuse", 18), ("TCP_orphan", 0), ("TCP_tw", 40), ("TCP_alloc", 30), ("UDP_inuse", 6)):
        b.walk(f"node_sockstat_{key}", value, 1.5, 0, 500)
    b.walk("node_sockstat_TCP_mem", 9, 1, 1, 100)
    b.walk("node_sockstat_TCP_mem_bytes", 36864, 4096, 4096, 409600, quantum=4096)
    b.walk("node_sockstat_UDP_mem", 4, 1, 1, 100)
    b.walk("node_sockstat_UDP_mem_bytes", 16384, 4096, 4096, 409600, quantum=4096)
    b.walk("node_sockstat_sockets_used", 640, 3, 100, 5000)
    for key in ("FRAG_inuse", "FRAG_memory", "RAW_inuse", "UDPLITE_inuse", "TCP6_inuse", "UDP6_inuse", "RAW6_inuse"):
        b.const(f"node_sockstat_{key}", rng.choice([0, 0, 1, 2]))
    for chip, sensors in (("thermal_thermal_zone0", 3), ("platform_tegra_soctherm", 4), ("nvme_nvme0", 2)):
        for i in range(sensors):
            sensor = f"temp{i + 1}"
            b.walk(
                "node_hwmon_temp_celsius", rng.uniform(38, 55), 0.25, 25, 95, quantum=0.001, chip=chip, sensor=sensor
            )
            b.const("node_hwmon_temp_crit_celsius", 105, chip=chip, sensor=sensor)
            b.const("node_hwmon_temp_max_celsius", 97, chip=chip, sensor=sensor)
        b.const("node_hwmon_chip_names", 1, chip=chip, chip_name=chip.split("_")[-1])
    for zone, kind in enumerate(("CPU-therm", "GPU-therm", "SOC0-therm", "SOC1-therm", "tj-therm")):
        b.walk("node_thermal_zone_temp", rng.uniform(40, 55), 0.3, 25, 95, quantum=0.001, zone=str(zone), type=kind)
    for key in ("cur", "max"):
        b.const(f"node_cooling_device_{key}_state", 0 if key == "cur" else 3, name="0", type="pwm-fan")
    b.const("node_power_supply_online", 1, power_supply="ac")
    b.walk("node_pressure_cpu_waiting_seconds_total", 0, 0, 0, 0)
    b.counter_f("node_pressure_io_waiting_seconds_total", 0.004, quantum=1e-6)
    b.counter_f("node_pressure_io_stalled_seconds_total", 0.002, quantum=1e-6)
    b.counter_f("node_pressure_memory_waiting_seconds_total", 0.0002, quantum=1e-6)
    b.counter_f("node_pressure_memory_stalled_seconds_total", 0.0001, quantum=1e-6)
    b.counter_i("node_timex_pps_calibration_total", 0)
    b.walk("node_timex_offset_seconds", 0, 2e-6, -1e-3, 1e-3, quantum=1e-9)
    b.walk("node_timex_frequency_adjustment_ratio", 1.0000023, 1e-8, 0.99, 1.01, quantum=1e-12, p=0.1)
    b.const("node_timex_sync_status", 1)
    b.const("node_timex_maxerror_seconds", 0.016)
    b.const("node_timex_estimated_error_seconds", 0)
    b.const("node_timex_status", 8193)
    b.const("node_timex_tick_seconds", 0.01)
    b.const("node_timex_tai_offset_seconds", 0)
    b.const("node_timex_loop_time_constant", 7)
    b.const("node_selinux_enabled", 0)
    b.const(
        "node_os_info", 1, build_id="", id="ubuntu", name="Ubuntu", pretty_name="Ubuntu 22.04.4 LTS", version="22.04"
    )
    b.const("node_os_version", 22.04, id="ubuntu", id_like="debian", name="Ubuntu")
    b.const(
        "node_uname_info", 1, domainname="(none)", machine="aarch64", nodename=f"edge-{instance.split(':')[0]}",
        release="5.15.136-tegra", sysname="Linux", version="#1 SMP PREEMPT Mon May 6 09:56:39 PDT 2024",
    )  # fmt: skip
    b.const("node_dmi_info", 1, board_vendor="NVIDIA", product_name="Jetson AGX Orin", system_vendor="NVIDIA")
    b.const("node_exporter_build_info", 1, branch="HEAD", goversion="go1.21.4", revision="7333465", version="1.7.0")
    b.const("node_textfile_scrape_error", 0)

    collectors = (
        "arp bcache bonding btrfs conntrack cpu cpufreq diskstats dmi edac entropy fibrechannel filefd filesystem "
        "hwmon infiniband ipvs loadavg mdadm meminfo netclass netdev netstat nfs nfsd nvme os powersupplyclass "
        "pressure rapl schedstat selinux sockstat softnet stat tapestats textfile thermal_zone time timex udp_queues "
        "uname vmstat xfs zfs"
    ).split()
    for c in collectors:
        b.const("node_scrape_collector_success", 0 if c in ("rapl", "edac") else 1, collector=c)
        b.noise("node_scrape_collector_duration_seconds", rng.choice([4e-5, 2e-4, 1e-3, 6e-3]), collector=c)

    _go_process_metrics(b, rss=2.4e7, threads=9)
    for code, rate in (("200", 0.2), ("500", 0), ("503", 0)):
        b.counter_i(
            "promhttp_metric_handler_requests_total", rate, start=rng.randrange(10_000) if rate else 0, code=code
        )
    b.walk("promhttp_metric_handler_requests_in_flight", 1, 0, 1, 1)
    b.const("promhttp_metric_handler_errors_total", 0, cause="encoding")
    b.const("promhttp_metric_handler_errors_total", 0, cause="gathering")
    _scrape_meta(b, len(t.series))
    return t


def _go_process_metrics(b: _Builder, rss: float, threads: int) -> None:
    """What every Go exporter exposes about itself (client_golang's default collectors)."""
    for q in ("0", "0.25", "0.5", "0.75", "1"):
        b.walk("go_gc_duration_seconds", 4e-5 * (1 + float(q) * 3), 3e-6, 1e-5, 1e-3, quantum=1e-9, p=0.2, quantile=q)
    b.counter_f("go_gc_duration_seconds_sum", 2e-5, quantum=1e-9)
    b.counter_i("go_gc_duration_seconds_count", 0.3)
    b.walk("go_goroutines", threads, 0.6, threads - 2, threads + 6)
    b.walk("go_threads", threads, 0.1, threads, threads + 2, p=0.05)
    b.const("go_info", 1, version="go1.21.4")
    for key, base in (("alloc_bytes", 3.2e6), ("heap_alloc_bytes", 3.2e6), ("heap_inuse_bytes", 4.8e6),
                      ("heap_idle_bytes", 5.1e6), ("heap_released_bytes", 3.0e6), ("stack_inuse_bytes", 7.5e5),
                      ("mspan_inuse_bytes", 9.6e4), ("mcache_inuse_bytes", 9600), ("next_gc_bytes", 4.4e6),
                      ("gc_sys_bytes", 5.3e6), ("other_sys_bytes", 1.1e6), ("sys_bytes", 1.9e7),
                      ("heap_sys_bytes", 1.0e7), ("buck_hash_sys_bytes", 1.46e6), ("stack_sys_bytes", 7.5e5),
                      ("mspan_sys_bytes", 1.3e5), ("mcache_sys_bytes", 15600)):  # fmt: skip
        moving = key.startswith(("alloc", "heap_alloc", "heap_inuse", "heap_idle", "heap_released", "next_gc"))
        if moving:
            b.walk(f"go_memstats_{key}", base, base * 0.05, base * 0.5, base * 2, quantum=8)
        else:
            b.walk(f"go_memstats_{key}", base, base * 0.01, base * 0.9, base * 1.2, quantum=8, p=0.02)
    b.counter_i("go_memstats_alloc_bytes_total", 6e5)
    b.counter_i("go_memstats_mallocs_total", 6000)
    b.counter_i("go_memstats_frees_total", 5990)
    b.counter_i("go_memstats_lookups_total", 0)
    b.walk("go_memstats_heap_objects", 21000, 900, 8000, 60000)
    b.walk("go_memstats_last_gc_time_seconds", 1.7e9, 0, 1.7e9, 1.7e9)
    b.counter_f("process_cpu_seconds_total", 0.004, quantum=0.01)
    b.walk("process_resident_memory_bytes", rss, 1e5, rss * 0.8, rss * 1.5, quantum=4096)
    b.walk("process_virtual_memory_bytes", rss * 30, 1e5, rss * 29, rss * 31, quantum=4096, p=0.05)
    b.const("process_virtual_memory_max_bytes", 1.8446744073709552e19)
    b.walk("process_open_fds", 9, 0.6, 7, 14)
    b.const("process_max_fds", 1048576)
    b.const("process_start_time_seconds", 1708123456.78)


def _scrape_meta(b: _Builder, scraped: int) -> None:
    """The series Prometheus itself adds for every target, and sends over remote write."""
    b.const("up", 1)
    b.noise("scrape_duration_seconds", 0.031 if b.t.job == "node" else 0.009)
    b.const("scrape_samples_scraped", scraped)
    b.const("scrape_samples_post_metric_relabeling", scraped)
    b.const("scrape_series_added", 0)


_BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf")


def _histogram(b: _Builder, name: str, rate: Callable[[], float], median_s: float, **labels: str) -> None:
    """A cumulative histogram fed by ``rate()`` events per second with log-normal durations."""
    rng = b.rng
    bounds = [float(le) for le in _BUCKETS]
    # The server has been up for a while: start from a plausible history, not from zero.
    past = round(rng.uniform(1e4, 1e6) * rate())
    history = [median_s * rng.lognormvariate(0, 0.6) for _ in range(200)]
    buckets = [
        b.const(f"{name}_bucket", round(past * sum(1 for d in history if d <= bound) / 200), le=le, **labels)
        for le, bound in zip(_BUCKETS, bounds, strict=True)
    ]
    total = b.const(f"{name}_sum", past * sum(history) / 200, **labels)
    count = b.const(f"{name}_count", buckets[-1].value, **labels)

    def hook(_ts: int) -> None:
        n = _poisson(rng, rate() * 5)
        if not n:
            return
        durations = [median_s * rng.lognormvariate(0, 0.6) for _ in range(min(n, 64))]
        scale = n / len(durations)  # sample at most 64 events per scrape; scale the rest in
        for i, bound in enumerate(bounds):
            buckets[i].value += round(sum(1 for d in durations if d <= bound) * scale)
        total.value += sum(durations) * scale
        count.value = buckets[-1].value

    b.t.hooks.append(hook)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _inference_server(rng: random.Random, instance: str) -> Target:
    t = Target("inference", instance, rng.randrange(INTERVAL_MS))
    b = _Builder(rng, t)
    models = {  # name: (requests/s, median latency s, tokens per request or 0)
        "yolov8n-int8": (24.0, 0.012, 0),
        "resnet50-fp16": (6.0, 0.021, 0),
        "whisper-small": (0.4, 0.9, 0),
        "llama-3.2-3b-q4": (0.25, 3.5, 180),
        "bge-small-en": (1.5, 0.03, 0),
        "paddleocr-v4": (2.0, 0.045, 0),
    }
    load = {"factor": 1.0}

    def drift(_ts: int) -> None:
        # Shared load level: all request rates follow it, so the counters move together.
        load["factor"] = min(2.0, max(0.2, load["factor"] + rng.gauss(0, 0.05)))

    t.hooks.append(drift)
    for model, (rps, median, tokens) in models.items():
        version = "1"
        ok = b.const("inference_requests_total", round(rng.uniform(1e4, 1e6) * rps), model=model, status="success")
        err = b.const("inference_requests_total", round(rng.uniform(0, 50)), model=model, status="error")
        b.const("inference_requests_total", 0, model=model, status="timeout")
        b.const("inference_model_info", 1, model=model, version=version, backend="tensorrt", precision="fp16")
        b.const("inference_model_load_timestamp_seconds", 1708123999.0 + len(model), model=model, version=version)
        b.const("inference_model_ready", 1, model=model, version=version)
        b.walk("inference_queue_size", 0, 1.2, 0, 32, model=model)
        b.walk("inference_batch_size", 4 if rps > 1 else 1, 0.8, 1, 8, p=0.3, model=model)
        _histogram(b, "inference_request_duration_seconds", lambda r=rps: r * load["factor"], median, model=model)
        _histogram(b, "inference_queue_duration_seconds", lambda r=rps: r * load["factor"], median / 8, model=model)
        prompt = gen = None
        if tokens:
            prompt = b.const("inference_prompt_tokens_total", round(rng.uniform(1e6, 1e8)), model=model)
            gen = b.const("inference_generation_tokens_total", round(rng.uniform(1e6, 1e8)), model=model)
            b.walk("inference_kv_cache_usage_ratio", 0.3, 0.05, 0, 1, quantum=1e-4, model=model)
            b.walk("inference_tokens_per_second", 28, 2.5, 5, 45, quantum=0.01, model=model)

        def count(_ts: int, r: float = rps, ok: Series = ok, err: Series = err, prompt=prompt, gen=gen) -> None:
            n = _poisson(rng, r * load["factor"] * 5)
            failed = 1 if rng.random() < 0.002 * n else 0
            ok.value += n - failed
            err.value += failed
            if prompt is not None and gen is not None and n:
                prompt.value += sum(rng.randrange(40, 900) for _ in range(n))
                gen.value += sum(rng.randrange(20, 400) for _ in range(n))

        t.hooks.append(count)

    for gpu in ("0",):
        g = {"gpu": gpu, "UUID": "GPU-5f3c1a2e-8d41-4b7e-9c0a-1f2e3d4c5b6a", "modelName": "Orin (nvgpu)"}
        b.walk("DCGM_FI_DEV_GPU_UTIL", 55, 12, 0, 100, **g)
        b.walk("DCGM_FI_DEV_MEM_COPY_UTIL", 18, 5, 0, 100, **g)
        b.walk("DCGM_FI_DEV_FB_USED", 11800, 60, 4000, 30000, **g)  # MiB, as DCGM reports
        b.walk("DCGM_FI_DEV_FB_FREE", 18500, 60, 1000, 30000, **g)
        b.const("DCGM_FI_DEV_FB_TOTAL", 30592, **g)
        b.walk("DCGM_FI_DEV_GPU_TEMP", 52, 0.8, 30, 90, **g)
        b.walk("DCGM_FI_DEV_MEMORY_TEMP", 49, 0.6, 30, 90, **g)
        b.walk("DCGM_FI_DEV_POWER_USAGE", 21.5, 2.2, 5, 60, quantum=0.001, **g)
        b.counter_i("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 21500, **g)  # mJ
        b.walk("DCGM_FI_DEV_SM_CLOCK", 1100, 90, 300, 1300, **g)
        b.walk("DCGM_FI_DEV_MEM_CLOCK", 3199, 0, 3199, 3199, **g)
        b.const("DCGM_FI_DEV_XID_ERRORS", 0, **g)
        b.const("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", 0, **g)
        b.walk("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.55, 0.08, 0, 1, quantum=1e-6, **g)
        b.walk("DCGM_FI_PROF_DRAM_ACTIVE", 0.21, 0.04, 0, 1, quantum=1e-6, **g)
        b.walk("inference_gpu_utilization_ratio", 0.55, 0.1, 0, 1, quantum=0.01, gpu=gpu)
        b.walk("inference_gpu_memory_used_bytes", 1.24e10, 5e7, 4e9, 3e10, quantum=1024**2, gpu=gpu)
        b.const("inference_gpu_memory_total_bytes", 3.2e10, gpu=gpu)
    # The server is a Python process: prometheus_client's default collectors.
    for gen_ in ("0", "1", "2"):
        b.counter_i("python_gc_objects_collected_total", [40, 4, 0.2][int(gen_)], generation=gen_)
        b.const("python_gc_objects_uncollectable_total", 0, generation=gen_)
        b.counter_i("python_gc_collections_total", [3, 0.3, 0.01][int(gen_)], generation=gen_)
    b.const("python_info", 1, implementation="CPython", major="3", minor="10", patchlevel="12", version="3.10.12")
    b.counter_f("process_cpu_seconds_total", 1.3, quantum=0.01)
    b.walk("process_resident_memory_bytes", 2.1e9, 2e6, 1.9e9, 2.6e9, quantum=4096)
    b.walk("process_virtual_memory_bytes", 2.4e10, 2e6, 2.3e10, 2.5e10, quantum=4096, p=0.1)
    b.walk("process_open_fds", 41, 1.5, 30, 80)
    b.const("process_max_fds", 1048576)
    b.const("process_start_time_seconds", 1708123999.12)
    _scrape_meta(b, len(t.series))
    return t


# Two real scrapes of Debian's prometheus-node-exporter 1.5.0, 10 s apart, on a 2-core VM.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORDED_NODE = ("node_exporter-1.5.0.a.prom", "node_exporter-1.5.0.b.prom")
RECORDED_GAP_S = 10.0
_COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


@functools.cache
def _recorded(names: tuple[str, str]) -> list[tuple[str, Labels, float, float, bool]]:
    """(name, labels, first value, second value, is a counter) for every series of the recording."""
    scrapes = []
    for name in names:
        text = (FIXTURES / name).read_text()
        found = {}
        for family in text_string_to_metric_families(text):
            counter = family.type in ("counter", "histogram", "summary")
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                found[key] = (sample.value, counter or sample.name.endswith(_COUNTER_SUFFIXES))
        scrapes.append(found)
    first, second = scrapes
    return [(n, labels, v, second[(n, labels)][0], c) for (n, labels), (v, c) in first.items() if (n, labels) in second]


def _recorded_node_exporter(rng: random.Random, instance: str) -> Target:
    """node_exporter replayed from a real recording: its series, label sets and values are real.

    What each series does per 5 s scrape follows what it did between the two recorded scrapes: a
    counter keeps its observed rate (increments vary by 30 %), a gauge that moved random-walks by the
    observed step, anything that did not move stays constant. Values keep the decimals the exporter
    printed (whole bytes, CPU seconds in hundredths, ...), as the real exporter would go on printing them.
    """
    t = Target("node", instance, rng.randrange(INTERVAL_MS))
    b = _Builder(rng, t)
    for name, labels, a, z, counter in _recorded(RECORDED_NODE):
        extra = {k: v for k, v in labels if k not in ("job", "instance")}
        if a == z or math.isnan(a) or math.isnan(z):
            b.const(name, z, **extra)
            continue
        digits = decimal_scale([a, z])
        per_scrape = (z - a) * INTERVAL_MS / 1000 / RECORDED_GAP_S
        if name.endswith("time_seconds") and abs(per_scrape * 1000 / INTERVAL_MS - 1) < 0.1:
            b.add(name, z, lambda _v, ts, d=digits: ts / 1000 if d is None else round(ts / 1000, d), **extra)
        elif counter:
            b.add(name, z, _counter_step(rng, per_scrape, digits), **extra)
        else:
            b.add(name, z, _walk_step(rng, abs(per_scrape), digits, nonnegative=min(a, z) >= 0), **extra)
    _scrape_meta(b, len(t.series))
    return t


def _counter_step(rng: random.Random, mean: float, digits: int | None) -> Step:
    def step(v: float, _ts: int) -> float:
        nv = v + max(0.0, rng.gauss(mean, abs(mean) * 0.3))
        return nv if digits is None else round(nv, digits)

    return step


def _walk_step(rng: random.Random, sd: float, digits: int | None, nonnegative: bool) -> Step:
    def step(v: float, _ts: int) -> float:
        nv = v + rng.gauss(0, sd)
        if nonnegative:
            nv = abs(nv)
        return nv if digits is None else round(nv, digits)

    return step


def replica_targets(rng: random.Random, replica: int) -> list[Target]:
    host = f"127.0.0.{replica + 1}"
    return [_recorded_node_exporter(rng, f"{host}:9100"), _inference_server(rng, f"{host}:8002")]


class Workload:
    """The scrapes of ``replicas`` hosts from ``start_ms`` on, one :class:`SeriesMap` per 5 s round.

    Every call of :meth:`rounds` replays the same samples (the RNG is re-seeded), so each
    measurement can stream the workload instead of holding an hour of 10k series in memory.
    """

    def __init__(self, series: int, minutes: float, start_ms: int, seed: int = SEED) -> None:
        self.seed = seed
        self.start_ms = start_ms - start_ms % INTERVAL_MS
        self.n_rounds = max(1, int(minutes * 60_000 // INTERVAL_MS))
        per_replica = len(self._targets(random.Random(seed), 1)[0].series) + len(
            self._targets(random.Random(seed), 1)[1].series
        )
        self.replicas = max(1, round(series / per_replica))
        self.labels = [s.labels for t in self._targets(random.Random(seed), self.replicas) for s in t.series]
        self.n_series = len(self.labels)
        if len(set(self.labels)) != self.n_series:
            raise AssertionError("workload has duplicate series")

    @staticmethod
    def _targets(rng: random.Random, replicas: int) -> list[Target]:
        return [t for r in range(replicas) for t in replica_targets(rng, r)]

    @property
    def samples(self) -> int:
        return self.n_series * self.n_rounds

    def rounds(self, limit: int | None = None) -> Iterator[tuple[int, SeriesMap]]:
        """Yield ``(round_start_ms, samples)`` for each scrape round, oldest first."""
        rng = random.Random(self.seed)
        targets = self._targets(rng, self.replicas)
        dyn = random.Random(self.seed + 1)  # jitter draws from its own stream
        for r in range(self.n_rounds if limit is None else min(limit, self.n_rounds)):
            base = self.start_ms + r * INTERVAL_MS
            out: SeriesMap = {}
            for t in targets:
                jitter = min(3, abs(round(dyn.gauss(0, 1.2))))
                if dyn.random() < 0.01:
                    jitter += dyn.randrange(5, 40)  # a GC pause or a slow target now and then
                ts = base + t.phase_ms + jitter
                for hook in t.hooks:
                    hook(ts)
                for s in t.series:
                    if s.step is not None:
                        s.value = s.step(s.value, ts)
                    out[s.labels] = ([ts], [s.value])
            yield base, out
