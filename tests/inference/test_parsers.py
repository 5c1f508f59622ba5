"""Parsers for scraped pages and GPU tools, against real formats (tests/fixtures/README.md says where from)."""

from __future__ import annotations

import pytest

from agent.ingest import gpu
from agent.ingest.scrape import parse_page
from agent.process import describe_exit
from backhaul.errors import ScrapeError
from backhaul.wire.series import Labels
from tests.inference.conftest import FIXTURES

BASE = {"job": "node", "instance": "127.0.0.1:9100"}


def readings(items: list[gpu.Reading]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in items}


def test_nvidia_smi_two_gpus() -> None:
    got = readings(gpu.parse_nvidia_smi((FIXTURES / "nvidia-smi-query.csv").read_text()))
    gpu0 = (("gpu", "0"), ("name", "NVIDIA A100-SXM4-40GB"), ("uuid", "GPU-1b5c3c1e-8a4f-3d4e-9f7a-2c6d1e0b9a11"))
    assert got["backhaul_gpu_utilization_ratio", gpu0] == pytest.approx(0.87)
    assert got["backhaul_gpu_memory_used_bytes", gpu0] == 31245 * 1024 * 1024
    assert got["backhaul_gpu_memory_total_bytes", gpu0] == 40960 * 1024 * 1024
    assert got["backhaul_gpu_power_watts", gpu0] == pytest.approx(312.45)
    assert got["backhaul_gpu_temperature_celsius", gpu0] == 64
    assert len({labels for _, labels in got}) == 2
    assert len(got) == 2 * 7


def test_nvidia_smi_skips_fields_it_cannot_read() -> None:
    got = readings(gpu.parse_nvidia_smi((FIXTURES / "nvidia-smi-query-na.csv").read_text()))
    names = {name for name, _ in got}
    assert "backhaul_gpu_power_watts" not in names  # "[N/A]" on this GeForce
    assert "backhaul_gpu_utilization_ratio" in names
    assert gpu.parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate with the driver.\n") == []


def test_tegrastats_orin() -> None:
    last = (FIXTURES / "tegrastats-orin.txt").read_text().splitlines()[-1]
    got = readings(gpu.parse_tegrastats(last))
    assert got["backhaul_jetson_memory_used_bytes", ()] == 2461 * 1024 * 1024
    assert got["backhaul_jetson_memory_total_bytes", ()] == 30536 * 1024 * 1024
    assert got["backhaul_jetson_gpu_utilization_ratio", ()] == pytest.approx(0.76)
    assert got["backhaul_jetson_emc_utilization_ratio", ()] == pytest.approx(0.09)
    cores = [k for k in got if k[0] == "backhaul_jetson_cpu_utilization_ratio"]
    assert len(cores) == 8  # four of the twelve are "off"
    assert got["backhaul_jetson_cpu_utilization_ratio", (("core", "0"),)] == pytest.approx(0.14)
    assert got["backhaul_jetson_cpu_frequency_hertz", (("core", "0"),)] == 1984e6
    assert got["backhaul_jetson_temperature_celsius", (("sensor", "tj"),)] == pytest.approx(47.781)
    assert got["backhaul_jetson_temperature_celsius", (("sensor", "GPU"),)] == pytest.approx(46.406)
    assert ("backhaul_jetson_temperature_celsius", (("sensor", "CV0"),)) not in got  # -256C: absent sensor
    assert got["backhaul_jetson_power_watts", (("rail", "VDD_GPU_SOC"),)] == pytest.approx(9.853)
    assert got["backhaul_jetson_power_watts", (("rail", "VIN_SYS_5V0"),)] == pytest.approx(4.437)


def test_tegrastats_nano_jetpack4() -> None:
    got = readings(gpu.parse_tegrastats((FIXTURES / "tegrastats-nano.txt").read_text()))
    assert got["backhaul_jetson_memory_used_bytes", ()] == 1216 * 1024 * 1024
    assert got["backhaul_jetson_gpu_utilization_ratio", ()] == 0
    assert len([k for k in got if k[0] == "backhaul_jetson_cpu_utilization_ratio"]) == 4
    assert got["backhaul_jetson_power_watts", (("rail", "POM_5V_IN"),)] == pytest.approx(2.072)
    assert got["backhaul_jetson_temperature_celsius", (("sensor", "thermal"),)] == pytest.approx(31.25)


