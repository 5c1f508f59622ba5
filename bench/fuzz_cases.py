"""Structure-aware fuzz cases for every endpoint a device or the network can reach (issue 12).

Each generator takes a ``random.Random`` (in the CI slice, Hypothesis' ``st.randoms()``, so that a
failing case shrinks) and returns a :class:`Case`: a valid request built the way an agent or a
Prometheus builds it, then, most of the time, mutated where the format has structure -- a header
field set to a hostile value, a chunk column or count rewritten, a table reference pointing
elsewhere, a label that breaks a rule, a protobuf field of the wrong type, a MAC of the wrong key.

Every series a case carries has ``fuzz_sender=<the device whose token sends it>``; mutations never
touch that pair, so after a run "no sample is stored under another device" is a plain check: every
exported series with that label has it equal to its ``device_id``. Unmutated cases that are
acknowledged are recorded (a few of them with a ``fuzz_case`` label of their own) so that a run can
check they are exported unchanged.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import cramjam
import zstandard

from backhaul.wire import alert as alertfmt
from backhaul.wire import batch as batchfmt
from backhaul.wire import chunk as chunkfmt
from backhaul.wire import otlp
from backhaul.wire import remote_write as rw
from backhaul.wire import remote_write_v2 as rw2
from backhaul.wire.alert import AlertMessage
from backhaul.wire.histogram import Histogram, HistogramSeriesMap
from backhaul.wire.metadata import Metadata
from backhaul.wire.series import Labels, SeriesMap, sample_count
from backhaul.wire.varint import varint
from harness.config import READ_HEADERS
from harness.remote_write import raw_label, raw_series

DEVICES = {"dev-1": "fuzz-token-one", "dev-2": "fuzz-token-two", "dev-3": "fuzz-token-three"}
RW_HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}
HUGE_INTS = [-1, 2**31, 2**32, 2**53, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**20]
JSON_ODD = [
    "1e400",
    "-1e309",
    "Infinity",
    "-Infinity",
    "NaN",
    "1.5",
    "true",
    "null",
    '"7"',
    "[]",
    "{}",
    '"' + "x" * 999 + '"',
]
BAD_NAMES = [
    "",
    " ",
    "bad-name!",
    "device_id ",
    "device_id\u200b",
    "Device_ID",
    "deviceid",
    "1st",
    "é",
    "a.b",
    "\udc80",
]
ODD_VALUES = ["", "dev-2", "\x00", "😀", "\udc80", "x" * 20_000, "../../etc/passwd", "<script>alert(1)</script>"]
FLOATS = [0.0, -0.0, 1.5, -1e308, 1e308, math.inf, -math.inf, math.nan, 5e-324, 2**53 + 1.0]


@dataclass
class Case:
    """One request (or MQTT message).

    Args:
        endpoint: the name it is counted under.
        target: ``agent``, ``collector`` or ``mqtt``.
        method, path, headers, body, query: the HTTP request (``path`` is the MQTT topic for mqtt).
        valid: it was not mutated (a 2xx is then expected, and what it carried must be exported).
        series: what a valid case carries, per device label value, for the check after the run.
    """

    endpoint: str
    target: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    query: list[tuple[str, str]] = field(default_factory=list)
    valid: bool = False
    series: SeriesMap = field(default_factory=dict)
    device: str = ""


class Fuzzer:
    """The generators, with the little state a realistic sender keeps (sequence numbers, tables sent).

    Args:
        rnd: the source of every choice.
        now_ms: the wall clock (ms) that sample timestamps are drawn around.
        ledger_every: one valid case in this many carries a ``fuzz_case`` label, to be checked after.
        regex_bombs: selectors may hold regular expressions that take exponential time in a
            backtracking engine (``(.*.*)*X``): off until the export matches in linear time (issue
            12, finding 7), since each one stalls a collector on main for a minute.
    """

    def __init__(
        self, rnd: random.Random, now_ms: int | None = None, ledger_every: int = 50, regex_bombs: bool = False
    ) -> None:
        self.rnd = rnd
        self.regex_bombs = regex_bombs
        self.now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        self.ledger_every = ledger_every
        self.seq = 0
        self.cases = 0
        self.tables: dict[str, list[str]] = {d: [] for d in DEVICES}  # digests each device's tables go by
        self.codec = chunkfmt.Codec()
        # bombs made now: a case must not stall the sender while it is timed (the gzip bomb, made at
        # its first use, once held every answer in flight for 2 s)
        for size in (1 << 20, 300 << 20):
            _zero_frame(size)
        _gzip_bomb()

    # -- shared pieces ---------------------------------------------------------------------------------

    def pick(self, items: list[Any]) -> Any:
        return items[self.rnd.randrange(len(items))]

    def chance(self, p: float) -> bool:
        return self.rnd.random() < p

    def series(self, sender: str, tagged: bool) -> SeriesMap:
        """1-12 series of 1-8 samples from ``sender`` (a bounded set of names, so the store stays small)."""
        out: SeriesMap = {}
        case = f"{self.cases}-{self.rnd.randrange(1 << 30)}"
        for _ in range(self.rnd.randint(1, 12)):
            labels = [("__name__", f"fz_metric_{self.rnd.randrange(40)}"), ("fuzz_sender", sender)]
            labels.append(("instance", f"i{self.rnd.randrange(5)}"))
            if tagged:
                labels.append(("fuzz_case", case))
            n = self.rnd.randint(1, 8)
            start = self.now_ms - self.rnd.randrange(3_600_000)
            stamps = sorted({start + k * self.rnd.choice((1, 1000, 15_000)) for k in range(n)})
            values = [self.pick(FLOATS) if self.chance(0.1) else round(self.rnd.uniform(-1e6, 1e6), 3) for _ in stamps]
            out[tuple(sorted(labels))] = (stamps, values)
        return out

    def hostile_labels(self, sender: str) -> tuple[tuple[str, str], ...]:
        """A label set that breaks one of the rules of backhaul/labels.py (its sender pair intact)."""
        base = [("__name__", "fz_bad"), ("fuzz_sender", sender)]
        kind = self.rnd.randrange(6)
        if kind == 0:
            base.append((self.pick(BAD_NAMES), "x"))
        elif kind == 1:
            base.append(("v", self.pick(ODD_VALUES)))
        elif kind == 2:
            base = [p for p in base if p[0] != "__name__"] + [("job", "x")]
        elif kind == 3:
            base += [(f"l{i}", "v") for i in range(self.rnd.choice((130, 1000)))]
        elif kind == 4:
            base[0] = ("__name__", self.pick(["9lives", "a b", "", "x" * 30_000, "é"]))
        else:
            base.append(("device_id", self.pick(list(DEVICES))))  # allowed: renamed exported_device_id
        return tuple(base)

    def token(self, device: str) -> str:
        """Mostly the device's own token; sometimes none, a wrong one, or another device's."""
        r = self.rnd.random()
        if r < 0.9:
            return DEVICES[device]
        return str(self.pick(["", "nope", DEVICES[self.pick(list(DEVICES))], "x" * 5000, "Basic abc"]))

    def auth(self, device: str) -> dict[str, str]:
        token = self.token(device)
        return {"Authorization": token if token.startswith("Basic") else f"Bearer {token}"} if token else {}

    def _ledger(self) -> bool:
        return self.cases % self.ledger_every == 0

    # -- collector: POST /api/v1/batches ---------------------------------------------------------------

    def owner(self, headers: dict[str, str], device: str) -> str:
        """The device whose token ``headers`` carry (it decides whose data it is), else ``device``."""
        return next((d for d, t in DEVICES.items() if headers.get("Authorization") == f"Bearer {t}"), device)

    def batch(self) -> Case:
        self.cases += 1
        headers = {"Content-Type": batchfmt.CONTENT_TYPE, **self.auth(self.pick(list(DEVICES)))}
        device = self.owner(headers, self.pick(list(DEVICES)))
        mutate = self.chance(0.75)
        series = self.series(device, tagged=not mutate and self._ledger())
        if mutate and self.chance(0.3):
            series[self.hostile_labels(device)] = ([self.now_ms], [1.0])
        self.seq += 1
        header: dict[str, Any] = {
            "device": device,
            "buffer_id": f"fuzz-{device}",
            "seq": self.seq,
            "sent_at_ms": self.now_ms,
            "samples": sample_count(series),
            "agent_version": "fuzz",
        }
        raw = _chunk(series)
        frames = [self.codec.compress(raw)]
        valid = not mutate and headers.get("Authorization") == f"Bearer {DEVICES[device]}"
        if self.chance(0.2):  # ask the collector to keep the table, or send the chunk by reference
            table, stripped = chunkfmt.split_table(raw)
            digest = chunkfmt.table_digest(table)
            if digest in self.tables[device] and self.chance(0.7):
                frames, header["table_refs"] = [self.codec.compress(stripped)], [digest]
                valid = False  # a 409 is a right answer too: the collector may have dropped the table
            else:
                header["table_refs"] = [""]
                if valid:
                    self.tables[device].append(digest)
        raw_json = ""
        if mutate:
            frames, raw_json = self._mutate_batch(device, header, raw, frames, headers)
        body = self._batch_body(header, frames, raw_json)
        if mutate and self.chance(0.05):
            body = self._flip(body, self.rnd.randint(1, 8))
        return Case("collector_batch", "collector", "POST", "/api/v1/batches", headers, body, [], valid, series, device)

    def _batch_body(self, header: dict[str, Any], frames: list[bytes], raw_json: str = "") -> bytes:
        header.setdefault("chunk_sizes", [len(f) for f in frames])
        text = json.dumps(header)
        if raw_json:  # a field as no JSON encoder writes it (1e400, NaN), or a field twice
            text = text[:-1] + ", " + raw_json + "}"
        head = text.encode("utf-8", "surrogatepass")
        return b"BHB\x01" + struct.pack("<I", len(head)) + head + b"".join(frames)

    def _mutate_batch(
        self, device: str, header: dict[str, Any], raw: bytes, frames: list[bytes], headers: dict[str, str]
    ) -> tuple[list[bytes], str]:
        """Mutate one structural part of a batch (``header`` and ``headers`` in place)."""
        kind = self.rnd.randrange(9)
        fields = ["seq", "sent_at_ms", "samples", "evicted_samples", "expired_samples", "dropped_samples"]
        fields += ["corrupt_samples", "backlog_bytes", "backlog_oldest_ms", "device", "buffer_id", "chunk_sizes"]
        if kind == 0:  # a header field set to a hostile value
            name = self.pick([*fields, "table_refs", "agent_version"])
            header[name] = self.pick([*HUGE_INTS, "x", None, [], {}, [1, -1], True, 1.5, self.pick(ODD_VALUES)])
        elif kind == 1:  # a value no JSON encoder writes, or a field given twice
            name = self.pick(fields[:9])
            if self.chance(0.5):
                header.pop(name, None)
            return frames, f'"{name}": {self.pick(JSON_ODD)}'
        elif kind == 2:  # the header claims another device
            header["device"] = self.pick([d for d in DEVICES if d != device] + ["", "x" * 200, "dev-1 "])
        elif kind == 3:  # chunk columns: bytes after the series table rewritten
            table_end = chunkfmt.header.PREFIX_LEN + struct.unpack_from("<I", raw, 12)[0]
            mutated = bytearray(raw)
            for _ in range(self.rnd.randint(1, 6)):
                if len(mutated) > table_end:
                    mutated[self.rnd.randrange(table_end, len(mutated))] = self.rnd.randrange(256)
            return [self.codec.compress(bytes(mutated))], ""
        elif kind == 4:  # chunk header: version, n_series, n_samples, table_len
            mutated = bytearray(raw)
            at = self.pick([3, 4, 8, 12])
            if at == 3:
                mutated[3] = self.pick([0, 1, 3, 9])
            else:
                struct.pack_into("<I", mutated, at, self.pick([0, 1, 2, 3, 4, 255, 2**31, 2**32 - 1]))
            return [self.codec.compress(bytes(mutated))], ""
        elif kind == 5:  # timestamps beyond int64, or beyond any date
            stamps = self.pick([[2**62, 2**63 + 5], [-(2**62), -(2**63) - 9], [2**53 + 1], [0, 2**62, 2**62]])
            hostile: SeriesMap = {(("__name__", "fz_time"), ("fuzz_sender", device)): (stamps, [1.0] * len(stamps))}
            header["samples"] = len(stamps)
            return [self.codec.encode(hostile)], ""
        elif kind == 6:  # table references: unknown, another device's, malformed, too many
            other = self.tables[self.pick([d for d in DEVICES if d != device])]
            ref = self.pick([*other[-3:], "0" * 32, "zz", "", "A" * 32])
            _, stripped = chunkfmt.split_table(raw)
            header["table_refs"] = self.pick([[ref], [ref, ref], []])
            return [self.codec.compress(stripped)], ""
        elif kind == 7:  # zstd: a broken frame, a bomb, trailing bytes, a truncated frame
            bomb = _zero_frame(self.rnd.choice((1 << 20, 300 << 20)))
            return [self.pick([self._flip(frames[0], 3), bomb, b"\x28", frames[0] + b"\0\0\0", frames[0][:-4]])], ""
        else:  # headers: Content-Type, Authorization
            choice = self.rnd.randrange(3)
            if choice == 0:
                headers["Content-Type"] = self.pick(["application/json", "", "application/x-backhaul-batch; x=1"])
            elif choice == 1:
                headers["Authorization"] = self.pick(["Bearer", "Bearer  ", "bearer " + DEVICES[device], "Token x"])
            else:
                headers.pop("Authorization", None)
        return frames, ""

    # -- remote write (agent and collector) ------------------------------------------------------------

    def remote_write(self, target: str) -> Case:
        self.cases += 1
        device = "dev-1" if target == "agent" else self.pick(list(DEVICES))
        headers = dict(RW_HEADERS)
        if target == "collector":
            headers.update(self.auth(device))
            device = self.owner(headers, device)  # the token decides whose series they are
        sender = "agent" if target == "agent" else device
        mutate = self.chance(0.75)
        series = self.series(sender, tagged=not mutate and self._ledger())
        valid = not mutate and (target == "agent" or headers.get("Authorization") == f"Bearer {DEVICES[device]}")
        if not mutate:
            (body,) = rw.encode(series, 1_000_000)
        else:
            body, headers = self._mutate_rw(sender, series, headers)
        endpoint = f"{target}_remote_write"
        return Case(endpoint, target, "POST", "/api/v1/write", headers, body, [], valid, series, device)

    def _mutate_rw(self, sender: str, series: SeriesMap, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        kind = self.rnd.randrange(7)
        raw = rw.decompress(rw.encode(series, 1_000_000)[0], 1 << 30)
        if kind == 0:  # a series that breaks a label rule, beside good ones
            bad = self.hostile_labels(sender)
            raw += raw_series(
                [raw_label(n.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")) for n, v in bad],
                self.now_ms,
            )
        elif kind == 1:  # labels that are not UTF-8, or not protobuf
            bad_labels = [raw_label(b"v", b"\xff\xfe"), raw_label(b"\xc3", b"x"), b"\x0a\x05\x0a\x08ab", b"\x0a\x00"]
            label = self.pick(bad_labels)
            raw += raw_series(
                [raw_label(b"__name__", b"fz_bin"), raw_label(b"fuzz_sender", sender.encode()), label], self.now_ms
            )
        elif kind == 2:  # timestamps and values at the edges
            ts = self.pick([0, -1, 2**53, 2**63 - 1, -(2**63), self.now_ms + 86_400_000, self.now_ms - 30 * 86_400_000])
            raw += raw_series(
                [raw_label(b"__name__", b"fz_edge"), raw_label(b"fuzz_sender", sender.encode())],
                ts,
                struct.pack("<d", self.pick(FLOATS)),
            )
        elif kind == 3:  # bytes flipped anywhere in the protobuf
            raw = self._flip(raw, self.rnd.randint(1, 10))
        elif kind == 4:  # fields of 2.0, histograms and exemplars of garbage, unknown wire types
            extra = self.pick([b"\x22\x03abc", b"\x2a\x02\x08\x01", b"\x0b", b"\x0f", b"\x1a\x04\x08\x01\x10\x02"])
            raw = extra + raw if self.chance(0.5) else raw + extra
        elif kind == 5:  # snappy: a bomb's preamble, garbage, truncation, empty
            body = self.pick([bytes([0x80, 0x80, 0x80, 0x80, 0x04]) + b"\0" * 20, b"", b"\xff" * 12, b"\x0cnot snappy"])
            return body, headers
        else:  # negotiation headers
            headers = dict(headers)
            headers["Content-Type"] = self.pick(
                [
                    "application/x-protobuf;proto=io.prometheus.write.v2.Request",
                    "application/x-protobuf;proto=x",
                    "text/plain",
                    "",
                ]
            )
            if self.chance(0.5):
                headers["Content-Encoding"] = self.pick(["gzip", "zstd", "", "snappy, gzip"])
        return bytes(cramjam.snappy.compress_raw(raw)), headers

    # -- remote write 2.0 (agent) -----------------------------------------------------------------------

    def remote_write_v2(self, target: str = "agent") -> Case:
        """A 2.0 request as Prometheus 3 builds it (symbols, metadata, a native histogram), mostly
        broken where the spec has rules: symbols[0], references, order, histograms, the protobuf."""
        self.cases += 1
        device = "dev-1" if target == "agent" else self.pick(list(DEVICES))
        headers = {**RW_HEADERS, "Content-Type": rw2.CONTENT_TYPE}
        if target == "collector":
            headers.update(self.auth(device))
            device = self.owner(headers, device)  # the token decides whose series they are
        sender = "agent" if target == "agent" else device
        mutate = self.chance(0.75)
        valid = not mutate and (target == "agent" or headers.get("Authorization") == f"Bearer {DEVICES[device]}")
        series = self.series(sender, tagged=not mutate and self._ledger())
        labels: Labels = (("__name__", "fz_hist"), ("fuzz_sender", sender))
        h = Histogram(count=3, sum=1.5, schema=2, positive_spans=((-1, 2),), positive=(1, 1))
        histograms: HistogramSeriesMap = {labels: ([self.now_ms - 1000], [h])} if self.chance(0.5) else {}
        metadata = {"fz_metric_1": Metadata("gauge", self.pick(["", "help", "é" * 100]), "")}
        (body,) = rw2.encode(series, histograms, metadata)
        if mutate:
            body = self._mutate_rw2(body)
        endpoint = f"{target}_remote_write_v2"
        return Case(endpoint, target, "POST", "/api/v1/write", headers, body, [], valid, series, device)

    def _mutate_rw2(self, body: bytes) -> bytes:
        request = rw2.Request.FromString(rw.decompress(body, 1 << 30))
        kind = self.rnd.randrange(8)
        ts = request.timeseries[self.rnd.randrange(len(request.timeseries))]
        if kind == 0:
            request.symbols[0] = self.pick(["x", "__name__", "\x00"])
        elif kind == 1:
            ts.labels_refs[self.rnd.randrange(len(ts.labels_refs))] = self.pick(
                [len(request.symbols), 2**32 - 1, 10**6]
            )
        elif kind == 2:
            ts.labels_refs.append(1)  # an odd number of references
        elif kind == 3 and len(ts.samples) > 1:
            ts.samples[0].timestamp = ts.samples[-1].timestamp + self.rnd.randint(1, 10**6)
        elif kind == 4:
            h = ts.histograms.add(
                count_int=self.pick([0, 1, 2**31, 2**53, 2**63 - 1, 2**63, 2**64 - 1]),
                schema=self.pick([-5, 0, 9, 60, -53]),
            )
            h.positive_spans.add(offset=self.pick([-(2**31), 0, 2**31 - 1]), length=self.pick([0, 1, 2**32 - 1]))
            h.positive_deltas.extend([self.pick(HUGE_INTS[:6]) for _ in range(self.rnd.randint(0, 3))])
        elif kind == 5:
            ts.metadata.help_ref = self.pick([len(request.symbols), 2**32 - 1])
        elif kind == 6:
            ts.exemplars.add(labels_refs=[1, 2], value=1.0, timestamp=self.pick([0, 1, 2**63 - 1]))
        else:
            return bytes(cramjam.snappy.compress_raw(self._flip(request.SerializeToString(), self.rnd.randint(1, 10))))
        return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))

    # -- OTLP/HTTP metrics (agent) ---------------------------------------------------------------------

    def otlp_metrics(self) -> Case:
        """An OTLP/HTTP metrics request (protobuf or JSON, gzip or not) of gauges, sums and histograms,
        mostly broken: bytes flipped, JSON of odd shapes, delta sums, bombs, wrong headers. A valid
        one must be answered 200; what it stores is named by the OTLP mapping, so it is not in the ledger."""
        self.cases += 1
        request = otlp.ExportMetricsServiceRequest()
        rm = request.resource_metrics.add()
        rm.resource.attributes.add(key="service.name", value={"string_value": "fz"})
        sm = rm.scope_metrics.add()
        t = self.now_ms * 1_000_000
        for i in range(self.rnd.randint(1, 6)):
            m = sm.metrics.add(name=f"fz.otlp.{self.rnd.randrange(20)}", unit=self.pick(["", "s", "By", "1"]))
            kind = self.rnd.randrange(3)
            if kind == 0:
                point = m.gauge.data_points.add(time_unix_nano=t, as_double=self.pick(FLOATS))
            elif kind == 1:
                m.sum.aggregation_temporality = 2
                m.sum.is_monotonic = True
                point = m.sum.data_points.add(time_unix_nano=t, as_int=self.rnd.randrange(10**6))
            else:
                m.histogram.aggregation_temporality = 2
                point = m.histogram.data_points.add(time_unix_nano=t, count=3, sum=1.0)
                point.explicit_bounds.extend([0.5, 1.0])
                point.bucket_counts.extend([1, 1, 1])
            point.attributes.add(key="fuzz_sender", value={"string_value": "agent"})
            point.attributes.add(key=f"a{i}", value={"int_value": self.rnd.randrange(5)})
        as_json = self.chance(0.3)
        body = otlp_json(request) if as_json else request.SerializeToString()
        headers = {"Content-Type": otlp.JSON if as_json else otlp.PROTOBUF}
        mutate = self.chance(0.75)
        if mutate:
            body, headers = self._mutate_otlp(request, body, headers)
        if self.chance(0.5):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return Case("agent_otlp", "agent", "POST", "/v1/metrics", headers, body, [], not mutate, {}, "dev-1")

    def _mutate_otlp(self, request: Any, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        kind = self.rnd.randrange(6)
        if kind == 0:
            return self._flip(body, self.rnd.randint(1, 10)), headers
        if kind == 1:  # JSON numbers, strings and shapes where the schema wants others
            value, stamp = self.pick(JSON_ODD), self.pick(JSON_ODD)
            point = f'{{"asDouble":{value},"asInt":{self.pick(JSON_ODD)},"timeUnixNano":{stamp}}}'
            metric = f'{{"name":"fz.json","gauge":{{"dataPoints":[{point}]}},"sum":{self.pick(JSON_ODD)}}}'
            text = f'{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{metric}]}}]}}]}}'
            return text.encode(), {"Content-Type": otlp.JSON}
        if kind == 2:  # delta sums and histograms: refused point by point (partial success)
            for m in request.resource_metrics[0].scope_metrics[0].metrics:
                if m.HasField("sum"):
                    m.sum.aggregation_temporality = 1
                if m.HasField("histogram"):
                    m.histogram.aggregation_temporality = 1
            return request.SerializeToString(), {"Content-Type": otlp.PROTOBUF}
        if kind == 3:  # a gzip bomb, or gzip that is not
            return self.pick([_gzip_bomb(), b"\x1f\x8b\x08\x00nope", b""]), {**headers, "Content-Encoding": "gzip"}
        if kind == 4:  # attributes and names at the edges
            point = (
                request.resource_metrics[0].scope_metrics[0].metrics.add(name=self.pick(["", "é" * 300, "a" * 20_000]))
            )
            g = point.gauge.data_points.add(time_unix_nano=self.pick([0, 2**64 - 1, 1]), as_double=1.0)
            g.attributes.add(key=self.pick(["", "__name__", "fuzz_sender", "x" * 20_000]), value={"string_value": "v"})
            return request.SerializeToString(), {"Content-Type": otlp.PROTOBUF}
        headers = {"Content-Type": self.pick(["text/plain", "", "application/protobuf", "application/json; charset=x"])}
        return body, headers

    # -- alerts (HTTP and MQTT) ------------------------------------------------------------------------

    def alert_body(self, device: str) -> tuple[bytes, bool]:
        """A message from ``device``, signed with its key, and whether it was left valid."""
        self.seq += 1
        msg = AlertMessage(
            device,
            f"FuzzRule{self.rnd.randrange(20)}",
            self.pick(list(alertfmt.STATES)),
            self.pick(list(alertfmt.SEVERITIES)),
            self.pick(FLOATS),
            self.now_ms + self.pick([0, -60_000, 365 * 86_400_000, -self.now_ms + 5]),
            self.seq,
            self.rnd.randrange(1 << 32),
            self.pick(["", "disk 97 %", "é" * 200, "\x00"]),
        )
        key = alertfmt.token_key(DEVICES[device])
        body = alertfmt.encode(msg, key)
        if not self.chance(0.7):
            return body, True
        kind = self.rnd.randrange(6)
        if kind == 0:
            return alertfmt.encode_unsigned(msg), False
        if kind == 1:
            return alertfmt.encode(
                msg, alertfmt.token_key(self.pick(["guess", DEVICES[self.pick(list(DEVICES))]]))
            ), False
        if kind == 2:
            return self._flip(body, self.rnd.randint(1, 4)), False
        if kind == 3:  # seq or time past their bounds, with a valid MAC (a device that holds its token)
            unsigned = bytearray(alertfmt.encode_unsigned(msg))
            at = 2
            while unsigned[at] & 0x80:
                at += 1
            head = bytes([alertfmt.VERSION]) + bytes(unsigned[1:2]) + varint(self.pick(HUGE_INTS) & (2**64 - 1))
            rest = bytes(head + unsigned[at + 1 :])
            return rest + alertfmt.mac(key, rest), False
        if kind == 4:
            return self.pick(
                [body[: self.rnd.randrange(len(body))], body + b"\0" * self.rnd.randint(1, 200), b""]
            ), False
        return bytes(self.rnd.randrange(256) for _ in range(self.rnd.randint(1, 170))), False

    def alert_http(self) -> Case:
        self.cases += 1
        device = self.pick(list(DEVICES))
        body, valid = self.alert_body(device)
        headers = {"Content-Type": alertfmt.CONTENT_TYPE, **self.auth(device)}
        if self.chance(0.05):
            headers["Content-Type"] = "application/octet-stream"
            valid = False
        valid = valid and headers.get("Authorization") == f"Bearer {DEVICES[device]}"
        return Case("alert_http", "collector", "POST", "/api/v1/alerts", headers, body, [], valid, {}, device)

    def alert_mqtt(self) -> Case:
        self.cases += 1
        device = self.pick(list(DEVICES))
        body, valid = self.alert_body(device)
        topic = f"backhaul/alerts/{device}"
        if self.chance(0.2):
            topic = "backhaul/alerts/" + self.pick([d for d in DEVICES if d != device] + ["", "x" * 300, "é", "a/b"])
            valid = False
        return Case("alert_mqtt", "mqtt", "PUBLISH", topic, {}, body, [], valid, {}, device)

    # -- collector: GET /api/v1/export -----------------------------------------------------------------

    def export(self) -> Case:
        self.cases += 1
        query: list[tuple[str, str]] = []
        for _ in range(self.rnd.choice((0, 1, 1, 1, 2, 3))):
            query.append(("match[]", self.selector()))
        for name in ("start", "end"):
            if self.chance(0.5):
                query.append((name, self.pick(self._times())))
        if self.chance(0.05):
            query.append((self.pick(["step", "limit", "match", "foo"]), self.pick(["1", "", "x" * 100])))
        # Mostly with the read credential, so the parameters are what is tried; now and then none or a wrong one.
        headers = dict(READ_HEADERS)
        if self.chance(0.05):
            headers = self.pick([{}, {"Authorization": "Bearer " + "x" * 40}, {"Authorization": "Basic !!"}])
        return Case("export", "collector", "GET", "/api/v1/export", headers, b"", query)

    def _times(self) -> list[str]:
        now_s = self.now_ms / 1000
        return [
            str(now_s - 3600), str(int(now_s)), "0", "-1", "1e400", "-1e309", "inf", "nan", "99999999999999999999",
            "yesterday", "", "2026-01-01T00:00:00Z", "2026-13-40T99:99:99Z", "1e18", "-9.2e18", " 5", "0x10",
        ]  # fmt: skip

    def selector(self) -> str:
        names = ["fz_metric_1", "fz_metric_7", "fz_bad", "up", "", "9x", "é"]
        regexes = [".+", "fz_.*", "fz_metric_(1|2)", "[", "a{1000}", "\\", ".*é.*", "(?i)FZ.*", "x|", "", "(a|b"]
        if self.regex_bombs:
            regexes += ["(.*.*)*X", "(a+)+$", "(.*){1,32000}[bc]"]
        parts = []
        for _ in range(self.rnd.randint(0, 3)):
            label = self.pick(["__name__", "fuzz_sender", "instance", "device_id", "job", "", "a-b", "é"])
            op = self.pick(["=", "!=", "=~", "!~", "==", "~"])
            value = self.pick(regexes) if "~" in op else self.pick(names + list(DEVICES) + ['"', "'"])
            quote = self.pick(['"', "'", "`", ""])
            parts.append(f"{label}{op}{quote}{value}{quote}")
        name = self.pick(names) if self.chance(0.5) else ""
        text = name + "{" + self.pick([",", ", ", ";"]).join(parts) + "}" if parts or not name else name
        if self.chance(0.05):
            text = self.pick(["{", "}", "{{}}", "x" * 5000, '{__name__=~".+"}', '{a="\\x"}', "\x00"])
        return text

    def _flip(self, data: bytes, n: int) -> bytes:
        if not data:
            return data
        out = bytearray(data)
        for _ in range(n):
            out[self.rnd.randrange(len(out))] = self.rnd.randrange(256)
        return bytes(out)


def _chunk(series: SeriesMap) -> bytes:
    """The uncompressed chunk; one whose labels hold a lone surrogate (which no UTF-8 encoder writes)
    gets its series table as ASCII JSON, where it reads "\\udc80"."""
    try:
        return chunkfmt.encode(series)
    except UnicodeEncodeError:
        safe = {
            tuple((n.encode("utf-8", "replace").decode(), v.encode("utf-8", "replace").decode()) for n, v in k): v
            for k, v in series.items()
        }
        _, stripped = chunkfmt.split_table(chunkfmt.encode(safe))
        table = json.dumps([[part for pair in labels for part in pair] for labels in series]).encode()
        return chunkfmt.join_table(stripped, table)


def otlp_json(request: Any) -> bytes:
    """OTLP/JSON of a request, as an SDK's JSON exporter writes it (camelCase, int64 as strings)."""
    from google.protobuf import json_format

    return json.dumps(json_format.MessageToDict(request)).encode()


@functools.cache
def _gzip_bomb() -> bytes:
    """A gzip body that inflates to 300 MB."""
    return gzip.compress(b"\0" * (300 << 20), compresslevel=9)


@functools.cache
def _zero_frame(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes (a bomb of a few KB), made once, without holding ``size`` bytes."""
    writer = zstandard.ZstdCompressor().compressobj()
    zeros = b"\0" * (1 << 20)
    return b"".join([*(writer.compress(zeros) for _ in range(size >> 20)), writer.flush()])


def batch_for(device: str, series: SeriesMap) -> tuple[bytes, dict[str, str]]:
    """A valid batch of ``series`` from ``device`` and its request headers (a buffer of its own, seq 1)."""
    header = batchfmt.BatchHeader(
        device=device,
        buffer_id=f"baseline-{device}",
        seq=1,
        sent_at_ms=int(time.time() * 1000),
        samples=sample_count(series),
    )
    body = batchfmt.encode(header, [chunkfmt.Codec().encode(series)])
    return body, {"Content-Type": batchfmt.CONTENT_TYPE, "Authorization": f"Bearer {DEVICES[device]}"}
