"""OTLP/HTTP metrics: requests built by the real OpenTelemetry SDK (and sent by its real OTLP/HTTP
exporter), mapped to Prometheus series as the compatibility spec says."""

from __future__ import annotations

import gzip
import json
import math
import struct
import threading
from http.server import HTTPServer

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from backhaul.wire import TooLarge, Unsupported, WireError, otlp
from backhaul.wire import remote_write as rw
from backhaul.wire.histogram import Histogram
from backhaul.wire.metadata import Metadata
from tests.otlp_example import official_style_json
from tests.support import QuietHandler

RESOURCE = {
    "service.name": "infer",
    "service.namespace": "edge",
    "service.instance.id": "dev-7",
    "host.name": "jetson-1",
}
SCOPE = (("otel_scope_name", "vllm.metrics"), ("otel_scope_version", "0.6.0"))
IDENTITY = (("instance", "dev-7"), ("job", "edge/infer"))


def record(provider: MeterProvider) -> None:
    """What an inference server's instrumentation records: counters, a gauge, an up-down counter,
    a latency histogram with explicit buckets and a time-to-first-token exponential histogram."""
    meter = provider.get_meter("vllm.metrics", "0.6.0")
    meter.create_counter("requests", unit="{request}", description="Requests served.").add(
        3, {"model": "llama", "http.status_code": 200}
    )
    meter.create_counter("prompt.tokens", unit="{token}").add(1234, {"model": "llama"})
    latency = meter.create_histogram(
        "request.duration", unit="s", description="Latency.", explicit_bucket_boundaries_advisory=[0.1, 0.5, 1, 5]
    )
    for v in (0.01, 0.2, 0.2, 3.0, 9.0):
        latency.record(v, {"model": "llama"})
    ttft = meter.create_histogram("time_to_first_token", unit="ms")
    for v in (5, 12, 12.5, 80, 300, 300):
        ttft.record(v)
    meter.create_gauge("gpu.temperature", unit="Cel").set(61.5, {"gpu": "0"})
    meter.create_up_down_counter("queue.depth").add(4)


def provider_with(reader) -> MeterProvider:
    return MeterProvider(
        resource=Resource.create(RESOURCE),
        metric_readers=[reader],
        views=[
            View(instrument_name="time_to_first_token", aggregation=ExponentialBucketHistogramAggregation(max_size=40))
        ],
    )


def sdk_request():
    reader = InMemoryMetricReader()
    provider = provider_with(reader)
    record(provider)
    data = reader.get_metrics_data()
    assert data is not None  # the provider has recorded, so the reader has data
    request = encode_metrics(data)
    provider.shutdown()
    return request


def wide_limits() -> rw.Limits:
    return rw.Limits()


def check_inference_series(mapped: otlp.Mapped) -> None:
    d = mapped.decoded
    assert mapped.rejected == {} and mapped.points == 6
    values = {labels: vals for labels, (_, vals) in d.series.items()}

    def lb(name, *pairs):
        return tuple(sorted((("__name__", name), *pairs, *SCOPE, *IDENTITY)))

    llama = ("model", "llama")
    assert values[lb("requests_total", llama, ("http_status_code", "200"))] == [3.0]
    assert values[lb("prompt_tokens_total", llama)] == [1234.0]
    assert values[lb("gpu_temperature_celsius", ("gpu", "0"))] == [61.5]
    assert values[lb("queue_depth")] == [4.0]
    buckets = {dict(labels)["le"]: v for labels, v in values.items() if dict(labels)["__name__"].endswith("_bucket")}
    assert buckets == {"0.1": [1.0], "0.5": [3.0], "1": [3.0], "5": [4.0], "+Inf": [5.0]}
    assert values[lb("request_duration_seconds_count", llama)] == [5.0]
    assert values[lb("request_duration_seconds_sum", llama)] == [pytest.approx(12.41)]
    info = [labels for labels in values if dict(labels)["__name__"] == "target_info"]
    assert len(info) == 1 and dict(info[0])["host_name"] == "jetson-1" and dict(info[0])["job"] == "edge/infer"
    assert "service_name" not in dict(info[0])

    (ttft_labels,) = d.histograms
    assert ttft_labels == lb("time_to_first_token_milliseconds")
    (h,) = d.histograms[ttft_labels][1]
    assert h.count == 6 and h.sum == pytest.approx(709.5) and not h.is_float and h.schema <= 8
    # Every observation lies in the bucket the native histogram's schema says it does.
    base = 2 ** (2.0**-h.schema)
    for value in (5, 12, 12.5, 80, 300):
        index = math.ceil(math.log(value, base) - 1e-12)
        assert any(i == index and c > 0 for i, c in h.positive_buckets()), (value, index, h.positive_buckets())
    assert sum(c for _, c in h.positive_buckets()) == 6

    assert d.families["requests_total"] == Metadata("counter", "Requests served.", "")
    assert d.families["request_duration_seconds"] == Metadata("histogram", "Latency.", "seconds")
    assert d.families["gpu_temperature_celsius"] == Metadata("gauge", "", "celsius")
    counter = lb("requests_total", llama, ("http_status_code", "200"))
    assert d.created[counter] > 0


