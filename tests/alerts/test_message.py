"""The compact alert message: the 160-byte bound, truncation, and clear refusals of bad input."""

from __future__ import annotations

import math

import pytest

from backhaul.errors import AlertFormatError
from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage

KEY = wire.token_key("a device token")


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
    body = wire.encode(msg, KEY)
    assert len(body) <= 160
    assert len(wire.encode(typical(summary=""), KEY)) <= 80  # without a summary it is far smaller
    assert wire.decode(body) == msg


def test_oversize_fields_are_cut_to_stay_within_the_bound() -> None:
    msg = typical(device="d" * 128, rule="R" * 300, summary="é" * 500, seq=2**62, ts_ms=2**52)
    body = wire.encode(msg, KEY)
    assert len(body) <= wire.MAX_BYTES
    back = wire.decode(body)
    assert back.device == "d" * wire.MAX_DEVICE_BYTES
    assert back.rule == "R" * wire.MAX_RULE_BYTES
    assert back.summary and set(back.summary) == {"é"}  # cut at a character boundary, still UTF-8
    assert back.seq == 2**62 and back.ts_ms == 2**52


@pytest.mark.parametrize("value", [math.inf, -math.inf, -0.0, 1e308])
def test_special_values_survive(value: float) -> None:
    assert wire.decode(wire.encode(typical(value=value), KEY)).value == value


def test_nan_value_survives() -> None:
    assert math.isnan(wire.decode(wire.encode(typical(value=math.nan, state="resolved"), KEY)).value)


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
    body = wire.encode_unsigned(typical())  # the parser's refusals, without a MAC in the way
    with pytest.raises(AlertFormatError, match=reason):
        wire.decode(mutate(body))  # type: ignore[operator]


def test_bad_utf8_is_refused() -> None:
    body = bytearray(wire.encode(typical(summary=""), KEY))
    at = body.index(b"edge-0001")
    body[at] = 0xFF
    with pytest.raises(AlertFormatError, match="device is not UTF-8"):
        wire.decode(bytes(body))


def test_encoder_refuses_unknown_states() -> None:
    with pytest.raises(ValueError, match="state"):
        wire.encode(typical(state="pending"), KEY)


def test_the_mac_proves_the_key_and_any_changed_byte_breaks_it() -> None:
    body = wire.encode(typical(), KEY)
    assert body[0] == 2 and wire.verify(body, KEY)
    assert not wire.verify(body, wire.token_key("another device's token"))
    for at in range(len(body)):
        tampered = bytearray(body)
        tampered[at] ^= 0x01
        assert not wire.verify(bytes(tampered), KEY), at
    assert not wire.verify(wire.encode_unsigned(typical()), KEY)  # version 1 has no MAC


def test_the_key_is_the_sha256_of_the_token_as_the_collector_keeps_it() -> None:
    import hashlib

    assert wire.token_key(" tok ") == bytes.fromhex(hashlib.sha256(b"tok").hexdigest())


def test_signed_messages_stay_within_160_bytes_whatever_they_hold() -> None:
    msg = typical(device="d" * 128, rule="R" * 300, summary="é" * 500, seq=2**63 - 1, ts_ms=2**53 - 1)
    body = wire.encode(msg, KEY)
    assert len(body) <= wire.MAX_BYTES and wire.verify(body, KEY)
    # a full-size version 1 message from the queue of an older agent, signed as it leaves
    old = wire.encode_unsigned(msg)
    assert len(old) == wire.MAX_BYTES
    signed = wire.sign(old, KEY)
    assert len(signed) <= wire.MAX_BYTES and wire.verify(signed, KEY)
    assert wire.decode(signed).seq == msg.seq


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1, 2**69])
def test_a_seq_beyond_int64_is_refused(seq: int) -> None:
    from backhaul.wire.varint import varint

    body = bytearray(wire.encode_unsigned(typical(seq=1, summary="")))
    body[2:3] = varint(seq) if seq < 2**64 else b"\xff" * 9 + b"\x7f"
    with pytest.raises(AlertFormatError, match=r"seq|varint"):
        wire.decode(bytes(body))
