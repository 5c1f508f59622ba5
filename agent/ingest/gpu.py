"""GPU readings: ``nvidia-smi`` (discrete NVIDIA GPUs) and ``tegrastats`` (Jetson boards).

The parsers are pure functions over the tools' text output (tested against recorded output in
tests/fixtures); running the tools is the host sampler's job. A reading is ``(name, labels, value)``.
"""

from __future__ import annotations

import re

Reading = tuple[str, dict[str, str], float]

# Asked of nvidia-smi; the order is the CSV's column order.
NVIDIA_FIELDS = (
    "index",
    "name",
    "uuid",
    "utilization.gpu",
    "utilization.memory",
    "memory.used",
    "memory.total",
    "power.draw",
    "power.limit",
    "temperature.gpu",
)
NVIDIA_ARGS = ("--query-gpu=" + ",".join(NVIDIA_FIELDS), "--format=csv,noheader,nounits")

_MIB = 1024 * 1024
# field -> (metric name, scale); values nvidia-smi cannot give read "[N/A]" or "[Not Supported]" and are skipped
_NVIDIA_METRICS = {
    "utilization.gpu": ("backhaul_gpu_utilization_ratio", 0.01),
    "utilization.memory": ("backhaul_gpu_memory_utilization_ratio", 0.01),
    "memory.used": ("backhaul_gpu_memory_used_bytes", _MIB),
    "memory.total": ("backhaul_gpu_memory_total_bytes", _MIB),
    "power.draw": ("backhaul_gpu_power_watts", 1.0),
    "power.limit": ("backhaul_gpu_power_limit_watts", 1.0),
    "temperature.gpu": ("backhaul_gpu_temperature_celsius", 1.0),
}


def parse_nvidia_smi(text: str) -> list[Reading]:
    """Output of ``nvidia-smi`` with :data:`NVIDIA_ARGS`: one CSV line per GPU."""
    out: list[Reading] = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(NVIDIA_FIELDS):
            continue  # a warning line, or a GPU name with a comma nobody ships
        row = dict(zip(NVIDIA_FIELDS, cells, strict=True))
        labels = {"gpu": row["index"], "name": row["name"], "uuid": row["uuid"]}
        for field, (metric, scale) in _NVIDIA_METRICS.items():
            try:
                value = float(row[field])
            except ValueError:
                continue
            out.append((metric, labels, value * scale))
    return out


_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_CORE = re.compile(r"(\d+)%(?:@(\d+))?")
_FREQ = re.compile(r"\b(GR3D_FREQ|EMC_FREQ) (\d+)%")
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
# JetPack 5+: "VDD_IN 4309mW/4309mW"; JetPack 4: "POM_5V_IN 2072/2072" (milliwatts, current/average)
_RAIL = re.compile(r"\b((?:VDD|VIN|POM)_\w+) (\d+)(?:mW)?/(\d+)(?:mW)?\b")


def parse_tegrastats(line: str) -> list[Reading]:
    """One line of ``tegrastats`` output (any JetPack from 4 to 6)."""
    out: list[Reading] = []
    if m := _RAM.search(line):
        out.append(("backhaul_jetson_memory_used_bytes", {}, int(m[1]) * _MIB))
        out.append(("backhaul_jetson_memory_total_bytes", {}, int(m[2]) * _MIB))
    if m := _SWAP.search(line):
        out.append(("backhaul_jetson_swap_used_bytes", {}, int(m[1]) * _MIB))
        out.append(("backhaul_jetson_swap_total_bytes", {}, int(m[2]) * _MIB))
    if m := _CPU.search(line):
        for core, cell in enumerate(m[1].split(",")):
            c = _CORE.fullmatch(cell.strip())
            if c is None:
                continue  # "off": the core is offline
            out.append(("backhaul_jetson_cpu_utilization_ratio", {"core": str(core)}, int(c[1]) / 100))
            if c[2]:
                out.append(("backhaul_jetson_cpu_frequency_hertz", {"core": str(core)}, int(c[2]) * 1e6))
    for m in _FREQ.finditer(line):
        name = (
            "backhaul_jetson_gpu_utilization_ratio" if m[1] == "GR3D_FREQ" else "backhaul_jetson_emc_utilization_ratio"
        )
        out.append((name, {}, int(m[2]) / 100))
    for m in _TEMP.finditer(line):
        celsius = float(m[2])
        if celsius <= -256:
            continue  # tegrastats' marker for a sensor that is not there
        out.append(("backhaul_jetson_temperature_celsius", {"sensor": m[1]}, celsius))
    for m in _RAIL.finditer(line):
        out.append(("backhaul_jetson_power_watts", {"rail": m[1]}, int(m[2]) / 1000))
    return out
