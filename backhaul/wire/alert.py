"""The compact alert message: one alert state change in at most 160 bytes, for any link.

Small enough for one SMS (140 bytes after base64 is not, but 160 raw bytes fit a satellite short-burst
message and an MQTT packet anywhere), identical on every transport, decoded by the collector with this
same module. Layout, version 1 (integers are unsigned LEB128 varints unless noted)::

    version      u8   1
    flags        u8   bits 0-1 state (0 firing, 1 resolved), bits 2-4 severity (0 none, 1 info,
                      2 warning, 3 critical), bit 5 a summary follows; bits 6-7 zero
    seq          varint   the agent's alert sequence number (per alert queue, increasing)
    ts_ms        varint   when the state changed, agent wall clock, ms since the epoch
    fingerprint  u32 big-endian   which alert instance (rule + series labels), stable across restarts
    value        f64 little-endian   the value that made the rule fire or resolve (NaN for none)
    device       varint length + UTF-8, at most 64 bytes
    rule         varint length + UTF-8, at most 48 bytes
    summary      (bit 5 only) varint length + UTF-8, whatever room is left below 160 bytes

Over-long strings are cut (at a character boundary) rather than let the message exceed the bound; the
long form (labels, full summary) can travel with the bulk data. A repeat of ``(device, seq, ts_ms)`` is
the same message, re-sent after a lost acknowledgement.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from backhaul.errors import AlertFormatError
from backhaul.wire.varint import varint

VERSION = 1
MAX_BYTES = 160
MAX_DEVICE_BYTES = 64
MAX_RULE_BYTES = 48
CONTENT_TYPE = "application/x-backhaul-alert"
STATES = ("firing", "resolved")
SEVERITIES = ("none", "info", "warning", "critical")
_U32 = struct.Struct(">I")
_F64 = struct.Struct("<d")
_MAX_TS_MS = 1 << 53
_MAX_SEQ = 1 << 63


@dataclass(frozen=True)
class AlertMessage:
    """One alert state change.

    Args:
        device: the sending device's id (cut to 64 bytes on the wire).
        rule: the rule's (alert's) name (cut to 48 bytes).
        state: ``firing`` or ``resolved``.
        severity: one of :data:`SEVERITIES`.
        value: the observed value (NaN when there is none, e.g. ``absent``).
        ts_ms: when the state changed (ms since the epoch).
        seq: the agent's alert sequence number.
        fingerprint: identity of the alert instance (u32).
        summary: optional short text, cut to whatever room is left.
    """

    device: str
    rule: str
    state: str
    severity: str
    value: float
    ts_ms: int
    seq: int
    fingerprint: int
    summary: str = ""


def _cut(text: str, limit: int) -> bytes:
    """UTF-8 of ``text``, at most ``limit`` bytes, never ending inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def encode(msg: AlertMessage) -> bytes:
    """The message in at most :data:`MAX_BYTES` bytes (long strings are cut to fit)."""
    if msg.state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {msg.state!r}")
    if msg.severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, not {msg.severity!r}")
    if not 0 <= msg.ts_ms < _MAX_TS_MS or not 0 <= msg.seq < _MAX_SEQ or not 0 <= msg.fingerprint < 1 << 32:
        raise ValueError("ts_ms, seq or fingerprint out of range")
    device = _cut(msg.device, MAX_DEVICE_BYTES)
    rule = _cut(msg.rule, MAX_RULE_BYTES)
    flags = STATES.index(msg.state) | SEVERITIES.index(msg.severity) << 2
    body = bytearray()
    body += varint(msg.seq) + varint(msg.ts_ms) + _U32.pack(msg.fingerprint) + _F64.pack(msg.value)
    body += varint(len(device)) + device + varint(len(rule)) + rule
    if msg.summary:
        room = MAX_BYTES - 2 - len(body) - 1  # one length byte: room is always below 128
        summary = _cut(msg.summary, max(0, room))
        if summary:
            flags |= 1 << 5
            body += varint(len(summary)) + summary
    out = bytes((VERSION, flags)) + bytes(body)
    assert len(out) <= MAX_BYTES, len(out)  # holds by construction: 2+10+8+12+65+49 < 160
    return out


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise AlertFormatError(f"alert message ends inside {what} (at byte {self.pos}, {len(self.data)} bytes)")
        part = self.data[self.pos : self.pos + n]
        self.pos += n
        return part

    def varint(self, what: str) -> int:
        value, shift = 0, 0
        while True:
            (byte,) = self.take(1, what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise AlertFormatError(f"{what}: varint longer than 10 bytes")

    def text(self, what: str, limit: int) -> str:
        n = self.varint(f"{what} length")
        if n > limit:
            raise AlertFormatError(f"{what} of {n} bytes exceeds {limit}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AlertFormatError(f"{what} is not UTF-8") from exc


def decode(data: bytes) -> AlertMessage:
    """Parse one message; raises :class:`AlertFormatError` saying what is wrong."""
    if not data:
        raise AlertFormatError("empty alert message")
    if len(data) > MAX_BYTES:
        raise AlertFormatError(f"alert message of {len(data)} bytes exceeds {MAX_BYTES}")
    if data[0] != VERSION:
        raise AlertFormatError(f"unknown alert message version {data[0]} (this side speaks {VERSION})")
    r = _Reader(data)
    r.pos = 1
    (flags,) = r.take(1, "flags")
    state, severity = flags & 0x3, flags >> 2 & 0x7
    if flags & 0xC0:
        raise AlertFormatError(f"reserved flag bits set (flags 0x{flags:02x})")
    if state >= len(STATES):
        raise AlertFormatError(f"unknown state {state}")
    if severity >= len(SEVERITIES):
        raise AlertFormatError(f"unknown severity {severity}")
    seq = r.varint("seq")
    ts_ms = r.varint("timestamp")
    if ts_ms >= _MAX_TS_MS:
        raise AlertFormatError(f"timestamp {ts_ms} out of range")
    (fingerprint,) = _U32.unpack(r.take(4, "fingerprint"))
    (value,) = _F64.unpack(r.take(8, "value"))
    device = r.text("device", MAX_DEVICE_BYTES)
    if not device:
        raise AlertFormatError("empty device id")
    rule = r.text("rule", MAX_RULE_BYTES)
    if not rule:
        raise AlertFormatError("empty rule name")
    summary = r.text("summary", MAX_BYTES) if flags & 1 << 5 else ""
    if r.pos != len(data):
        raise AlertFormatError(f"{len(data) - r.pos} unexpected bytes after the message")
    return AlertMessage(device, rule, STATES[state], SEVERITIES[severity], value, ts_ms, seq, fingerprint, summary)