TEXT_PAGE = """\
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 1234.5
node_cpu_seconds_total{cpu="0",mode="user"} 12.25 1700000000123
# TYPE requests counter
requests_total{job="from-the-app",instance=""} 7
requests_created{job="from-the-app",instance=""} 1.7e+09
# TYPE latency histogram
latency_bucket{le="0.1"} 1
latency_bucket{le="+Inf"} 2
latency_sum 0.3
latency_count 2
temperature NaN
"""


def test_text_format_gets_target_labels_keeps_timestamps_and_drops_created() -> None:
    series = parse_page(TEXT_PAGE, "text/plain", BASE, 1_800_000_000_000)
    by_name = {dict(k)["__name__"]: (dict(k), v) for k, v in series.items()}
    labels, _ = by_name["requests_total"]
    assert labels["job"] == "node" and labels["exported_job"] == "from-the-app"
    assert "exported_instance" not in labels  # an empty label is no label
    assert "requests_created" not in by_name
    user: Labels = (
        ("__name__", "node_cpu_seconds_total"),
        ("cpu", "0"),
        ("instance", "127.0.0.1:9100"),
        ("job", "node"),
    )
    user += (("mode", "user"),)
    assert series[tuple(sorted(user))] == ([1700000000123], [12.25])
    idle = tuple(sorted({**dict(user), "mode": "idle"}.items()))
    assert series[idle] == ([1_800_000_000_000], [1234.5])
    assert {"latency_bucket", "latency_sum", "latency_count"} <= set(by_name)
    assert by_name["temperature"][1][1][0] != by_name["temperature"][1][1][0]  # NaN survives


def test_openmetrics_page() -> None:
    page = (
        "# TYPE tokens counter\n"
        'tokens_total{model="m"} 42 1700000000.5\n'
        'tokens_created{model="m"} 1700000000 1700000000.5\n'
        "# TYPE build info\n"
        'build_info{version="1.2"} 1\n'
        "# EOF\n"
    )
    series = parse_page(page, "application/openmetrics-text", BASE, 0)
    assert series[(("__name__", "tokens_total"), ("instance", BASE["instance"]), ("job", "node"), ("model", "m"))] == (
        [1700000000500],
        [42.0],
    )
    assert {dict(k)["__name__"] for k in series} == {"tokens_total", "build_info"}


def test_garbage_page_is_a_scrape_error() -> None:
    with pytest.raises(ScrapeError):
        parse_page("this is { not metrics\n", "text/plain", BASE, 0)


def test_exit_descriptions() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "signal SIGKILL"


def test_the_example_config_describes_every_new_section(example_secrets: None) -> None:
    from agent.config import AgentSettings
    from backhaul.settings import load
    from tests.inference.conftest import ROOT

    settings = load(AgentSettings, ROOT / "examples" / "agent.toml")
    assert settings.inference.command[0].endswith("llama-server")
    assert settings.inference.metrics_url is not None
    assert settings.scrape.targets[0].job == "node" and settings.scrape.targets[0].labels == {"site": "plant-3"}
    assert settings.host.enabled and not settings.proxy.enabled
    assert settings.scrape.self_interval.total_seconds() == 15


def test_bad_inference_settings_name_the_field() -> None:
    from pydantic import ValidationError

    from agent.config import AgentSettings

    with pytest.raises(ValidationError, match="stop_grace must not exceed"):
        AgentSettings(device_id="d", shutdown_grace=5, inference={"command": ["x"], "stop_grace": 6})
    with pytest.raises(ValidationError, match=r"scrape\.targets\.0\.interval"):
        AgentSettings(device_id="d", scrape={"targets": [{"job": "a", "url": "http://x/metrics", "interval": 0}]})
    with pytest.raises(ValidationError, match=r"inference\.comand"):
        AgentSettings(device_id="d", inference={"comand": ["x"]})  # a typo is an error, not ignored