def test_a_request_built_by_the_sdk_maps_to_prometheus_series():
    request = sdk_request()
    check_inference_series(otlp.to_prometheus(request, wide_limits()))
    again = otlp.decode(request.SerializeToString(), "application/x-protobuf", None, wide_limits())
    check_inference_series(again)


class _Capture(QuietHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        answer = otlp.response(otlp.Mapped(), otlp.PROTOBUF)
        self.answer(answer, "application/x-protobuf")


def test_what_the_real_otlp_http_exporter_sends_gzipped_decodes_the_same():
    _Capture.received = []
    server = HTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        exporter = OTLPMetricExporter(
            endpoint=f"http://127.0.0.1:{server.server_port}/v1/metrics", compression=Compression.Gzip, timeout=5
        )
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=600_000)
        provider = provider_with(reader)
        record(provider)
        provider.force_flush()
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    (headers, body), *_ = _Capture.received
    assert headers["content-encoding"] == "gzip" and headers["content-type"] == "application/x-protobuf"
    mapped = otlp.decode(body, headers["content-type"], headers["content-encoding"], wide_limits())
    check_inference_series(mapped)


def test_otlp_json_with_deltas_maps_the_gauge_and_refuses_the_deltas_as_a_partial_success():
    limits = rw.Limits()
    mapped = otlp.decode(official_style_json(), "application/json", None, limits)
    assert mapped.points == 3
    assert mapped.rejected == {"otlp_delta_temporality": 2}
    labels = (
        ("__name__", "my_gauge_ratio"),
        ("job", "my.service"),
        ("my_gauge_attr", "v;2"),  # two keys, one label name: values joined in key order
        ("otel_scope_name", "my.library"),
        ("otel_scope_version", "1.0.0"),
    )
    assert mapped.decoded.series == {labels: ([1_700_000_000_000], [10.0])}
    assert mapped.decoded.exemplars == {}  # exemplars are kept on sums and histograms only
    answer = json.loads(otlp.response(mapped, otlp.JSON))
    assert answer["partialSuccess"]["rejectedDataPoints"] in (2, "2")
    assert "otlp_delta_temporality (2)" in answer["partialSuccess"]["errorMessage"]
    proto_answer = otlp.ExportMetricsServiceResponse.FromString(otlp.response(mapped, otlp.PROTOBUF))
    assert proto_answer.partial_success.rejected_data_points == 2
    assert otlp.response(otlp.Mapped(), otlp.PROTOBUF) == b""


def test_exemplars_of_counters_and_histograms_carry_hex_trace_ids():
    body = json.loads(official_style_json())
    metrics = body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
    metrics[0]["sum"]["aggregationTemporality"] = 2
    metrics[0]["sum"]["dataPoints"][0]["exemplars"] = metrics[1]["gauge"]["dataPoints"][0]["exemplars"]
    metrics[2]["histogram"]["aggregationTemporality"] = 2
    metrics[2]["histogram"]["dataPoints"][0]["exemplars"] = metrics[1]["gauge"]["dataPoints"][0]["exemplars"]
    mapped = otlp.decode(json.dumps(body).encode(), "application/json", None, rw.Limits())
    assert mapped.rejected == {}
    by_name = {
        dict(labels)["__name__"] + dict(labels).get("le", ""): ex for labels, ex in mapped.decoded.exemplars.items()
    }
    trace = (("span_id", "eee19b7ec3c1b174"), ("trace_id", "5b8efff798038103d269b633813fc60c"))
    assert [e.labels for e in by_name["my_counter_total"]] == [trace]  # unit "1" adds nothing to a counter
    assert list(by_name) == ["my_counter_total", "my_histogram_bucket+Inf"]  # 9 lies above the bound 1


def exp_request(scale: int, offset: int, counts: list[int], flags: int = 0):
    request = otlp.ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="lat")
    metric.exponential_histogram.aggregation_temporality = 2
    point = metric.exponential_histogram.data_points.add(
        time_unix_nano=1_700_000_000_000_000_000,
        count=sum(counts) + 1,
        sum=10.0,
        scale=scale,
        zero_count=1,
        flags=flags,
    )
    point.positive.offset = offset
    point.positive.bucket_counts.extend(counts)
    return request


