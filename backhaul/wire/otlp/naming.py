"""OTLP names, units and attributes as Prometheus metric names, label names and label values.

Per OpenTelemetry's "Prometheus and OpenMetrics compatibility" specification: characters outside
``[a-zA-Z0-9_:]`` become ``_``, runs of ``_`` one; the unit, converted to Prometheus' words (``ms`` ->
``milliseconds``, ``By`` -> ``bytes``, ``1/s`` -> ``per_second``, ``{packet}`` dropped, ``1`` ->
``ratio`` for gauges), is appended unless the name has it; monotonic sums end in ``_total``.
Attribute keys become label names the same way (``:`` excluded); keys that collide have their values
joined with ``;`` in the order of the original keys. Bucket bounds and quantiles are written as
Prometheus' OTLP translator writes them (:func:`format_float`).
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from backhaul.wire.otlp.model import Options

_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tebibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_BAD_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_:]+")
_BAD_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]+")
_UNDERSCORES = re.compile(r"__+")
_CURLY = re.compile(r"\{[^}]*\}")


def prometheus_unit(unit: str, metric_type: str) -> str:
    """The Prometheus word for an OTLP (UCUM) unit: "" when there is none or it is a "count of"."""
    unit = _CURLY.sub("", unit).strip()
    if not unit:
        return ""
    if unit == "1":
        return "ratio" if metric_type == "gauge" else ""
    main, slash, per = unit.partition("/")
    words = _unit_word(main, _UNITS) if main != "1" else ""
    if slash and per:
        per_word = _unit_word(per, _PER_UNITS)
        words = f"{words}_per_{per_word}" if words else f"per_{per_word}"
    return _UNDERSCORES.sub("_", words).strip("_")


def _unit_word(unit: str, table: dict[str, str]) -> str:
    return table.get(unit) or re.sub(r"[^a-zA-Z0-9]", "", unit)


def metric_name(name: str, unit: str, metric_type: str, options: Options) -> str:
    """The Prometheus name of an OTLP metric of ``metric_type`` (a :data:`TYPES` entry)."""
    base = _UNDERSCORES.sub("_", _BAD_METRIC_CHARS.sub("_", name)).strip("_")
    counter = metric_type == "counter"
    if options.unit_suffixes:
        if counter and base.endswith("_total"):
            base = base[: -len("_total")]
        word = prometheus_unit(unit, metric_type)
        if word and f"_{word}_" not in f"_{base}_":
            base = f"{base}_{word}" if base else word
        if counter:
            base = f"{base}_total" if base else "total"
    if not base or base[0].isdigit():
        base = "_" + base
    return base


def label_name(key: str) -> str:
    """An attribute key as a Prometheus label name."""
    name = _UNDERSCORES.sub("_", _BAD_LABEL_CHARS.sub("_", key))
    if not name:
        return "_"
    return "key_" + name if name[0].isdigit() else name


def attribute_value(value: Any) -> str:
    """An OTLP ``AnyValue`` as a label value: strings as they are, others as OpenTelemetry's
    attribute spec writes them (booleans lower case, arrays and maps as JSON, bytes as base64)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return str(value.string_value)
    return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind) if kind else None


def labels_of(attributes: Iterable[Any]) -> dict[str, str]:
    """Attributes as labels; keys that map to the same name have their values joined with ";",
    ordered by the original keys, as the compatibility spec requires."""
    by_name: dict[str, list[tuple[str, str]]] = {}
    for kv in attributes:
        by_name.setdefault(label_name(kv.key), []).append((kv.key, attribute_value(kv.value)))
    return {name: ";".join(v for _, v in sorted(pairs)) for name, pairs in by_name.items()}


def format_float(v: float) -> str:
    """A bucket bound or quantile as the ``le``/``quantile`` label value: shortest digits, no
    exponent, no trailing ``.0`` (as Prometheus' OTLP translator writes them), ``+Inf``/``-Inf``."""
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    text = format(Decimal(repr(v)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
