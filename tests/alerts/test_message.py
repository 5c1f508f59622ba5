"""The compact alert message: the 160-byte bound, truncation, and clear refusals of bad input."""

from __future__ import annotations

import math

import pytest

from backhaul.errors import AlertFormatError
from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage


def typical(**changes: object) -> AlertMessage:
    fields: dict[str, object] = {
        "device": "edge-0001.factory-7",
        "rule": "InferenceErrorRateHigh",
        "state": "firing",
        "severity": "critical",
        "value": 0.237,
        "ts_ms": 1_795_968_124_054,
        "seq": 123_456,
        "fingerprint": 0xDEADBEEF,
        "summary": "yolo error rate 23.7%",
    }
    fields.update(changes)
    return AlertMessage(**fields)  # type: ignore[arg-type]


def test_a_typical_alert_fits_in_160_bytes_and_round_trips() -> None:
    msg = typical()
    body = wire.encode(msg)
    assert len(body) <= 160
    assert len(wire.encode(typical(summary=""))) <= 80  # without a summary it is far smaller
    assert wire.decode(body) == msg


def test_oversize_fields_are_cut_to_stay_within_the_bound() -> None:
    msg = typical(device="d" * 128, rule="R" * 300, summary="é" * 500, seq=2**62, ts_ms=2**52)
    body = wire.encode(msg)
    assert len(body) <= wire.MAX_BYTES
    back = wire.decode(body)
    assert back.device == "d" * wire.MAX_DEVICE_BYTES
    assert back.rule == "R" * wire.MAX_RULE_BYTES
    assert back.summary and set(back.summary) == {"é"}  # cut at a character boundary, still UTF-8
    assert back.seq == 2**62 and back.ts_ms == 2**52


@pytest.mark.parametrize("value", [math.inf, -math.inf, -0.0, 1e308])
def test_special_values_survive(value: float) -> None:
    assert wire.decode(wire.encode(typical(value=value))).value == value


def test_nan_value_survives() -> None:
    assert math.isnan(wire.decode(wire.encode(typical(value=math.nan, state="resolved"))).value)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b"", "empty"),
        (lambda b: bytes([9]) + b[1:], "unknown alert message version 9"),
        (lambda b: b[:1] + bytes([b[1] | 0x80]) + b[2:], "reserved flag bits"),
        (lambda b: b[:1] + bytes([b[1] | 0x03]) + b[2:], "unknown state 3"),
        (lambda b: b[:1] + bytes([0x1C]) + b[2:], "unknown severity 7"),
        (lambda b: b[:-3], "ends inside"),
        (lambda b: b + b"x", "unexpected bytes"),
        (lambda b: b + b"x" * 200, "exceeds 160"),
        (lambda b: b[:2] + b"\xff" * 11, "varint longer"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(mutate: object, reason: str) -> None:
    body = wire.encode(typical())
    with pytest.raises(AlertFormatError, match=reason):
        wire.decode(mutate(body))  # type: ignore[operator]


def test_bad_utf8_is_refused() -> None:
    body = bytearray(wire.encode(typical(summary="")))
    at = body.index(b"edge-0001")
    body[at] = 0xFF
    with pytest.raises(AlertFormatError, match="device is not UTF-8"):
        wire.decode(bytes(body))


def test_encoder_refuses_unknown_states() -> None:
    with pytest.raises(ValueError, match="state"):
        wire.encode(typical(state="pending"))