def test_exponential_histograms_shift_the_index_by_one_and_merge_fine_scales():
    h = next(iter(otlp.to_prometheus(exp_request(3, -2, [1, 0, 2]), rw.Limits()).decoded.histograms.values()))[1][0]
    assert h == Histogram(
        count=4,
        sum=10.0,
        schema=3,
        zero_threshold=1e-128,
        zero_count=1,
        positive_spans=((-1, 1), (1, 1)),
        positive=(1, 1),
    )
    fine = otlp.to_prometheus(exp_request(10, 7, [1, 1, 1, 1, 1]), rw.Limits()).decoded.histograms
    (h,) = next(iter(fine.values()))[1]
    assert h.schema == 8 and sum(c for _, c in h.positive_buckets()) == 5
    coarse = otlp.to_prometheus(exp_request(-5, 0, [1]), rw.Limits())
    assert coarse.rejected == {"otlp_exponential_scale_too_low": 1} and not coarse.decoded.histograms
    stale = otlp.to_prometheus(exp_request(3, 0, [1], flags=1), rw.Limits()).decoded.histograms
    (h,) = next(iter(stale.values()))[1]
    assert struct.pack("<d", h.sum) == rw.STALE_NAN_BYTES and h.count == 0


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("http.server.duration", "s", "histogram", "http_server_duration_seconds"),
        ("http.server.duration.seconds", "s", "histogram", "http_server_duration_seconds"),
        ("system.network.dropped", "{packets}", "counter", "system_network_dropped_total"),
        ("requests_total", "{request}", "counter", "requests_total"),
        ("io.time", "s", "counter", "io_time_seconds_total"),
        ("io.time_total", "s", "counter", "io_time_seconds_total"),
        ("memory.utilization", "1", "gauge", "memory_utilization_ratio"),
        ("cpu.count", "1", "counter", "cpu_count_total"),
        ("throughput", "By/s", "gauge", "throughput_bytes_per_second"),
        ("rate", "1/s", "gauge", "rate_per_second"),
        ("(lambda).function.executions(#)", "", "gauge", "lambda_function_executions"),
        ("9lives", "", "gauge", "_9lives"),
        ("temp", "Cel", "gauge", "temp_celsius"),
        ("weird", "furlongs/fortnight", "gauge", "weird_furlongs_per_fortnight"),
        ("a:b", "ms", "gauge", "a:b_milliseconds"),
    ],
)
def test_metric_names_follow_the_compatibility_spec(name, unit, kind, expected):
    assert otlp.metric_name(name, unit, kind, otlp.Options()) == expected


def test_suffixes_can_be_turned_off_and_label_names_are_sanitised():
    assert otlp.metric_name("io.time", "s", "counter", otlp.Options(unit_suffixes=False)) == "io_time"
    assert otlp.label_name("http.status-code") == "http_status_code"
    assert otlp.label_name("__reserved") == "_reserved"
    assert otlp.label_name("0day") == "key_0day"
    assert [otlp.format_float(v) for v in (0.1, 1.0, 1e6, 2.5e-7, math.inf, -0.0)] == [
        "0.1", "1", "1000000", "0.00000025", "+Inf", "0"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "error", "reason"),
    [
        (b"\xff\xff", "application/x-protobuf", None, WireError, "not an ExportMetricsServiceRequest"),
        (b"[1, 2]", "application/json", None, WireError, "not a JSON object"),
        (b"{", "application/json", None, WireError, "not JSON"),
        (b'{"resourceMetrics": 5}', "application/json", None, WireError, "not an ExportMetricsServiceRequest"),
        (b"{}", "text/plain", None, Unsupported, "Content-Type must be"),
        (b"{}", "application/json", "br", Unsupported, "Content-Encoding must be gzip"),
        (b"not gzip", "application/json", "gzip", WireError, "gzip"),
        (gzip.compress(b"{}")[:-6], "application/json", "gzip", WireError, "ends before"),
        (gzip.compress(b" " * (2 << 20)), "application/json", "gzip", TooLarge, "decompressed OTLP body"),
        (b" " * (2 << 20), "application/json", None, TooLarge, "OTLP body"),
    ],
)
def test_bad_otlp_requests_are_refused_with_a_reason(body, content_type, encoding, error, reason):
    with pytest.raises(error, match=reason):
        otlp.decode(body, content_type, encoding, rw.Limits(max_decompressed_bytes=1 << 20))


def test_points_out_of_the_window_or_over_the_limits_are_rejected_and_counted():
    request = sdk_request()
    mapped = otlp.to_prometheus(request, rw.Limits(min_timestamp_ms=2**52))
    assert mapped.rejected["too_old"] == 6 and not mapped.decoded.series
    assert mapped.decoded.dropped["too_old"] > 6  # samples: a histogram point is several
    narrow = otlp.to_prometheus(request, rw.Limits(max_labels_per_series=5))
    assert narrow.rejected["too_many_labels"] >= 1


def test_json_written_by_protobuf_from_an_sdk_request_maps_the_same():
    request = sdk_request()
    raw = json_format.MessageToDict(request)
    check_inference_series(otlp.decode(json.dumps(raw).encode(), "application/json", None, rw.Limits()))


def test_a_second_gzip_member_is_refused_not_left_unread():
    body = gzip.compress(b"{}") + gzip.compress(b"{}")
    with pytest.raises(WireError, match="goes on after"):
        otlp.decode(body, "application/json", "gzip", rw.Limits())


def test_mutated_sdk_requests_are_wire_errors_or_mapped_never_anything_else():
    import random

    raw = sdk_request().SerializeToString()
    rng = random.Random(5)
    outcomes = {"refused": 0, "mapped": 0}
    for _ in range(300):
        body = bytearray(raw)
        for _ in range(rng.randrange(1, 6)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        try:
            otlp.decode(bytes(body), "application/x-protobuf", None, rw.Limits())
            outcomes["mapped"] += 1
        except WireError:
            outcomes["refused"] += 1
    assert outcomes["refused"] and outcomes["mapped"]
